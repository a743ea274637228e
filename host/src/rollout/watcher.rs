//! Watches the module store and the catalog directory: a `<region>.wasm`
//! written (best by rename) republishes that region, `default.wasm` every
//! region without its own file, a `<region>.toml` re-gates the region's
//! module with the new catalog. Nothing else is touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher as _};

use super::Rollout;
use crate::module_store::DEFAULT_MODULE;

/// Events within this long of each other are one change: a file written in
/// several steps, or a rename seen as two events.
const SETTLE: Duration = Duration::from_millis(20);

/// Stops watching when dropped.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

/// What a changed file asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Module(String),
    Catalog(String),
}

/// Starts watching `rollout`'s module store and catalog directory; changes
/// are applied on a thread of their own, off the record path.
///
/// # Errors
/// A directory cannot be watched.
pub fn start(rollout: Arc<Rollout>) -> anyhow::Result<Watcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut inner = notify::recommended_watcher(tx).context("starting the file watcher")?;
    let modules = rollout.modules_dir().to_owned();
    let catalogs = rollout.catalogs_dir().to_owned();
    for dir in [&modules, &catalogs] {
        inner
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {} for publications", dir.display()))?;
    }
    std::thread::Builder::new()
        .name("offerd-watcher".into())
        .spawn(move || {
            // Ends when the watcher is dropped and the channel closes.
            while let Ok(first) = rx.recv() {
                let mut changes = BTreeSet::new();
                let mut event = Some(first);
                while let Some(e) = event {
                    match e {
                        Ok(e) => changes.extend(changes_of(&e, &modules, &catalogs)),
                        Err(e) => tracing::warn!(error = %e, "file watcher error"),
                    }
                    event = rx.recv_timeout(SETTLE).ok();
                }
                for change in changes {
                    apply(&rollout, &change);
                }
            }
        })
        .context("spawning the watcher thread")?;
    Ok(Watcher { _inner: inner })
}

fn changes_of(event: &notify::Event, modules: &Path, catalogs: &Path) -> Vec<Change> {
    if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
        return Vec::new();
    }
    event.paths.iter().filter_map(|p| change_of(p, modules, catalogs)).collect()
}

fn change_of(path: &Path, modules: &Path, catalogs: &Path) -> Option<Change> {
    let name = path.file_name()?.to_str()?;
    let dir: PathBuf = path.parent()?.to_owned();
    let same = |a: &Path, b: &Path| a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if let Some(region) = name.strip_suffix(".wasm")
        && same(&dir, modules)
    {
        return Some(Change::Module(region.to_owned()));
    }
    if let Some(region) = name.strip_suffix(".toml")
        && same(&dir, catalogs)
    {
        if region == "regions" {
            tracing::warn!("regions.toml changed: routing changes take effect on restart");
            return None;
        }
        return Some(Change::Catalog(region.to_owned()));
    }
    None
}

fn apply(rollout: &Rollout, change: &Change) {
    let regions: Vec<String> = match change {
        Change::Module(name) if name == DEFAULT_MODULE => rollout
            .region_names()
            .into_iter()
            .filter(|r| !rollout.modules_dir().join(format!("{r}.wasm")).is_file())
            .collect(),
        Change::Module(region) | Change::Catalog(region) => vec![region.clone()],
    };
    for region in regions {
        // Refusals are logged, counted and kept for the admin API by the roll-out itself.
        let _ = match change {
            Change::Module(_) => rollout.reload_module(&region).map(drop),
            Change::Catalog(_) => rollout.reload_catalog(&region).map(drop),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_region_modules_and_catalogs_are_changes() {
        let (modules, catalogs) = (Path::new("/srv/modules"), Path::new("/srv/catalogs"));
        let change = |p: &str| change_of(Path::new(p), modules, catalogs);
        assert_eq!(change("/srv/modules/europe.wasm"), Some(Change::Module("europe".into())));
        assert_eq!(change("/srv/modules/default.wasm"), Some(Change::Module("default".into())));
        assert_eq!(change("/srv/catalogs/north-america.toml"), Some(Change::Catalog("north-america".into())));
        // Temporary files of an atomic write, cases, routing, other directories.
        assert_eq!(change("/srv/modules/.europe.wasm.x1y2.tmp"), None);
        assert_eq!(change("/srv/modules/europe.cases.json"), None);
        assert_eq!(change("/srv/catalogs/regions.toml"), None);
        assert_eq!(change("/srv/catalogs/europe.wasm"), None);
        assert_eq!(change("/srv/modules/europe.toml"), None);
    }
}
