//! A compiled offer-rule component, checked against the contract.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, Instance, InstancePre, Linker};

use super::Engine;
use super::contract::{Contract, Exports, Functions};
use super::limits::MemoryCap;
use super::ticker::{GuestActivity, Running};

/// Why a module is refused. The old module, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module is {bytes} bytes; the limit is {limit} (--max-module-mib)")]
    TooLarge { bytes: usize, limit: usize },
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("module imports {0}; offer rules may import nothing")]
    HasImports(String),
    #[error("module exports {found}; this host speaks {spoken}", spoken = Contract::spoken())]
    WrongWorld { found: String },
    #[error("module export {} does not match the contract: {detail}", .contract.interface())]
    WrongShape { contract: Contract, detail: String },
    #[error("module metadata is unusable: {0}")]
    BadMetadata(String),
    #[error("module failed in {call}: {detail}")]
    Failed { call: &'static str, detail: String },
    #[error(transparent)]
    Untrusted(#[from] crate::signing::SignatureError),
    #[error("module refused the {region} catalog: {field}: {reason}")]
    CatalogRefused { region: String, field: String, reason: String },
}

/// What a module says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub name: String,
    pub version: semver::Version,
    /// `sha256:<hex>` of the component's bytes: names the exact build.
    pub digest: String,
    /// Key id of the trusted key that signed it; `None` when the host
    /// checks no signatures (`--trusted-keys` unset).
    pub signed_by: Option<String>,
    /// The contract version the module exports (the newest, if several).
    pub contract: Contract,
}

/// Per-store state: the memory limiter, and the engine's count of guest
/// code running (its epoch ticker runs only while that is not zero).
pub(crate) struct StoreState {
    limiter: MemoryCap,
    activity: Arc<GuestActivity>,
}

impl StoreState {
    /// Held across every entry into guest code of this store.
    pub(super) fn running(&self) -> Running {
        self.activity.enter()
    }
}

/// A component compiled once, ready to instantiate in microseconds.
pub struct RuleModule {
    engine: Engine,
    pre: InstancePre<StoreState>,
    exports: Exports,
    info: ModuleInfo,
}

/// `sha256:<hex>` of a component's bytes: [`ModuleInfo::digest`], computable
/// without compiling.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl RuleModule {
    /// Compiles and checks a component: no imports, exports the contract's
    /// interface at a version this host speaks (the newest is used when it
    /// exports several), metadata with a semver version.
    ///
    /// # Errors
    /// A [`ModuleError`] naming what was found instead.
    pub fn load(engine: &Engine, bytes: &[u8]) -> Result<Self, ModuleError> {
        let limit = engine.limits.max_module_bytes;
        if bytes.len() > limit {
            return Err(ModuleError::TooLarge { bytes: bytes.len(), limit });
        }
        let digest = digest(bytes);
        let signed_by = engine.trusted_keys.as_ref().map(|keys| keys.verify(bytes)).transpose()?;
        let compile = || Component::new(&engine.inner, bytes);
        let component = match &engine.cache {
            Some(cache) => cache.get_or_compile(&engine.inner, &digest, compile),
            None => compile(),
        }
        .map_err(|e| ModuleError::NotAComponent(format!("{e:#}")))?;
        let ty = component.component_type();
        let imports: Vec<&str> = ty.imports(&engine.inner).map(|(name, _)| name).collect();
        if !imports.is_empty() {
            return Err(ModuleError::HasImports(imports.join(", ")));
        }
        let exports: Vec<&str> = ty.exports(&engine.inner).map(|(name, _)| name).collect();
        let Some(contract) = Contract::ALL.into_iter().find(|c| exports.contains(&c.interface())) else {
            let found = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
            return Err(ModuleError::WrongWorld { found });
        };
        let wrong_shape = |detail: String| ModuleError::WrongShape { contract, detail };
        let pre = Linker::new(&engine.inner).instantiate_pre(&component).map_err(|e| wrong_shape(format!("{e:#}")))?;
        let exports = Exports::find(&pre, contract).map_err(wrong_shape)?;
        let mut module = Self {
            engine: engine.clone(),
            pre,
            exports,
            info: ModuleInfo {
                name: String::new(),
                version: semver::Version::new(0, 0, 0),
                digest,
                signed_by,
                contract,
            },
        };
        let (mut store, instance) = module.instance().map_err(|e| failed("instantiate", &e))?;
        let functions =
            Functions::load(&module.exports, &mut store, &instance).map_err(|e| wrong_shape(format!("{e:#}")))?;
        let meta = functions.metadata(&mut store).map_err(|e| failed("metadata", &e))?;
        check_name(&meta.name).map_err(ModuleError::BadMetadata)?;
        if meta.version.len() > MAX_NAME_CHARS {
            return Err(ModuleError::BadMetadata(format!(
                "version is {} bytes; the limit is {MAX_NAME_CHARS}",
                meta.version.len()
            )));
        }
        module.info.version = semver::Version::parse(&meta.version)
            .map_err(|e| ModuleError::BadMetadata(format!("version {:?} is not semver: {e}", meta.version)))?;
        module.info.name = meta.name;
        Ok(module)
    }

    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fresh instance in its own store, bounded by the engine's limits.
    pub(super) fn instantiate(&self) -> wasmtime::Result<(Store<StoreState>, Functions)> {
        let (mut store, instance) = self.instance()?;
        let functions = Functions::load(&self.exports, &mut store, &instance)?;
        Ok((store, functions))
    }

    /// A fresh store and the component instantiated in it. Instantiation
    /// runs guest code (start functions), so it counts as running.
    fn instance(&self) -> wasmtime::Result<(Store<StoreState>, Instance)> {
        let mut store = self.store();
        let _running = store.data().running();
        let instance = self.pre.instantiate(&mut store)?;
        Ok((store, instance))
    }

    fn store(&self) -> Store<StoreState> {
        let limits = self.engine.limits;
        let state = StoreState {
            limiter: MemoryCap { cap: limits.memory_bytes },
            activity: self.engine.ticker.activity().clone(),
        };
        let mut store = Store::new(&self.engine.inner, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.engine.deadline_ticks());
        store.set_hostcall_fuel(super::contract::SMALL_RESULT_BYTES);
        store
    }
}

/// Longest module name or version. Both go into every offer record.
const MAX_NAME_CHARS: usize = 64;

/// A module name is a short identifier: it names the rules in every offer
/// record, in metrics labels and in logs.
fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME_CHARS || !name.chars().all(allowed) {
        let shown: String = name.chars().take(MAX_NAME_CHARS).collect();
        return Err(format!(
            "name {shown:?} (of {} bytes) is not an identifier of 1 to {MAX_NAME_CHARS} letters, digits, '-', '_' or '.'",
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
#[test]
fn module_names_are_short_identifiers() {
    for good in ["reference-offer-rules", "misbehave", "eu_rules.v2"] {
        assert_eq!(check_name(good), Ok(()));
    }
    for bad in ["", "has space", "quote\"", &"x".repeat(65), "new\nline", "ünï"] {
        assert!(check_name(bad).is_err(), "{bad:?} accepted");
    }
}

fn failed(call: &'static str, e: &wasmtime::Error) -> ModuleError {
    ModuleError::Failed { call, detail: super::region::classify(e).detail }
}
