//! The module store: a directory with `<region>.wasm` per region and,
//! optionally, `default.wasm` for regions without their own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::catalog::Catalogs;
use crate::engine::{Engine, RegionRules, RuleModule};

/// The module for regions that have none of their own.
pub const DEFAULT_MODULE: &str = "default";

/// Every region's rules as loaded from a store, and why any region has none.
pub struct LoadedRules {
    pub rules: HashMap<String, Arc<RegionRules>>,
    /// Region to the reason it has no rules; its records are dead-lettered.
    pub unserved: BTreeMap<String, String>,
}

/// The file that serves `region` in `dir`, if any.
pub fn module_path(dir: &Path, region: &str) -> Option<PathBuf> {
    [region, DEFAULT_MODULE].iter().map(|name| dir.join(format!("{name}.wasm"))).find(|p| p.is_file())
}

/// Loads a rule set for every region of `catalogs`. Each file compiles once
/// however many regions it serves. A region whose module is refused stays
/// unserved (and says why); it never falls back to `default.wasm` silently.
///
/// # Errors
/// The directory is unreadable, or no region ends up with rules.
pub fn load(engine: &Engine, dir: &Path, catalogs: &Catalogs) -> anyhow::Result<LoadedRules> {
    if !dir.is_dir() {
        bail!("module store {} is not a directory", dir.display());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading module store {}", dir.display()))? {
        let path = entry?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "wasm") && stem != DEFAULT_MODULE && catalogs.region(stem).is_none() {
            tracing::warn!(file = %path.display(), "module for a region that regions.toml does not define; ignored");
        }
    }
    let mut compiled: HashMap<PathBuf, Result<Arc<RuleModule>, String>> = HashMap::new();
    let mut loaded = LoadedRules { rules: HashMap::new(), unserved: BTreeMap::new() };
    for catalog in catalogs.regions() {
        let region = catalog.region.clone();
        let Some(path) = module_path(dir, &region) else {
            let why = format!("no {region}.wasm or {DEFAULT_MODULE}.wasm in {}", dir.display());
            loaded.unserved.insert(region, why);
            continue;
        };
        let module = compiled
            .entry(path.clone())
            .or_insert_with(|| {
                let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
    if loaded.rules.is_empty() {
        let reasons: Vec<String> = loaded.unserved.iter().map(|(r, why)| format!("{r}: {why}")).collect();
        bail!("no module loads from {}:\n  {}", dir.display(), reasons.join("\n  "));
    }
    Ok(loaded)
}
