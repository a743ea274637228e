//! Rule roll-out while running: gate a new module (or catalog) off the record
//! path, then swap it in for one region between two batches; keep the
//! previous version for a one-step rollback.
//!
//! Every publication path (the watched module store, the admin API, `offerd
//! publish --to`) ends in [`Rollout::publish`]; a refused publication leaves
//! the active rules untouched and is kept as the region's last refusal.

pub mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::catalog::{Catalogs, RegionCatalog};
use crate::config_file::ConfigError;
use crate::engine::{Engine, FailureKind, ModuleError, RegionRules, RuleModule, digest};
use crate::enricher::{Active, Enricher, Serving};
use crate::golden::{self, Case};
use crate::metrics::Metrics;
use crate::module_store::{self, LoadedRules, ModuleStore};
use crate::signup::SignUp;

/// Why a module or catalog was not activated.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("region {0:?} is not defined in regions.toml")]
    UnknownRegion(String),
    #[error("{0}")]
    Module(#[from] ModuleError),
    #[error("{0}")]
    Catalog(#[from] ConfigError),
    #[error("cases file {file}: {reason}")]
    Cases { file: PathBuf, reason: String },
    #[error("golden cases failed:\n{0}")]
    Golden(String),
    #[error("smoke batch failed: {0}")]
    Smoke(String),
    #[error("no previous version of {0} to roll back to")]
    NothingToRollBack(String),
    #[error("{0}")]
    Io(String),
}

/// The gate every module passes before it serves: compile, check the world,
/// contract version and metadata, `init` with the region's catalog, the
/// golden `cases`, and a smoke batch (one sign-up per metro of the catalog)
/// that must not trap, time out or exhaust memory.
///
/// # Errors
/// The first check that fails.
pub fn gate(
    engine: &Engine,
    bytes: &[u8],
    catalog: Arc<RegionCatalog>,
    cases: &[(PathBuf, Case)],
) -> Result<RegionRules, Refused> {
    gate_module(Arc::new(RuleModule::load(engine, bytes)?), catalog, cases)
}

/// [`gate`] for a module already compiled.
///
/// # Errors
/// The first check that fails.
pub fn gate_module(
    module: Arc<RuleModule>,
    catalog: Arc<RegionCatalog>,
    cases: &[(PathBuf, Case)],
) -> Result<RegionRules, Refused> {
    let rules = RegionRules::new(module, catalog)?;
    let failures: Vec<String> = golden::run(&rules, cases)
        .into_iter()
        .filter_map(|v| v.failure.map(|f| format!("{}\n{f}", golden::label(&v.file, &v.name))))
        .collect();
    if !failures.is_empty() {
        return Err(Refused::Golden(failures.join("\n")));
    }
    smoke(&rules)?;
    Ok(rules)
}

/// One batch as production would send it: a sign-up at every metro.
fn smoke(rules: &RegionRules) -> Result<(), Refused> {
    let catalog = rules.catalog();
    let lines: Vec<Vec<u8>> = catalog
        .metros
        .iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::to_vec(&serde_json::json!({
                "user_id": format!("smoke-{i}"),
                "location": {"country": m.country, "lat": m.lat, "lon": m.lon},
            }))
            .expect("a JSON value always serialises")
        })
        .collect();
    let signups: Vec<SignUp<'_>> =
        lines.iter().map(|l| SignUp::decode(l).map_err(|e| Refused::Smoke(e.to_string()))).collect::<Result<_, _>>()?;
    let batch: Vec<&SignUp<'_>> = signups.iter().collect();
    for (signup, result) in batch.iter().zip(rules.enrich(&batch)) {
        if let Err(f) = result
            && !matches!(f.kind, FailureKind::Rejected(_))
        {
            return Err(Refused::Smoke(format!("{:?} on {}: {}", f.kind, signup.user_id, f.detail)));
        }
    }
    Ok(())
}

/// Where a publication came from, for logs, metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A `<region>.wasm` written to the watched module store.
    ModuleStore,
    /// A `<region>.toml` changed in the watched catalog directory.
    Catalog,
    AdminApi,
    Rollback,
    /// What the store held when offerd started.
    StartUp,
    /// A revision of the registry this offerd follows.
    Registry,
}

/// A publication that was refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    pub origin: Origin,
    /// Of the refused bytes, when a module was refused.
    pub digest: Option<String>,
    pub reason: String,
}

/// A region as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct RegionStatus {
    pub region: String,
    pub active: Option<ModuleStatus>,
    /// Why the region has no rules, if it has none.
    pub unserved: Option<String>,
    pub previous: Option<ModuleStatus>,
    pub last_refusal: Option<Refusal>,
    pub offers: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize)]
pub struct ModuleStatus {
    pub name: String,
    pub version: String,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// The contract version it is called at (`1.0.0`, `1.1.0`).
    pub contract: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: time::OffsetDateTime,
}

impl ModuleStatus {
    fn of(active: &Active) -> Self {
        let info = active.rules.module().info();
        Self {
            name: info.name.clone(),
            version: info.version.to_string(),
            digest: info.digest.clone(),
            signed_by: info.signed_by.clone(),
            contract: info.contract.version(),
            loaded_at: active.since.into(),
        }
    }
}

/// A version that served a region, with its bytes so a rollback can put it
/// back into the module store.
struct Version {
    active: Arc<Active>,
    bytes: Arc<[u8]>,
}

#[derive(Default)]
struct History {
    current_bytes: Option<Arc<[u8]>>,
    previous: Option<Version>,
    last_refusal: Option<Refusal>,
}

/// Owns roll-out for every region of one running enricher.
pub struct Rollout {
    engine: Engine,
    store: ModuleStore,
    catalogs: PathBuf,
    enricher: Arc<Enricher>,
    metrics: Arc<Metrics>,
    /// Held only to read or change versions, never across a gate: status
    /// and rollback answer while a module is being gated.
    history: Mutex<HashMap<String, History>>,
    /// Serialises publications: one gate runs at a time, so two publications
    /// cannot race to the swap, and compiles never take more than one core
    /// from enrichment.
    gating: Mutex<()>,
}

impl Rollout {
    /// Decides what serves each region and builds the enricher on it: the
    /// published module if it passes the same gate as a publication (golden
    /// cases and smoke batch included); if it is refused (a publication
    /// refused while running and left on disk, say), the module that served
    /// before the restart, gated too; else nothing, and the region's records
    /// are dead-lettered. The version rollback returns to comes back as well.
    /// Each distinct module compiles once.
    ///
    /// With `may_start_empty` (a registry fills the regions next), no region
    /// needs rules.
    ///
    /// # Errors
    /// No region ends up with rules.
    pub fn start(
        engine: Engine,
        store: ModuleStore,
        catalogs_dir: &Path,
        catalogs: Arc<Catalogs>,
        metrics: Arc<Metrics>,
        may_start_empty: bool,
    ) -> anyhow::Result<(Arc<Enricher>, Self)> {
        module_store::warn_of_strays(&store, &catalogs);
        let mut compiled: HashMap<String, Arc<RuleModule>> = HashMap::new();
        let mut compile = |bytes: &[u8]| -> Result<Arc<RuleModule>, Refused> {
            let digest = digest(bytes);
            if let Some(module) = compiled.get(&digest) {
                return Ok(module.clone());
            }
            let module = Arc::new(RuleModule::load(&engine, bytes)?);
            compiled.insert(digest, module.clone());
            Ok(module)
        };
        let mut loaded = LoadedRules { rules: HashMap::new(), unserved: BTreeMap::new() };
        let mut history: HashMap<String, History> = HashMap::new();
        for catalog in catalogs.regions() {
            let region = catalog.region.as_str();
            let catalog = Arc::new(catalog.clone());
            let module_store::Remembered { serving: remembered, previous } = store.remembered(region);
            let cases = load_cases(&store, region);
            let mut entry = History::default();
            let mut chosen: Option<(RegionRules, Arc<[u8]>)> = None;
            if let Some(path) = store.published(region) {
                let read = module_store::read_module(&path, engine.limits().max_module_bytes).map(Arc::<[u8]>::from);
                let digest = read.as_ref().ok().map(|bytes| digest(bytes));
                let gated = read.map_err(Refused::Io).and_then(|bytes| {
                    let cases = cases.as_ref().map_err(|e| Refused::Io(e.to_string()))?;
                    Ok((gate_module(compile(&bytes)?, catalog.clone(), cases)?, bytes))
                });
                match gated {
                    Ok(pair) => chosen = Some(pair),
                    Err(refused) => {
                        let reason = refused.to_string();
                        tracing::error!(region, file = %path.display(), %reason, "published module refused at start-up");
                        metrics.reload(region, false);
                        entry.last_refusal =
                            Some(Refusal { at: SystemTime::now().into(), origin: Origin::StartUp, digest, reason });
                    }
                }
            }
            if chosen.is_none()
                && let Some(bytes) = remembered.clone()
            {
                // Serving before the restart, so its old cases passed; the
                // cases on disk may be for the refused module: not gated on them.
                match compile(&bytes).and_then(|m| gate_module(m, catalog.clone(), &[])) {
                    Ok(rules) => {
                        tracing::warn!(region, "serving the module that served before the restart");
                        chosen = Some((rules, bytes));
                    }
                    Err(refused) => {
                        tracing::error!(region, reason = %refused, "the module that served before is refused too")
                    }
                }
            }
            let Some((rules, bytes)) = chosen else {
                let why = entry.last_refusal.as_ref().map_or_else(
                    || {
                        format!(
                            "no {region}.wasm or {}.wasm in {}",
                            module_store::DEFAULT_MODULE,
                            store.dir().display()
                        )
                    },
                    |r| r.reason.clone(),
                );
                loaded.unserved.insert(region.to_owned(), why);
                history.insert(region.to_owned(), entry);
                continue;
            };
            // The version rollback returns to: kept if this one served
            // before, else the one this replaces.
            let same = remembered.as_deref().is_some_and(|r| digest(r) == digest(&bytes));
            let previous = if same { previous } else { remembered };
            if let Err(e) = store.remember(region, &bytes, previous.as_deref()) {
                tracing::error!(region, error = %e, "cannot remember the serving module; a restart may serve another");
            }
            entry.previous = previous.and_then(|bytes| {
                let rules = compile(&bytes).ok().and_then(|m| RegionRules::new(m, catalog.clone()).ok())?;
                rules.trim(1);
                Some(Version { active: Arc::new(Active::new(Arc::new(rules))), bytes })
            });
            let info = rules.module().info();
            tracing::info!(region, module = %info.name, version = %info.version, digest = %info.digest, "rules loaded");
            metrics.module_active(region, info, true);
            entry.current_bytes = Some(bytes);
            loaded.rules.insert(region.to_owned(), Arc::new(rules));
            history.insert(region.to_owned(), entry);
        }
        if !may_start_empty {
            module_store::ensure_some_rules(&loaded, store.dir())?;
        }
        let enricher = Arc::new(Enricher::new(catalogs, loaded));
        let rollout = Self {
            engine,
            store,
            catalogs: catalogs_dir.to_owned(),
            enricher: enricher.clone(),
            metrics,
            history: Mutex::new(history),
            gating: Mutex::new(()),
        };
        Ok((enricher, rollout))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    pub fn region_names(&self) -> Vec<String> {
        self.enricher.region_names().into_iter().map(str::to_owned).collect()
    }

    /// Largest module the gate accepts.
    pub fn max_module_bytes(&self) -> usize {
        self.engine.limits().max_module_bytes
    }

    pub fn modules_dir(&self) -> &Path {
        self.store.dir()
    }

    pub fn catalogs_dir(&self) -> &Path {
        &self.catalogs
    }

    /// Gates `bytes` for `region` and, if they pass, makes them serve it from
    /// its next batch. Runs the module's code: call it off the async threads.
    /// From the admin API, the module is also written to the module store
    /// (atomically) so a restart serves it too.
    ///
    /// # Errors
    /// The gate refused it; the active rules keep serving.
    pub fn publish(&self, region: &str, bytes: Vec<u8>, origin: Origin) -> Result<Arc<Active>, Refused> {
        self.gate_and_activate(region, bytes.into(), None, origin)
    }

    /// Gates `bytes` with `catalog` for `region` and, if they pass, makes
    /// the pair serve it from its next batch: a registry revision. Runs the
    /// module's code: call it off the async threads.
    ///
    /// # Errors
    /// The gate refused it; the active rules keep serving.
    pub fn apply(&self, region: &str, bytes: Arc<[u8]>, catalog: RegionCatalog) -> Result<Arc<Active>, Refused> {
        self.gate_and_activate(region, bytes, Some(catalog), Origin::Registry)
    }

    /// Gates `bytes` with `catalog` (or the one serving) and activates them,
    /// or keeps the refusal.
    fn gate_and_activate(
        &self,
        region: &str,
        bytes: Arc<[u8]>,
        catalog: Option<RegionCatalog>,
        origin: Origin,
    ) -> Result<Arc<Active>, Refused> {
        let started = Instant::now();
        let _gating = self.gating.lock().expect("the gating lock is never held across a panic");
        if !self.history().contains_key(region) {
            return Err(Refused::UnknownRegion(region.to_owned()));
        }
        let digest = digest(&bytes);
        // Publishing the module that already serves, with its catalog, is a
        // no-op (the watcher also sees the store writes of the API and of
        // rollbacks). A new catalog makes a new pair.
        if catalog.is_none()
            && let Some(active) = self.enricher.active(region).filter(|a| a.rules.module().info().digest == digest)
        {
            return Ok(active);
        }
        let result = self.gated(region, &bytes, catalog).and_then(|rules| {
            if origin == Origin::AdminApi {
                self.store
                    .install(region, &bytes)
                    .map_err(|e| Refused::Io(format!("installing {region}.wasm: {e}")))?;
            }
            Ok(rules)
        });
        self.metrics.gate_seconds(started.elapsed().as_secs_f64());
        let mut history = self.history();
        let entry = history.get_mut(region).expect("regions are fixed at start-up");
        match result {
            Ok(rules) => Ok(self.activate(region, entry, Arc::new(Active::new(Arc::new(rules))), bytes, origin)),
            Err(refused) => Err(self.refuse(region, entry, origin, Some(digest), refused)),
        }
    }

    /// Re-reads `<region>.toml` and gates the active module with it.
    ///
    /// # Errors
    /// The catalog is invalid or the module refuses it; the old pair keeps serving.
    pub fn reload_catalog(&self, region: &str) -> Result<Arc<Active>, Refused> {
        let started = Instant::now();
        let _gating = self.gating.lock().expect("the gating lock is never held across a panic");
        let Some(entry) = self.history().get(region).map(|e| e.current_bytes.clone()) else {
            return Err(Refused::UnknownRegion(region.to_owned()));
        };
        let Some(bytes) = entry else {
            return Err(Refused::Io(format!("{region} has no module to apply the catalog to")));
        };
        let catalog = Catalogs::load_region_file(&self.catalogs.join(format!("{region}.toml")));
        let result = catalog.map_err(Refused::from).and_then(|c| self.gated(region, &bytes, Some(c)));
        self.metrics.gate_seconds(started.elapsed().as_secs_f64());
        let mut history = self.history();
        let entry = history.get_mut(region).expect("regions are fixed at start-up");
        match result {
            Ok(rules) => {
                Ok(self.activate(region, entry, Arc::new(Active::new(Arc::new(rules))), bytes, Origin::Catalog))
            }
            Err(refused) => Err(self.refuse(region, entry, Origin::Catalog, None, refused)),
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.history.lock().expect("the roll-out lock is never held across a panic")
    }

    /// Publishes the module store's file for `region`.
    ///
    /// # Errors
    /// As [`Self::publish`].
    pub fn reload_module(&self, region: &str) -> Result<Arc<Active>, Refused> {
        let path = self
            .store
            .published(region)
            .ok_or_else(|| Refused::Io(format!("no module for {region} in {}", self.store.dir().display())))?;
        let bytes = module_store::read_module(&path, self.max_module_bytes()).map_err(Refused::Io)?;
        self.publish(region, bytes, Origin::ModuleStore)
    }

    /// Puts the previous version of `region` back, in one step, and writes it
    /// to the module store. The replaced version becomes the previous one.
    ///
    /// # Errors
    /// No previous version, or the module store cannot be written.
    pub fn rollback(&self, region: &str) -> Result<Arc<Active>, Refused> {
        let mut history = self.history();
        let Some(entry) = history.get_mut(region) else {
            return Err(Refused::UnknownRegion(region.to_owned()));
        };
        let Some(previous) = entry.previous.take() else {
            return Err(Refused::NothingToRollBack(region.to_owned()));
        };
        if let Err(e) = self.store.install(region, &previous.bytes) {
            entry.previous = Some(previous);
            return Err(Refused::Io(format!("installing {region}.wasm: {e}")));
        }
        let rules = previous.active.rules.clone();
        Ok(self.activate(region, entry, Arc::new(Active::new(rules)), previous.bytes, Origin::Rollback))
    }

    /// Every region's active and previous module, last refusal and counts.
    pub fn status(&self) -> Vec<RegionStatus> {
        let history = self.history();
        self.enricher
            .region_names()
            .into_iter()
            .map(|region| {
                let entry = history.get(region);
                let serving = self.enricher.serving(region);
                let (active, unserved) = match serving.as_deref() {
                    Some(Serving::Active(a)) => (Some(ModuleStatus::of(a)), None),
                    Some(Serving::Unserved(why)) => (None, Some(why.clone())),
                    None => (None, None),
                };
                let (offers, failures) = self.metrics.region_counts(region);
                RegionStatus {
                    region: region.to_owned(),
                    active,
                    unserved,
                    previous: entry.and_then(|e| e.previous.as_ref()).map(|p| ModuleStatus::of(&p.active)),
                    last_refusal: entry.and_then(|e| e.last_refusal.clone()),
                    offers,
                    failures,
                }
            })
            .collect()
    }

    /// Gates `bytes` with `catalog`, or with the catalog the region is served
    /// with now, and the cases file beside the module store's module.
    fn gated(&self, region: &str, bytes: &[u8], catalog: Option<RegionCatalog>) -> Result<RegionRules, Refused> {
        let catalog = match (catalog, self.enricher.active(region)) {
            (Some(c), _) => Arc::new(c),
            (None, Some(active)) => active.rules.catalog().clone(),
            (None, None) => Arc::new(Catalogs::load_region_file(&self.catalogs.join(format!("{region}.toml")))?),
        };
        let cases = load_cases(&self.store, region)?;
        gate(&self.engine, bytes, catalog, &cases)
    }

    fn activate(
        &self,
        region: &str,
        entry: &mut History,
        active: Arc<Active>,
        bytes: Arc<[u8]>,
        origin: Origin,
    ) -> Arc<Active> {
        let replaced = self.enricher.swap(region, active.clone());
        let info = active.rules.module().info();
        if let Serving::Active(old) = &*replaced {
            self.metrics.module_active(region, old.rules.module().info(), false);
            if let Some(old_bytes) = entry.current_bytes.take() {
                // Kept for rollback: one primed instance is enough.
                old.rules.trim(1);
                entry.previous = Some(Version { active: old.clone(), bytes: old_bytes });
            }
        }
        if let Err(e) = self.store.remember(region, &bytes, entry.previous.as_ref().map(|p| &*p.bytes)) {
            tracing::error!(region, error = %e, "cannot remember the serving module; a restart may serve another");
        }
        entry.current_bytes = Some(bytes);
        self.metrics.module_active(region, info, true);
        self.metrics.reload(region, true);
        tracing::info!(region, ?origin, module = %info.name, version = %info.version, digest = %info.digest, "rules activated");
        active
    }

    fn refuse(
        &self,
        region: &str,
        entry: &mut History,
        origin: Origin,
        digest: Option<String>,
        refused: Refused,
    ) -> Refused {
        let reason = refused.to_string();
        tracing::warn!(region, ?origin, digest, %reason, "publication refused; the active rules keep serving");
        self.metrics.reload(region, false);
        entry.last_refusal = Some(Refusal { at: SystemTime::now().into(), origin, digest, reason });
        refused
    }
}

/// The region's golden cases from the store, none if it has no cases file.
fn load_cases(store: &ModuleStore, region: &str) -> Result<Vec<(PathBuf, Case)>, Refused> {
    let file = store.cases_file(region);
    if !file.is_file() {
        return Ok(Vec::new());
    }
    golden::load(std::slice::from_ref(&file)).map_err(|e| Refused::Cases { file, reason: format!("{e:#}") })
}
