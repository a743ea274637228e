//! A module bound to one region's catalog: warm instances, bounded calls, and
//! isolation of the record that makes a module fail.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Store;

use super::BatchBudget;
use super::contract::{self, Batch, Contract, Functions, Results};
use super::limits::MemoryCapExceeded;
use super::module::{ModuleError, RuleModule, StoreState};
use super::{convert, wit};
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
    functions: Functions,
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
    /// For 1.1 modules: per country slot ([`convert::country_slot`]), its
    /// index in the catalog's countries.
    country_index: Vec<Option<u16>>,
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
            country_index: convert::country_index(&catalog.countries),
            module,
            catalog,
            idle: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        };
        let primed = rules.prime(rules.module.engine().limits().call_timeout)?;
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

    /// One result per sign-up, in order, within a budget of its own: see
    /// [`Self::enrich_within`].
    pub fn enrich(&self, batch: &[&SignUp<'_>]) -> Vec<Result<Vec<Offer>, Failure>> {
        self.enrich_within(batch, &BatchBudget::start())
    }

    /// One result per sign-up, in order. A batch runs in one call; if the
    /// module fails, the batch is halved and each half retried, down to
    /// single records, so that only the records that make it fail are
    /// reported as failed (Lambda's BisectBatchOnFunctionError). Once the
    /// module has failed in `budget`'s batch, its calls end at the budget
    /// (instantiation included), and when the budget is spent its records
    /// not yet served fail as timeouts without a call.
    pub fn enrich_within(&self, batch: &[&SignUp<'_>], budget: &BatchBudget) -> Vec<Result<Vec<Offer>, Failure>> {
        let limits = self.module.engine().limits();
        let digest = &self.module.info().digest;
        let mut results: Vec<Option<Result<Vec<Offer>, Failure>>> = vec![None; batch.len()];
        let inputs = self.inputs(batch, &mut results);
        // Ranges still to serve, the next one last.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(16);
        todo.push(0..inputs.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let failing = budget.failing(digest);
            let left = if failing { budget.left(limits.batch_budget) } else { limits.call_timeout };
            if left.is_zero() {
                let spent = Failure {
                    kind: FailureKind::Timeout,
                    detail: format!(
                        "the batch's time budget ({:?}) was spent on failing records of this module",
                        limits.batch_budget
                    ),
                };
                for range in std::iter::once(range).chain(todo.drain(..)) {
                    for i in range {
                        results[inputs.position(i)] = Some(Err(spent.clone()));
                    }
                }
                break;
            }
            match self.call(inputs.batch(range.clone()), left) {
                Ok(served) => {
                    for (i, result) in range.zip(served) {
                        results[inputs.position(i)] = Some(result);
                    }
                }
                Err(failure) if range.len() == 1 => {
                    budget.failed(digest);
                    results[inputs.position(range.start)] = Some(Err(failure));
                }
                Err(_) => {
                    budget.failed(digest);
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
            }
        }
        results.into_iter().map(|r| r.expect("every record is served, failed or timed out")).collect()
    }

    /// The batch in the form the module's contract version takes. A 1.1
    /// module sees only sign-ups of its catalog's countries: the others are
    /// declined here, as `country-not-served`, into `results`.
    fn inputs(&self, batch: &[&SignUp<'_>], results: &mut [Option<Result<Vec<Offer>, Failure>>]) -> Inputs {
        match self.module.info().contract {
            Contract::V1_0 => Inputs::V1_0(batch.iter().map(|s| convert::signup(s)).collect()),
            Contract::V1_1 => {
                let mut signups = Vec::with_capacity(batch.len());
                let mut positions = Vec::with_capacity(batch.len());
                for (i, s) in batch.iter().enumerate() {
                    match convert::compact_signup(s, &self.country_index) {
                        Some(compact) => {
                            signups.push(compact);
                            positions.push(i);
                        }
                        None => {
                            let error = wit::RuleError::CountryNotServed(s.country.to_string());
                            results[i] = Some(Err(convert::rejection(&error)));
                        }
                    }
                }
                Inputs::V1_1 { signups, positions }
            }
        }
    }

    /// One bounded `enrich` call on a primed instance, stopped at the call
    /// timeout or `left`, whichever is sooner. The instance goes back to the
    /// pool only if the call succeeded: after a trap it is poisoned.
    /// A result that breaks the contract as a whole (its count or order)
    /// fails the call; one record's bad offers fail that record.
    fn call(&self, batch: Batch<'_>, left: Duration) -> Result<Vec<Result<Vec<Offer>, Failure>>, Failure> {
        let _busy = Busy::start(self);
        let idle = self.idle.lock().expect("pool lock is never held across a panic").pop();
        let mut primed = match idle {
            Some(p) => p,
            None => self.prime(left).map_err(|e| Failure { kind: FailureKind::Trap, detail: e.to_string() })?,
        };
        let engine = self.module.engine();
        primed.store.set_epoch_deadline(engine.deadline_ticks().min(engine.ticks(left)));
        let sent = batch.len();
        primed.store.set_hostcall_fuel(contract::enrich_result_bytes(sent, self.catalog.max_offers));
        let results = primed.functions.enrich(&mut primed.store, batch).map_err(|e| {
            if contract::is_over_result_budget(&e) {
                bad_result(format!(
                    "module's results for {sent} sign-ups are more than the host copies for a batch of that size \
                     (at most {} offers or a {MAX_REASON_BYTES}-byte reason per sign-up)",
                    self.catalog.max_offers
                ))
            } else if e.downcast_ref::<wasmtime::Trap>().is_none() && e.downcast_ref::<MemoryCapExceeded>().is_none() {
                // Not the guest's code failing: its results could not be
                // lifted (out of bounds, not UTF-8, a bad case).
                bad_result(format!("module's results could not be read: {e:#}"))
            } else {
                classify(&e)
            }
        })?;
        let checked = match (results, batch) {
            (Results::V1_0(results), _) if results.len() != sent => {
                return Err(bad_result(format!("module returned {} results for {sent} sign-ups", results.len())));
            }
            (Results::V1_0(results), _) => results
                .into_iter()
                .map(|r| r.map_err(|e| convert::rejection(&e)).and_then(|offers| checked(&offers, &self.catalog)))
                .collect(),
            (Results::V1_1(flat), Batch::V1_1(compact)) => unflattened(&flat, compact, &self.catalog)?,
            (Results::V1_1(_), Batch::V1_0(_)) => unreachable!("a module answers in the version it was called at"),
        };
        let mut idle = self.idle.lock().expect("pool lock is never held across a panic");
        if idle.len() < MAX_IDLE {
            idle.push(primed);
        }
        Ok(checked)
    }

    /// A new instance, initialised with the catalog within `left` (or the
    /// call timeout, whichever is sooner).
    fn prime(&self, left: Duration) -> Result<Primed, ModuleError> {
        let (mut store, functions) = self
            .module
            .instantiate()
            .map_err(|e| ModuleError::Failed { call: "instantiate", detail: classify(&e).detail })?;
        let engine = self.module.engine();
        store.set_epoch_deadline(engine.deadline_ticks().min(engine.ticks(left)));
        functions
            .init(&mut store, &self.wit_catalog)
            .map_err(|e| ModuleError::Failed { call: "init", detail: classify(&e).detail })?
            .map_err(|e| ModuleError::CatalogRefused {
                region: self.catalog.region.clone(),
                field: e.field,
                reason: e.reason,
            })?;
        Ok(Primed { store, functions })
    }
}

/// One sign-up's offers as host offers, refusing more than the
/// catalog's `max_offers` and indices outside the catalog.
fn checked<'a>(
    offers: impl IntoIterator<Item = &'a wit::Offer, IntoIter: ExactSizeIterator>,
    catalog: &RegionCatalog,
) -> Result<Vec<Offer>, Failure> {
    let offers = offers.into_iter();
    if offers.len() > catalog.max_offers as usize {
        return Err(bad_result(format!(
            "module returned {} offers; the catalog allows {}",
            offers.len(),
            catalog.max_offers
        )));
    }
    offers.map(|o| convert::offer(o, catalog)).collect()
}

/// A 1.1 batch result as one result per sign-up of `batch`. Offers and
/// rejections must each be in sign-up order, at most one rejection per
/// sign-up, never both for one: otherwise the call fails (bisection then
/// finds the records). So at most `batch.len()` reasons are copied out of
/// `flat.reasons`, each at most [`MAX_REASON_BYTES`].
fn unflattened(
    flat: &wit::BatchResult,
    batch: &[wit::CompactSignUp],
    catalog: &RegionCatalog,
) -> Result<Vec<Result<Vec<Offer>, Failure>>, Failure> {
    let sent = batch.len();
    let mut results: Vec<Option<Result<Vec<Offer>, Failure>>> = vec![None; sent];
    let mut previous = None;
    let mut rest = flat.offers.as_slice();
    while let Some(first) = rest.first() {
        let i = first.sign_up as usize;
        if i >= sent || previous.is_some_and(|p| p >= i) {
            return Err(bad_result(format!(
                "module returned offers for sign-up {i} out of order or outside the batch of {sent}"
            )));
        }
        previous = Some(i);
        let run = rest.iter().take_while(|o| o.sign_up == first.sign_up).count();
        results[i] = Some(checked(rest[..run].iter().map(|o| &o.offer), catalog));
        rest = &rest[run..];
    }
    let mut previous = None;
    for rejection in &flat.rejections {
        let i = rejection.sign_up as usize;
        if i >= sent || previous.is_some_and(|p| p >= i) {
            return Err(bad_result(format!("module declined sign-up {i} out of order or outside the batch of {sent}")));
        }
        if results[i].is_some() {
            return Err(bad_result(format!("module both offered and declined sign-up {i}")));
        }
        previous = Some(i);
        results[i] = Some(Err(declined(rejection, &batch[i], &flat.reasons, catalog)));
    }
    // Neither offered nor declined: no offers, as an empty list in 1.0.
    Ok(results.into_iter().map(|r| r.unwrap_or_else(|| Ok(Vec::new()))).collect())
}

/// A 1.1 rejection as the failure 1.0's `rule-error` gives.
fn declined(
    rejection: &wit::BatchRejection,
    signup: &wit::CompactSignUp,
    reasons: &str,
    catalog: &RegionCatalog,
) -> Failure {
    let reason = match rejection.reason {
        None => "",
        Some((_, len)) if len as usize > MAX_REASON_BYTES => {
            return bad_result(format!(
                "module gave a rejection reason of {len} bytes; the limit is {MAX_REASON_BYTES}"
            ));
        }
        Some((start, len)) => match reasons.get(start as usize..start as usize + len as usize) {
            Some(reason) => reason,
            None => {
                return bad_result(format!(
                    "module gave a rejection reason at bytes {start}..+{len} of {} bytes of reasons",
                    reasons.len()
                ));
            }
        },
    };
    let error = match rejection.kind {
        wit::RejectionKind::CountryNotServed => {
            let country = catalog.countries.get(usize::from(signup.country)).map_or("?", String::as_str);
            wit::RuleError::CountryNotServed(country.to_owned())
        }
        wit::RejectionKind::NoCoverage => wit::RuleError::NoCoverage,
        wit::RejectionKind::Unusable => wit::RuleError::Unusable(reason.to_owned()),
    };
    convert::rejection(&error)
}

fn bad_result(detail: String) -> Failure {
    Failure { kind: FailureKind::BadResult, detail }
}

/// A batch converted for the module's contract version.
enum Inputs {
    V1_0(Vec<wit::SignUp>),
    /// `positions[i]`: where `signups[i]` is in the batch (sign-ups the host
    /// declined itself are not sent).
    V1_1 {
        signups: Vec<wit::CompactSignUp>,
        positions: Vec<usize>,
    },
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::V1_0(signups) => signups.len(),
            Inputs::V1_1 { signups, .. } => signups.len(),
        }
    }

    fn batch(&self, range: Range<usize>) -> Batch<'_> {
        match self {
            Inputs::V1_0(signups) => Batch::V1_0(&signups[range]),
            Inputs::V1_1 { signups, .. } => Batch::V1_1(&signups[range]),
        }
    }

    fn position(&self, i: usize) -> usize {
        match self {
            Inputs::V1_0(_) => i,
            Inputs::V1_1 { positions, .. } => positions[i],
        }
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

    fn catalog() -> RegionCatalog {
        let catalogs =
            crate::catalog::Catalogs::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalogs"))
                .expect("the stock catalogs load");
        catalogs.region("europe").expect("europe is a stock region").clone()
    }

    fn offer(sign_up: u32, plan: u32) -> wit::BatchOffer {
        wit::BatchOffer { sign_up, offer: wit::Offer { plan, monthly_price_minor: 100, promo: None } }
    }

    fn rejection(sign_up: u32) -> wit::BatchRejection {
        wit::BatchRejection { sign_up, kind: wit::RejectionKind::NoCoverage, reason: None }
    }

    /// `n` sign-ups from the catalog's second country.
    fn batch(n: usize) -> Vec<wit::CompactSignUp> {
        let signup = wit::CompactSignUp {
            country: 1,
            postal_code: None,
            coordinates: None,
            segment: wit::Segment::Residential,
            signed_up_day: None,
        };
        vec![signup; n]
    }

    fn result(offers: Vec<wit::BatchOffer>, rejections: Vec<wit::BatchRejection>, reasons: &str) -> wit::BatchResult {
        wit::BatchResult { offers, rejections, reasons: reasons.into() }
    }

    #[test]
    fn flat_results_become_one_result_per_sign_up() {
        let catalog = catalog();
        let unusable = |sign_up, reason| wit::BatchRejection { sign_up, kind: wit::RejectionKind::Unusable, reason };
        let not_served = wit::BatchRejection { sign_up: 6, kind: wit::RejectionKind::CountryNotServed, reason: None };
        let flat = result(
            vec![offer(0, 3), offer(0, 1), offer(2, 9999), offer(3, 0)],
            vec![rejection(1), unusable(4, Some((4, 6))), unusable(5, Some((8, 6))), not_served],
            "abc bad code",
        );
        let results = unflattened(&flat, &batch(8), &catalog).unwrap();
        let plans: Vec<usize> = results[0].as_ref().unwrap().iter().map(|o| o.plan).collect();
        assert_eq!(plans, [3, 1], "rank order kept");
        assert_eq!(results[1].as_ref().unwrap_err().kind, FailureKind::Rejected("no-coverage"));
        // A bad index fails its own sign-up only.
        assert_eq!(results[2].as_ref().unwrap_err().kind, FailureKind::BadResult);
        assert_eq!(results[3].as_ref().unwrap()[0].plan, 0);
        assert_eq!(results[4].as_ref().unwrap_err().detail, "unusable: bad co");
        // A reason outside the reasons fails its own sign-up only.
        assert_eq!(results[5].as_ref().unwrap_err().kind, FailureKind::BadResult);
        let country = &catalog.countries[1];
        assert_eq!(
            results[6].as_ref().unwrap_err().detail,
            format!("country-not-served: country {country} is not served by this region")
        );
        assert_eq!(results[7], Ok(Vec::new()), "in neither list: no offers");
    }

    #[test]
    fn flat_results_that_break_the_contract_fail_the_call_or_the_sign_up() {
        let catalog = catalog();
        let call_fails = |offers: Vec<wit::BatchOffer>, rejections: Vec<wit::BatchRejection>, sent: usize| {
            unflattened(&result(offers, rejections, ""), &batch(sent), &catalog).map(|_| ()).unwrap_err().detail
        };
        assert!(call_fails(vec![offer(0, 0)], vec![rejection(0)], 1).contains("both offered and declined"));
        assert!(call_fails(vec![offer(1, 0), offer(0, 0)], vec![], 2).contains("out of order"));
        // Offers of one sign-up must be consecutive.
        assert!(call_fails(vec![offer(0, 0), offer(1, 0), offer(0, 1)], vec![], 2).contains("out of order"));
        assert!(call_fails(vec![offer(5, 0)], vec![], 2).contains("outside the batch of 2"));
        assert!(call_fails(vec![], vec![rejection(1), rejection(0)], 2).contains("out of order"));
        assert!(call_fails(vec![], vec![rejection(0), rejection(0)], 2).contains("out of order"));
        assert!(call_fails(vec![], vec![rejection(u32::MAX)], 1).contains("outside the batch"));
        let too_many = (0..=catalog.max_offers).map(|_| offer(0, 0)).collect();
        let results = unflattened(&result(too_many, vec![], ""), &batch(1), &catalog).unwrap();
        assert!(results[0].as_ref().unwrap_err().detail.contains("the catalog allows"));
        let long = wit::BatchRejection {
            sign_up: 0,
            kind: wit::RejectionKind::Unusable,
            reason: Some((0, MAX_REASON_BYTES as u32 + 1)),
        };
        let results = unflattened(&result(vec![], vec![long], &"x".repeat(2_000)), &batch(1), &catalog).unwrap();
        assert!(results[0].as_ref().unwrap_err().detail.contains("the limit is 1024"));
    }

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
