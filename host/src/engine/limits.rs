//! Bounds on every module call.

use std::time::Duration;

/// Per-call limits, applied to every `init` and `enrich`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time one call may take. A batch of 500 sign-ups takes about 1 ms
    /// with the reference rules; the default leaves room for far heavier rules.
    pub call_timeout: Duration,
    /// Linear memory one instance may hold. The reference rules use about
    /// 2 MiB with the largest catalog.
    pub memory_bytes: usize,
    /// Wall time a batch may take before modules that failed in it get no
    /// more calls, across all its regions and chunks ([`super::BatchBudget`]).
    /// When it is spent, their records not yet served are failed as
    /// timeouts: modules that loop on every record hold their shard for
    /// about this long, not for one timeout per record.
    pub batch_budget: Duration,
    /// Largest component accepted, in bytes. Compile time grows with size;
    /// rule modules are a few hundred KiB.
    pub max_module_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(200),
            memory_bytes: 64 << 20,
            batch_budget: Duration::from_secs(2),
            max_module_bytes: 16 << 20,
        }
    }
}

/// Most core instances, tables and memories one component instance may
/// create. A rule module is one core module with one memory; the caps stop
/// a component from multiplying the memory cap by instantiating many.
const MAX_INSTANCES: usize = 4;
const MAX_TABLES: usize = 4;
const MAX_MEMORIES: usize = 1;

/// A module asked for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("module asked for {desired} bytes of linear memory; the cap is {cap}")]
pub struct MemoryCapExceeded {
    pub desired: usize,
    pub cap: usize,
}

/// Traps the guest at the growth that crosses the cap, so the failure names
/// itself instead of surfacing as an `unreachable` from Rust's OOM handler.
pub(crate) struct MemoryCap {
    pub cap: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            return Err(wasmtime::Error::new(MemoryCapExceeded { desired, cap: self.cap }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; rules need a few hundred at most.
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    /// A core module with `memories` memories of one page each, encoded by hand.
    fn module_with_memories(memories: u8) -> Vec<u8> {
        let mut section = vec![memories];
        for _ in 0..memories {
            section.extend_from_slice(&[0x00, 0x01]);
        }
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        bytes.extend_from_slice(&[0x05, section.len() as u8]);
        bytes.extend_from_slice(&section);
        bytes
    }

    fn instantiate(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<()> {
        let module = wasmtime::Module::new(&engine.inner, bytes)?;
        let mut store = wasmtime::Store::new(&engine.inner, MemoryCap { cap: 64 << 20 });
        store.limiter(|cap| cap);
        wasmtime::Instance::new(&mut store, &module, &[]).map(drop)
    }

    /// The cap is per instance: an instance may not multiply it by
    /// declaring more memories.
    #[test]
    fn an_instance_gets_one_memory() {
        let engine = Engine::new(Limits::default()).unwrap();
        instantiate(&engine, &module_with_memories(1)).unwrap();
        let err = instantiate(&engine, &module_with_memories(2)).unwrap_err();
        assert!(format!("{err:#}").contains("memory count too high"), "{err:#}");
    }
}
