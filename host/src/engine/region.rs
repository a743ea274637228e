//! A module bound to one region's catalog: warm instances, bounded calls, and
//! isolation of the record that makes a module fail.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::limits::MemoryCapExceeded;
use super::module::{ModuleError, RuleModule, StoreState};
use super::{OfferRules, convert, wit};
use crate::catalog::RegionCatalog;
use crate::signup::SignUp;

/// One offer, referring to the region's catalog by index (checked in range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub plan: usize,
    pub monthly_price_minor: u64,
    /// Index into the catalog's promos, and the price while it lasts.
    pub promo: Option<(usize, u64)>,
}

/// Why a record got no offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The rules declined it: data, not a fault. Holds the contract's case
    /// name (`country-not-served`, `no-coverage`, `unusable`).
    Rejected(&'static str),
    Trap,
    Timeout,
    Memory,
    /// The module returned what the contract does not allow: an index
    /// outside the catalog, more offers than `max-offers`, a result count
    /// other than the batch's, an over-long rejection reason.
    BadResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

/// An instance whose `init` has run: reused across batches until it traps.
struct Primed {
    store: Store<StoreState>,
    bindings: OfferRules,
}

/// Most primed instances kept idle per region: one per shard enriching the
/// region at the same moment, up to this many; more are dropped after use.
const MAX_IDLE: usize = 8;
/// Longest `unusable` reason a module may give, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// A region's rules: one module, one catalog, a pool of primed instances.
pub struct RegionRules {
    module: Arc<RuleModule>,
    catalog: Arc<RegionCatalog>,
    /// Built once: `init` runs per instance, not per batch.
    wit_catalog: wit::Catalog,
    idle: Mutex<Vec<Primed>>,
    /// Instances in calls now, and the most at once since the last trim.
    busy: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts an instance as busy for as long as it lives.
struct Busy<'a>(&'a RegionRules);

impl<'a> Busy<'a> {
    fn start(rules: &'a RegionRules) -> Self {
        let now = rules.busy.fetch_add(1, Ordering::Relaxed) + 1;
        rules.peak.fetch_max(now, Ordering::Relaxed);
        Self(rules)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RegionRules {
    /// Primes a first instance, so a module that cannot use the catalog is
    /// refused here rather than on the record path.
    ///
    /// # Errors
    /// The module traps in `init` or refuses the catalog.
    pub fn new(module: Arc<RuleModule>, catalog: Arc<RegionCatalog>) -> Result<Self, ModuleError> {
        let rules = Self {
            wit_catalog: convert::catalog(&catalog),
            module,
            catalog,
            idle: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        };
        let primed = rules.prime()?;
        rules.idle.lock().expect("pool lock is never held across a panic").push(primed);
        Ok(rules)
    }

    pub fn module(&self) -> &Arc<RuleModule> {
        &self.module
    }

    pub fn catalog(&self) -> &Arc<RegionCatalog> {
        &self.catalog
    }

    /// Keeps at most `keep` idle instances (a version kept for rollback
    /// needs one, not a pool).
    pub fn trim(&self, keep: usize) {
        self.idle.lock().expect("pool lock is never held across a panic").truncate(keep);
    }

    /// Drops the idle instances the last period did not need: keeps as many
    /// as were busy at once since the previous call (at least one). Called
    /// periodically, it lets a pool grown by a burst of shards shrink back.
    pub fn trim_idle(&self) {
        let peak = self.peak.swap(self.busy.load(Ordering::Relaxed), Ordering::Relaxed);
        self.trim(peak.max(1));
    }

    /// Instances primed and idle.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().expect("pool lock is never held across a panic").len()
    }

    /// One result per sign-up, in order. A batch runs in one call; if the
    /// module fails, the batch is halved and each half retried, down to
    /// single records, so that only the records that make it fail are
    /// reported as failed (Lambda's BisectBatchOnFunctionError). All of it
    /// within the engine's batch budget: records not served when it is spent
    /// fail as timeouts.
    pub fn enrich(&self, batch: &[&SignUp<'_>]) -> Vec<Result<Vec<Offer>, Failure>> {
        let deadline = Instant::now() + self.module.engine().limits().batch_budget;
        let inputs: Vec<wit::SignUp> = batch.iter().map(|s| convert::signup(s)).collect();
        let mut results: Vec<Option<Result<Vec<Offer>, Failure>>> = vec![None; inputs.len()];
        // Ranges still to serve, the next one last.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(16);
        todo.push(0..inputs.len());
        while let Some(range) = todo.pop() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let budget = self.module.engine().limits().batch_budget;
                let spent = Failure {
                    kind: FailureKind::Timeout,
                    detail: format!("the batch's time budget ({budget:?}) was spent on failing records of this module"),
                };
                for range in std::iter::once(range).chain(todo.drain(..)) {
                    for i in range {
                        results[i] = Some(Err(spent.clone()));
                    }
                }
                break;
            }
            match self.call(&inputs[range.clone()], left) {
                Ok(served) => {
                    for (i, result) in range.zip(served) {
                        results[i] = Some(self.check(result));
                    }
                }
                Err(failure) if range.len() == 1 => results[range.start] = Some(Err(failure)),
                Err(_) => {
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
            }
        }
        results.into_iter().map(|r| r.expect("every record is served, failed or timed out")).collect()
    }

    /// One bounded `enrich` call on a primed instance, stopped at the call
    /// timeout or `left`, whichever is sooner. The instance goes back to the
    /// pool only if the call succeeded: after a trap it is poisoned.
    fn call(
        &self,
        inputs: &[wit::SignUp],
        left: Duration,
    ) -> Result<Vec<Result<Vec<wit::Offer>, wit::RuleError>>, Failure> {
        let _busy = Busy::start(self);
        let idle = self.idle.lock().expect("pool lock is never held across a panic").pop();
        let mut primed = match idle {
            Some(p) => p,
            None => self.prime().map_err(|e| Failure { kind: FailureKind::Trap, detail: e.to_string() })?,
        };
        let engine = self.module.engine();
        primed.store.set_epoch_deadline(engine.deadline_ticks().min(engine.ticks(left)));
        let results =
            primed.bindings.offers_rules_rules().call_enrich(&mut primed.store, inputs).map_err(|e| classify(&e))?;
        if results.len() != inputs.len() {
            return Err(Failure {
                kind: FailureKind::BadResult,
                detail: format!("module returned {} results for {} sign-ups", results.len(), inputs.len()),
            });
        }
        let mut idle = self.idle.lock().expect("pool lock is never held across a panic");
        if idle.len() < MAX_IDLE {
            idle.push(primed);
        }
        Ok(results)
    }

    fn prime(&self) -> Result<Primed, ModuleError> {
        let (mut store, bindings) = self
            .module
            .instantiate()
            .map_err(|e| ModuleError::Failed { call: "instantiate", detail: classify(&e).detail })?;
        bindings
            .offers_rules_rules()
            .call_init(&mut store, &self.wit_catalog)
            .map_err(|e| ModuleError::Failed { call: "init", detail: classify(&e).detail })?
            .map_err(|e| ModuleError::CatalogRefused {
                region: self.catalog.region.clone(),
                field: e.field,
                reason: e.reason,
            })?;
        Ok(Primed { store, bindings })
    }

    /// Turns a module result into offers, refusing more offers than the
    /// catalog's `max_offers` and indices outside the catalog.
    fn check(&self, result: Result<Vec<wit::Offer>, wit::RuleError>) -> Result<Vec<Offer>, Failure> {
        let offers = result.map_err(|e| convert::rejection(&e))?;
        if offers.len() > self.catalog.max_offers as usize {
            return Err(Failure {
                kind: FailureKind::BadResult,
                detail: format!(
                    "module returned {} offers; the catalog allows {}",
                    offers.len(),
                    self.catalog.max_offers
                ),
            });
        }
        offers.into_iter().map(|o| convert::offer(&o, &self.catalog)).collect()
    }
}

/// Names what stopped a call: the deadline, the memory cap, or a trap.
pub(crate) fn classify(e: &wasmtime::Error) -> Failure {
    if let Some(cap) = e.downcast_ref::<MemoryCapExceeded>() {
        return Failure { kind: FailureKind::Memory, detail: cap.to_string() };
    }
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return Failure { kind: FailureKind::Timeout, detail: "module ran past its call deadline".into() };
    }
    // First line: where the guest's own code trapped, and why; then the
    // whole error. A deep recursion's backtrace can run to megabytes.
    let function = e.downcast_ref::<wasmtime::WasmBacktrace>().and_then(|trace| {
        trace.frames().iter().filter_map(|f| f.func_name()).find(|name| !is_runtime_frame(name)).map(readable)
    });
    let why = e.downcast_ref::<wasmtime::Trap>().map_or_else(|| "trap".to_owned(), ToString::to_string);
    let detail = match function {
        Some(function) => format!("{why} in {function}\n{e:#}"),
        None => format!("{e:#}"),
    };
    Failure {
        kind: FailureKind::Trap,
        detail: crate::record::truncated(&detail, crate::record::MAX_DETAIL).into_owned(),
    }
}

/// A frame of Rust's panic and allocation machinery, not the rule's code.
fn is_runtime_frame(name: &str) -> bool {
    let name = readable(name);
    ["std::", "core::", "alloc::", "__rustc::", "dlmalloc::", "wit_bindgen"].iter().any(|p| name.starts_with(p))
        || name.contains("rust_begin_unwind")
        || name.contains("rust_panic")
}

/// A symbol demangled, without the crate disambiguators of Rust's v0
/// mangling (`core[c5930c85a12de822]::panicking` → `core::panicking`), at
/// most 200 characters.
fn readable(name: &str) -> String {
    let demangled = rustc_demangle::demangle(name).to_string();
    let mut out = String::with_capacity(demangled.len());
    let mut rest = demangled.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        match rest[open..].find(']') {
            Some(close) if rest[open + 1..open + close].bytes().all(|b| b.is_ascii_hexdigit()) => {
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push('[');
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    crate::record::truncated(&out, 200).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_demangled_without_disambiguators_and_runtime_frames_are_skipped() {
        assert_eq!(readable("_RNvNtCsebHcaeoSrxy_3std9panicking15panic_with_hook"), "std::panicking::panic_with_hook");
        assert_eq!(readable("core[c5930c85a12de822]::panicking::panic_fmt"), "core::panicking::panic_fmt");
        assert_eq!(readable("offers:rules/rules@1.0.0#enrich"), "offers:rules/rules@1.0.0#enrich");
        assert_eq!(readable("a[not-hex]b"), "a[not-hex]b");
        assert!(readable(&"x".repeat(10_000)).len() < 300);
        assert!(is_runtime_frame("_RNvNtCsebHcaeoSrxy_3std9panicking15panic_with_hook"));
        assert!(is_runtime_frame("__rustc[b7974e8690430dd9]::rust_begin_unwind"));
        assert!(!is_runtime_frame("offers:rules/rules@1.0.0#enrich"));
        assert!(!is_runtime_frame("my_rules::pricing::discount"));
    }
}
