//! Compiled modules on disk, so a restart loads each module in milliseconds
//! instead of compiling it again.
//!
//! An entry is keyed by the module's digest and the engine's compatibility
//! hash (wasmtime's version and every setting that shapes compiled code),
//! so an entry of another wasmtime or configuration is never even looked
//! at. Loading compiled code runs it: an entry is used only when
//! - the directory is this user's own and writable by nobody else (an entry
//!   is as trusted as the binary; the cache is refused otherwise), and
//! - its SHA-256, written in front of it, matches (a torn or bit-rotted
//!   entry is removed and the module compiled again).
//!
//! The cache is bounded: past [`MAX_ENTRIES`] or [`MAX_BYTES`], the least
//! recently written entries are removed.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

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
    dir: PathBuf,
}

impl ModuleCache {
    /// Opens (creating, mode 0700) the cache directory.
    ///
    /// # Errors
    /// The directory cannot be created, or is not this user's alone.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --module-cache {}", dir.display()))?;
        let meta = std::fs::metadata(dir).with_context(|| format!("reading --module-cache {}", dir.display()))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
            bail!(
                "--module-cache {} must belong to this user and be writable by nobody else (owner {}, mode {:o}): \
                 compiled code loaded from it runs as offerd",
                dir.display(),
                meta.uid(),
                meta.permissions().mode() & 0o777
            );
        }
        Ok(Self { dir: dir.to_owned() })
    }

    /// The entry's file for a module of `digest` on `engine`.
    fn path(&self, engine: &wasmtime::Engine, digest: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let key = Sha256::new().chain_update(digest.as_bytes()).chain_update(hasher.finish().to_le_bytes()).finalize();
        self.dir.join(format!("{key:x}{SUFFIX}"))
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
        let path = self.path(engine, digest);
        if let Some(component) = self.load(engine, &path) {
            return Ok(component);
        }
        let component = compile()?;
        match component.serialize() {
            Ok(code) => {
                let mut entry = Sha256::digest(&code).to_vec();
                entry.extend_from_slice(&code);
                if let Err(e) = crate::atomic_file::write(&path, &entry) {
                    tracing::warn!(file = %path.display(), error = %e, "could not store a compiled module");
                }
                self.evict();
            }
            Err(e) => tracing::warn!(error = %e, "could not serialise a compiled module"),
        }
        Ok(component)
    }

    fn load(&self, engine: &wasmtime::Engine, path: &Path) -> Option<Component> {
        let entry = crate::config_file::read_limited(path, MAX_ENTRY_BYTES).ok()?;
        let intact = entry.len() > 32 && Sha256::digest(&entry[32..]).as_slice() == &entry[..32];
        if !intact {
            tracing::warn!(file = %path.display(), "compiled-module cache entry is damaged; compiling again");
            let _ = std::fs::remove_file(path);
            return None;
        }
        // SAFETY: the bytes are what `Component::serialize` wrote on an
        // engine of the same compatibility hash (the key), unchanged since
        // (the digest), in a directory only this user can write.
        match unsafe { Component::deserialize(engine, &entry[32..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "compiled-module cache entry refused; compiling again");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Removes the oldest entries past the bounds.
    fn evict(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(SUFFIX)))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut total = 0u64;
        for (i, (_, len, path)) in entries.iter().enumerate() {
            total += len;
            if i >= MAX_ENTRIES || total > MAX_BYTES {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let path = cache.path(&engine, "sha256:a");
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
