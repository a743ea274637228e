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
}

impl Default for Limits {
    fn default() -> Self {
        Self { call_timeout: Duration::from_millis(200), memory_bytes: 64 << 20 }
    }
}

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
}
