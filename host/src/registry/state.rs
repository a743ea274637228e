//! A worker's local state of the registry: what it last served, so that a
//! restart while the registry is unreachable serves the same rules.
//!
//! ```text
//! <dir>/modules/<region>.wasm     the module served (a module store: .offerd/ keeps serving and previous copies)
//! <dir>/catalogs/regions.toml     routing, copied from --catalogs at every start
//! <dir>/catalogs/<region>.toml    the catalog served (from the registry; else copied from --catalogs)
//! <dir>/revisions.json            region → the registry revision served
//! ```
//!
//! Every write is atomic; a pair is written only after it passed the gate
//! and serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::module_store::ModuleStore;

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory if missing and refreshes the routing and the
    /// catalogs of regions the registry has not served here yet from
    /// `catalogs` (`--catalogs`).
    ///
    /// # Errors
    /// The directory cannot be created or written, or `catalogs` read.
    pub fn open(dir: &Path, catalogs: &Path) -> anyhow::Result<Self> {
        let state = Self { dir: dir.to_owned() };
        for sub in [state.modules_dir(), state.catalogs_dir()] {
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let served = state.revisions();
        let entries = std::fs::read_dir(catalogs).with_context(|| format!("reading {}", catalogs.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("reading {}", catalogs.display()))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(region) = name.strip_suffix(".toml") else { continue };
            if region != "regions" && served.contains_key(region) {
                continue;
            }
            let bytes = crate::config_file::read_limited(&path, crate::config_file::MAX_FILE_BYTES)
                .with_context(|| format!("reading {}", path.display()))?;
            let target = state.catalogs_dir().join(name);
            crate::atomic_file::write(&target, &bytes).with_context(|| format!("writing {}", target.display()))?;
        }
        Ok(state)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }

    pub fn catalogs_dir(&self) -> PathBuf {
        self.dir.join("catalogs")
    }

    /// The module store the roll-out serves from.
    ///
    /// # Errors
    /// The directory is unreadable.
    pub fn module_store(&self) -> anyhow::Result<ModuleStore> {
        ModuleStore::open(&self.modules_dir())
    }

    /// Region to the registry revision it served here last.
    pub fn revisions(&self) -> BTreeMap<String, u64> {
        std::fs::read(self.dir.join("revisions.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Records that `revision` (these module and catalog bytes) serves `region`.
    ///
    /// # Errors
    /// A file cannot be written.
    pub fn served(&self, region: &str, revision: u64, module: &[u8], catalog: &[u8]) -> std::io::Result<()> {
        crate::atomic_file::write(&self.catalogs_dir().join(format!("{region}.toml")), catalog)?;
        crate::atomic_file::write(&self.modules_dir().join(format!("{region}.wasm")), module)?;
        let mut revisions = self.revisions();
        revisions.insert(region.to_owned(), revision);
        let text = serde_json::to_vec_pretty(&revisions).expect("a map of revisions always serialises");
        crate::atomic_file::write(&self.dir.join("revisions.json"), &text)
    }
}
