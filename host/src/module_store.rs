//! The module store: the directory rule modules are published into, and
//! what `offerd run` remembers in it about what served.
//!
//! ```text
//! <region>.wasm                 published for one region (operators, CI, `offerd publish --to`, the admin API)
//! default.wasm                  published for regions without their own
//! <region>.cases.json           golden cases every publication for the region must pass
//! .offerd/serving/<region>.wasm the module that last passed the gate and served the region
//! .offerd/previous/<region>.wasm the one it replaced: what rollback returns to
//! ```
//!
//! The `.offerd` copies make a restart serve what was serving: a refused
//! publication left on disk, or a crash halfway through one, never changes
//! it, and rollback still has its previous version. Every write is atomic.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::catalog::Catalogs;
use crate::engine::{Engine, RegionRules, RuleModule};

/// The module for regions that have none of their own.
pub const DEFAULT_MODULE: &str = "default";
/// Where offerd keeps its own copies, inside the store.
const STATE_DIR: &str = ".offerd";

/// Every region's rules as loaded from a store, and why any region has none.
pub struct LoadedRules {
    pub rules: HashMap<String, Arc<RegionRules>>,
    /// Region to the reason it has no rules; its records are dead-lettered.
    pub unserved: BTreeMap<String, String>,
}

/// What served a region before a restart: the serving module's bytes and
/// those it replaced (what rollback returns to).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remembered {
    pub serving: Option<Arc<[u8]>>,
    pub previous: Option<Arc<[u8]>>,
}

/// A module store directory.
#[derive(Debug, Clone)]
pub struct ModuleStore {
    dir: PathBuf,
}

impl ModuleStore {
    /// # Errors
    /// `dir` is not a readable directory.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!("module store {} is not a directory", dir.display());
        }
        std::fs::read_dir(dir).with_context(|| format!("reading module store {}", dir.display()))?;
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The published file that serves `region`, if any.
    pub fn published(&self, region: &str) -> Option<PathBuf> {
        module_path(&self.dir, region)
    }

    /// Where `region`'s golden cases are.
    pub fn cases_file(&self, region: &str) -> PathBuf {
        self.dir.join(format!("{region}.cases.json"))
    }

    /// What last served `region`, and what it replaced.
    pub fn remembered(&self, region: &str) -> Remembered {
        let read = |kind: &str| std::fs::read(self.state_file(kind, region)).ok().map(Arc::from);
        Remembered { serving: read("serving"), previous: read("previous") }
    }

    /// Remembers that `serving` serves `region` now, having replaced `previous`.
    ///
    /// # Errors
    /// A copy cannot be written.
    pub fn remember(&self, region: &str, serving: &[u8], previous: Option<&[u8]>) -> std::io::Result<()> {
        for (kind, bytes) in [("previous", previous), ("serving", Some(serving))] {
            let path = self.state_file(kind, region);
            match bytes {
                Some(bytes) => {
                    std::fs::create_dir_all(path.parent().expect("state files sit in a directory"))?;
                    crate::atomic_file::write(&path, bytes)?;
                }
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        Ok(())
    }

    /// Publishes `bytes` as `<region>.wasm`, atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn install(&self, region: &str, bytes: &[u8]) -> std::io::Result<()> {
        crate::atomic_file::write(&self.dir.join(format!("{region}.wasm")), bytes)
    }

    fn state_file(&self, kind: &str, region: &str) -> PathBuf {
        self.dir.join(STATE_DIR).join(kind).join(format!("{region}.wasm"))
    }
}

/// A published module's bytes, refusing a file over `limit` bytes without
/// reading it all. Says which file and why on failure.
pub fn read_module(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    crate::config_file::read_limited(path, limit as u64).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The file that serves `region` in `dir`, if any.
pub fn module_path(dir: &Path, region: &str) -> Option<PathBuf> {
    [region, DEFAULT_MODULE].iter().map(|name| dir.join(format!("{name}.wasm"))).find(|p| p.is_file())
}

/// Loads a rule set for every region of `catalogs` from the published files,
/// without gating or remembering anything: for `offerd enrich`. Each file
/// compiles once however many regions it serves. A region whose module is
/// refused stays unserved (and says why); it never falls back to
/// `default.wasm` silently.
///
/// # Errors
/// The directory is unreadable, or no region ends up with rules.
pub fn load(engine: &Engine, dir: &Path, catalogs: &Catalogs) -> anyhow::Result<LoadedRules> {
    let store = ModuleStore::open(dir)?;
    warn_of_strays(&store, catalogs);
    let mut compiled: HashMap<PathBuf, Result<Arc<RuleModule>, String>> = HashMap::new();
    let mut loaded = LoadedRules { rules: HashMap::new(), unserved: BTreeMap::new() };
    for catalog in catalogs.regions() {
        let region = catalog.region.clone();
        let Some(path) = store.published(&region) else {
            let why = format!("no {region}.wasm or {DEFAULT_MODULE}.wasm in {}", dir.display());
            loaded.unserved.insert(region, why);
            continue;
        };
        let module = compiled
            .entry(path.clone())
            .or_insert_with(|| {
                let bytes = read_module(&path, engine.limits().max_module_bytes)?;
                RuleModule::load(engine, &bytes).map(Arc::new).map_err(|e| format!("{}: {e}", path.display()))
            })
            .clone();
        let rules = module.and_then(|m| {
            RegionRules::new(m, Arc::new(catalog.clone())).map_err(|e| format!("{}: {e}", path.display()))
        });
        match rules {
            Ok(rules) => {
                let info = rules.module().info();
                tracing::info!(region, module = %info.name, version = %info.version, digest = %info.digest, "rules loaded");
                loaded.rules.insert(region, Arc::new(rules));
            }
            Err(why) => {
                tracing::error!(region, %why, "module refused; the region's records go to the dead letters");
                loaded.unserved.insert(region, why);
            }
        }
    }
    ensure_some_rules(&loaded, dir)?;
    Ok(loaded)
}

/// Warns of modules for regions `regions.toml` does not define.
pub(crate) fn warn_of_strays(store: &ModuleStore, catalogs: &Catalogs) {
    let Ok(entries) = std::fs::read_dir(&store.dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "wasm") && stem != DEFAULT_MODULE && catalogs.region(stem).is_none() {
            tracing::warn!(file = %path.display(), "module for a region that regions.toml does not define; ignored");
        }
    }
}

/// # Errors
/// No region has rules.
pub(crate) fn ensure_some_rules(loaded: &LoadedRules, dir: &Path) -> anyhow::Result<()> {
    if loaded.rules.is_empty() {
        let reasons: Vec<String> = loaded.unserved.iter().map(|(r, why)| format!("{r}: {why}")).collect();
        bail!("no module loads from {}:\n  {}", dir.display(), reasons.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_versions_survive_and_previous_can_be_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModuleStore::open(dir.path()).unwrap();
        assert_eq!(store.remembered("europe"), Remembered::default());
        store.remember("europe", b"v1", None).unwrap();
        store.remember("europe", b"v2", Some(b"v1")).unwrap();
        let Remembered { serving, previous } = store.remembered("europe");
        assert_eq!((serving.as_deref(), previous.as_deref()), (Some(&b"v2"[..]), Some(&b"v1"[..])));
        store.remember("europe", b"v3", None).unwrap();
        assert_eq!(store.remembered("europe").previous, None);
        // Copies live apart from published modules: the store watcher never sees them.
        assert_eq!(store.published("europe"), None);
    }
}
