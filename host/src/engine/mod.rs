//! The only part of the host that touches wasmtime: compile offer-rule
//! components, prime instances with a region's catalog, and run batches under
//! a deadline and a memory cap.
//!
//! # Layout
//! - [`limits`]: the per-call bounds and the memory limiter.
//! - [`module`]: a compiled, checked component ([`RuleModule`]).
//! - [`region`]: a module bound to one region's catalog ([`RegionRules`]),
//!   with warm instances and poison-record isolation.
//! - [`cache`]: compiled modules on disk, for restarts without compiling.
//! - [`contract`]: the contract versions spoken, and calls at a module's own.
//! - `convert`: host types to and from the contract's types.
//! - `ticker`: the epoch ticker, running only while guest code does.

mod budget;
mod cache;
mod contract;
mod convert;
mod limits;
mod module;
mod region;
mod ticker;

use std::sync::Arc;
use std::time::Duration;

use crate::signing::TrustedKeys;
use ticker::{EPOCH_TICK, Ticker};

pub use budget::BatchBudget;
pub use cache::ModuleCache;
pub use contract::Contract;
pub use limits::Limits;
pub use module::{ModuleError, ModuleInfo, RuleModule, digest};
pub use region::{Failure, FailureKind, Offer, RegionRules};

wasmtime::component::bindgen!({ path: "../wit", world: "offer-rules" });

use exports::offers::rules::rules as wit;

/// A wasmtime engine configured for offer rules, with its epoch ticker.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    limits: Limits,
    /// When set, a module must be signed by one of these keys to load.
    trusted_keys: Option<Arc<TrustedKeys>>,
    /// When set, compiled modules are kept here across restarts.
    cache: Option<Arc<ModuleCache>>,
    ticker: Arc<Ticker>,
}

impl Engine {
    /// # Errors
    /// When wasmtime rejects the configuration (it does not on supported hosts).
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Rules run on the host's own threads; they must never allocate
        // unbounded native stack either.
        config.max_wasm_stack(1 << 20);
        // One core per compile: a large module being gated must not take
        // every core from enrichment. (Publications are gated one at a time.)
        config.parallel_compilation(false);
        let inner = wasmtime::Engine::new(&config)?;
        let ticker = Ticker::start(inner.clone());
        Ok(Self { inner, limits, trusted_keys: None, cache: None, ticker: Arc::new(ticker) })
    }

    /// This engine, loading only modules signed by one of `keys`.
    #[must_use]
    pub fn trusting(mut self, keys: Option<Arc<TrustedKeys>>) -> Self {
        self.trusted_keys = keys;
        self
    }

    /// This engine, keeping compiled modules in `cache`.
    #[must_use]
    pub fn caching(mut self, cache: Option<Arc<ModuleCache>>) -> Self {
        self.cache = cache;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Epoch ticks that cover `limits.call_timeout`.
    fn deadline_ticks(&self) -> u64 {
        self.ticks(self.limits.call_timeout)
    }

    /// Epoch ticks that cover `time`, at least one.
    fn ticks(&self, time: Duration) -> u64 {
        (time.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1)
    }
}
