//! Compiled modules on disk, so a restart loads each module in milliseconds
//! instead of compiling it again.
//!
//! An entry is keyed by the module's digest and the engine's compatibility
//! hash (wasmtime's version and every setting that shapes compiled code),
//! so an entry of another wasmtime or configuration is never even looked
//! at. Loading compiled code runs it: an entry is used only when
//! - the directory, the directories above it and the entry can be changed
//!   by this user and root alone, checked on handles held from open on
//!   (a [`TrustedDir`]; the cache is refused otherwise, an entry compiled
//!   again), and
//! - its SHA-256, written in front of it, matches (a torn or bit-rotted
//!   entry is removed and the module compiled again).
//!
//! The cache is bounded: past [`MAX_ENTRIES`] or [`MAX_BYTES`], the least
//! recently written entries are removed.

use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::trusted_dir::TrustedDir;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 256;
/// Most bytes kept in all.
pub const MAX_BYTES: u64 = 1 << 30;
/// Largest entry read (a compiled module is a few times its source).
const MAX_ENTRY_BYTES: u64 = 512 << 20;

const SUFFIX: &str = ".cwasm";

/// A directory of compiled components.
#[derive(Debug)]
pub struct ModuleCache {
    /// The cache directory, checked at open and read and written only
    /// through this handle.
    dir: TrustedDir,
}

impl ModuleCache {
    /// Opens (creating, mode 0700) the cache directory, and removes the
    /// temporary files of writes a crash cut short. Two processes sharing a
    /// directory may lose a write under way when the other starts: it is
    /// only compiled again.
    ///
    /// # Errors
    /// The directory cannot be created, or it or a directory above it can be
    /// changed by someone other than this user or root.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --module-cache {}", dir.display()))?;
        let dir = TrustedDir::open(dir, "--module-cache")?;
        match dir.remove_leftovers() {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(dir = %dir.path().display(), removed, "removed unfinished compiled-module writes")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.path().display(), error = %e, "could not remove unfinished compiled-module writes")
            }
        }
        Ok(Self { dir })
    }

    /// The entry's file name for a module of `digest` on `engine`.
    fn name(engine: &wasmtime::Engine, digest: &str) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let key = Sha256::new().chain_update(digest.as_bytes()).chain_update(hasher.finish().to_le_bytes()).finalize();
        format!("{key:x}{SUFFIX}")
    }

    /// The compiled component of the module `digest`, from the cache, or
    /// compiled by `compile` and stored. A cache that cannot be read or
    /// written only costs the compile.
    ///
    /// # Errors
    /// `compile`'s.
    pub fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        digest: &str,
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<Component> {
        let name = Self::name(engine, digest);
        if let Some(component) = self.load(engine, &name) {
            return Ok(component);
        }
        let component = compile()?;
        match component.serialize() {
            Ok(code) => {
                let mut entry = Sha256::digest(&code).to_vec();
                entry.extend_from_slice(&code);
                // Renamed over whatever the name held, a refused entry included.
                if let Err(e) = self.dir.replace(&name, &entry) {
                    let file = self.dir.path().join(&name);
                    tracing::warn!(file = %file.display(), error = %e, "could not store a compiled module");
                }
                self.evict();
            }
            Err(e) => tracing::warn!(error = %e, "could not serialise a compiled module"),
        }
        Ok(component)
    }

    fn load(&self, engine: &wasmtime::Engine, name: &str) -> Option<Component> {
        let file = self.dir.path().join(name);
        let entry = match self.dir.read(OsStr::new(name), MAX_ENTRY_BYTES) {
            Ok(entry) => entry?,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "compiled-module cache entry refused; compiling again");
                return None;
            }
        };
        let intact = entry.len() > 32 && Sha256::digest(&entry[32..]).as_slice() == &entry[..32];
        if !intact {
            tracing::warn!(file = %file.display(), "compiled-module cache entry is damaged; compiling again");
            let _ = self.dir.remove(OsStr::new(name));
            return None;
        }
        // SAFETY: the bytes are what `Component::serialize` wrote on an
        // engine of the same compatibility hash (the key), unchanged since
        // (the digest), read without following links from a regular file
        // that only this user or root can write, in a directory only they
        // can change.
        match unsafe { Component::deserialize(engine, &entry[32..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "compiled-module cache entry refused; compiling again");
                let _ = self.dir.remove(OsStr::new(name));
                None
            }
        }
    }

    /// Removes the oldest entries past the bounds.
    fn evict(&self) {
        let Ok(names) = self.dir.names() else { return };
        let mut entries: Vec<(i64, i64, u64, &OsStr)> = names
            .iter()
            .filter(|name| name.to_str().is_some_and(|n| n.ends_with(SUFFIX)))
            .filter_map(|name| {
                let stat = self.dir.stat(name).ok()?;
                Some((stat.st_mtime, stat.st_mtime_nsec as i64, u64::try_from(stat.st_size).ok()?, name.as_os_str()))
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
        let mut total = 0u64;
        for (i, (_, _, len, name)) in entries.iter().enumerate() {
            total += len;
            if i >= MAX_ENTRIES || total > MAX_BYTES {
                let _ = self.dir.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The smallest valid component: a header and no sections.
    const EMPTY: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    fn compile(engine: &wasmtime::Engine) -> wasmtime::Result<Component> {
        Component::new(engine, EMPTY)
    }

    fn engine() -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        wasmtime::Engine::new(&config).unwrap()
    }

    #[test]
    fn a_stored_module_loads_without_compiling_and_a_damaged_one_is_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(&dir.path().join("cache")).unwrap();
        let engine = engine();
        cache.get_or_compile(&engine, "sha256:a", || compile(&engine)).unwrap();
        cache.get_or_compile(&engine, "sha256:a", || panic!("compiled although cached")).unwrap();

        // Another module, another engine configuration: misses.
        let mut compiled = 0;
        cache
            .get_or_compile(&engine, "sha256:b", || {
                compiled += 1;
                compile(&engine)
            })
            .unwrap();
        let other = wasmtime::Engine::default();
        cache
            .get_or_compile(&other, "sha256:a", || {
                compiled += 1;
                compile(&other)
            })
            .unwrap();
        assert_eq!(compiled, 2);

        // A flipped byte: the entry is dropped and the module compiled again.
        let path = cache.dir.path().join(ModuleCache::name(&engine, "sha256:a"));
        let mut entry = std::fs::read(&path).unwrap();
        *entry.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &entry).unwrap();
        cache
            .get_or_compile(&engine, "sha256:a", || {
                compiled += 1;
                compile(&engine)
            })
            .unwrap();
        assert_eq!(compiled, 3);
        cache.get_or_compile(&engine, "sha256:a", || panic!("the repaired entry was not stored")).unwrap();
    }

    #[test]
    fn a_cache_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = ModuleCache::open(&shared).unwrap_err().to_string();
        assert!(refused.contains("writable by nobody else"), "{refused}");
    }

    #[test]
    fn a_symbolic_link_planted_as_an_entry_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (elsewhere, cache) = (dir.path().join("elsewhere"), dir.path().join("cache"));
        let engine = engine();
        ModuleCache::open(&elsewhere).unwrap().get_or_compile(&engine, "sha256:a", || compile(&engine)).unwrap();
        let cache = ModuleCache::open(&cache).unwrap();
        let planted = cache.dir.path().join(ModuleCache::name(&engine, "sha256:a"));
        std::os::unix::fs::symlink(elsewhere.join(ModuleCache::name(&engine, "sha256:a")), &planted).unwrap();

        let mut compiled = false;
        cache
            .get_or_compile(&engine, "sha256:a", || {
                compiled = true;
                compile(&engine)
            })
            .unwrap();
        assert!(compiled, "the entry was loaded through a planted link");
        assert!(std::fs::symlink_metadata(&planted).unwrap().is_file(), "the link was not replaced by an entry");
    }

    #[test]
    fn an_entry_others_can_write_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path()).unwrap();
        let engine = engine();
        cache.get_or_compile(&engine, "sha256:a", || compile(&engine)).unwrap();
        let entry = cache.dir.path().join(ModuleCache::name(&engine, "sha256:a"));
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();

        let mut compiled = false;
        cache
            .get_or_compile(&engine, "sha256:a", || {
                compiled = true;
                compile(&engine)
            })
            .unwrap();
        assert!(compiled, "an entry anyone could write was loaded");
        assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_cache_inside_a_directory_others_can_write_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let open = std::fs::canonicalize(dir.path()).unwrap().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = format!("{:#}", ModuleCache::open(&open.join("cache")).unwrap_err());
        assert!(refused.contains(&format!("inside {}, which is writable by others", open.display())), "{refused}");
        assert!(refused.contains("--module-cache"), "{refused}");
    }

    #[test]
    fn an_unfinished_write_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(ModuleCache::open(dir.path()).unwrap());
        let leftover = dir.path().join(format!(".0123{SUFFIX}.00000000deadbeef.tmp"));
        std::fs::write(&leftover, b"half an entry").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not ours to remove").unwrap();
        ModuleCache::open(dir.path()).unwrap();
        assert!(!leftover.exists(), "the leftover stayed");
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn a_directory_put_in_the_cache_place_after_open_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let (path, moved) = (dir.path().join("cache"), dir.path().join("moved"));
        let cache = ModuleCache::open(&path).unwrap();
        let engine = engine();
        cache.get_or_compile(&engine, "sha256:a", || compile(&engine)).unwrap();

        // The directory goes; another with an entry for `b` takes its place.
        std::fs::rename(&path, &moved).unwrap();
        std::fs::create_dir(&path).unwrap();
        let (a, b) = (ModuleCache::name(&engine, "sha256:a"), ModuleCache::name(&engine, "sha256:b"));
        std::fs::copy(moved.join(&a), path.join(&b)).unwrap();

        cache.get_or_compile(&engine, "sha256:a", || panic!("the held directory's entry was not loaded")).unwrap();
        let mut compiled = false;
        cache
            .get_or_compile(&engine, "sha256:b", || {
                compiled = true;
                compile(&engine)
            })
            .unwrap();
        assert!(compiled, "an entry of the directory put in its place was loaded");
        assert!(moved.join(&b).exists(), "the compiled module was not stored in the held directory");
    }

    #[test]
    fn the_oldest_entries_go_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path()).unwrap();
        let now = std::time::SystemTime::now();
        for i in 0..MAX_ENTRIES + 3 {
            let path = dir.path().join(format!("{i:04}{SUFFIX}"));
            std::fs::write(&path, b"x").unwrap();
            let age = std::time::Duration::from_secs((MAX_ENTRIES + 3 - i) as u64);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(now - age).unwrap();
        }
        cache.evict();
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, MAX_ENTRIES);
        assert!(!dir.path().join(format!("0000{SUFFIX}")).exists(), "the oldest entry stayed");
        assert!(dir.path().join(format!("{:04}{SUFFIX}", MAX_ENTRIES + 2)).exists(), "the newest entry went");
    }
}
