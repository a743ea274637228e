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
use serde::{Deserialize, Serialize};

use crate::catalog::Catalogs;
use crate::engine::digest;
use crate::module_store::ModuleStore;

/// One process per directory: `<dir>/.lock` is held while it is open.
pub struct StateDir {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl StateDir {
    /// Creates the directory if missing and refreshes the routing and the
    /// catalogs of regions the registry has not served here yet from
    /// `catalogs` (`--catalogs`). Kept catalogs that no longer load with
    /// that routing are replaced too, and the revisions kept forgotten.
    ///
    /// # Errors
    /// The directory cannot be created or written, or `catalogs` read.
    pub fn open(dir: &Path, catalogs: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = crate::process_lock::take(&dir.join(".lock"), dir, "one process per --registry-state directory")?;
        let state = Self { dir: dir.to_owned(), _lock: lock };
        for sub in [state.modules_dir(), state.catalogs_dir()] {
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let served = state.served_revisions();
        state.copy_catalogs(catalogs, |region| !served.contains_key(region))?;
        if let Err(e) = Catalogs::load(&state.catalogs_dir()) {
            // regions.toml changed so that a catalog kept from the registry
            // no longer fits it (or a kept file is damaged): start from
            // --catalogs; the registry's revisions apply at the first poll.
            tracing::warn!(error = %e, "the catalogs kept from the registry do not load; starting from --catalogs");
            let file = state.dir.join("revisions.json");
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", file.display()));
                }
                _ => {}
            }
            state.copy_catalogs(catalogs, |_| true)?;
        }
        Ok(state)
    }

    /// Copies `regions.toml` and the catalogs of regions `wanted` from `catalogs`.
    fn copy_catalogs(&self, catalogs: &Path, wanted: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let entries = std::fs::read_dir(catalogs).with_context(|| format!("reading {}", catalogs.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("reading {}", catalogs.display()))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(region) = name.strip_suffix(".toml") else { continue };
            if region != "regions" && !wanted(region) {
                continue;
            }
            let bytes = crate::config_file::read_limited(&path, crate::config_file::MAX_FILE_BYTES)
                .with_context(|| format!("reading {}", path.display()))?;
            let target = self.catalogs_dir().join(name);
            crate::atomic_file::write(&target, &bytes).with_context(|| format!("writing {}", target.display()))?;
        }
        Ok(())
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
    pub fn served_revisions(&self) -> BTreeMap<String, Served> {
        let file = self.dir.join("revisions.json");
        match std::fs::read(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the served revisions; serving as if none");
                BTreeMap::new()
            }
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "malformed served revisions; serving as if none");
                BTreeMap::new()
            }),
        }
    }

    /// Records that `revision` (these module and catalog bytes) serves
    /// `region`. The revisions file is written last: a crash before it
    /// leaves the older revision recorded, whose digests then do not match
    /// what the roll-out serves, so it is reported as unknown, never as a
    /// revision it is not.
    ///
    /// # Errors
    /// A file cannot be written.
    pub fn served(&self, region: &str, revision: u64, module: &[u8], catalog: &[u8]) -> std::io::Result<()> {
        crate::atomic_file::write(&self.catalogs_dir().join(format!("{region}.toml")), catalog)?;
        crate::atomic_file::write(&self.modules_dir().join(format!("{region}.wasm")), module)?;
        let mut revisions = self.served_revisions();
        let served = Served { revision, module: digest(module), catalog: digest(catalog) };
        revisions.insert(region.to_owned(), served);
        let text = serde_json::to_vec_pretty(&revisions).expect("a map of revisions always serialises");
        crate::atomic_file::write(&self.dir.join("revisions.json"), &text)
    }
}

/// A registry revision as served here, with its digests: a revision number
/// alone does not say what serves (a recreated registry counts from 1 again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub revision: u64,
    pub module: String,
    pub catalog: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalogs")
    }

    #[test]
    fn one_process_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path(), &catalogs()).unwrap();
        let err = StateDir::open(dir.path(), &catalogs()).err().unwrap().to_string();
        assert!(err.contains("in use by another offerd") && err.contains("--registry-state"), "{err}");
        drop(first);
        StateDir::open(dir.path(), &catalogs()).unwrap();
    }

    #[test]
    fn a_damaged_revisions_file_serves_as_if_none_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path(), &catalogs()).unwrap();
        state.served("europe", 3, b"module", b"catalog").unwrap();
        assert_eq!(state.served_revisions()["europe"].revision, 3);
        std::fs::write(dir.path().join("revisions.json"), "{ torn").unwrap();
        assert!(state.served_revisions().is_empty());
    }
}
