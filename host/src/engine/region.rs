//! A module bound to one region's catalog: warm instances, bounded calls, and
//! isolation of the record that makes a module fail.

use std::sync::{Arc, Mutex};

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

/// A region's rules: one module, one catalog, a pool of primed instances.
pub struct RegionRules {
    module: Arc<RuleModule>,
    catalog: Arc<RegionCatalog>,
    /// Built once: `init` runs per instance, not per batch.
    wit_catalog: wit::Catalog,
    idle: Mutex<Vec<Primed>>,
}

impl RegionRules {
    /// Primes a first instance, so a module that cannot use the catalog is
    /// refused here rather than on the record path.
    ///
    /// # Errors
    /// The module traps in `init` or refuses the catalog.
    pub fn new(module: Arc<RuleModule>, catalog: Arc<RegionCatalog>) -> Result<Self, ModuleError> {
        let rules = Self { wit_catalog: convert::catalog(&catalog), module, catalog, idle: Mutex::new(Vec::new()) };
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

    /// One result per sign-up, in order. A batch runs in one call; if the
    /// module fails, each record is retried alone so that only the records
    /// that make it fail are reported as failed.
    pub fn enrich(&self, batch: &[&SignUp<'_>]) -> Vec<Result<Vec<Offer>, Failure>> {
        let inputs: Vec<wit::SignUp> = batch.iter().map(|s| convert::signup(s)).collect();
        match self.call(&inputs) {
            Ok(results) => results.into_iter().map(|r| self.check(r)).collect(),
            Err(failure) if inputs.len() == 1 => vec![Err(failure)],
            Err(_) => inputs
                .iter()
                .map(|one| match self.call(std::slice::from_ref(one)) {
                    Ok(mut results) => self.check(results.pop().expect("call checks one result per input")),
                    Err(failure) => Err(failure),
                })
                .collect(),
        }
    }

    /// One bounded `enrich` call on a primed instance. The instance goes back
    /// to the pool only if the call succeeded: after a trap it is poisoned.
    fn call(&self, inputs: &[wit::SignUp]) -> Result<Vec<Result<Vec<wit::Offer>, wit::RuleError>>, Failure> {
        let idle = self.idle.lock().expect("pool lock is never held across a panic").pop();
        let mut primed = match idle {
            Some(p) => p,
            None => self.prime().map_err(|e| Failure { kind: FailureKind::Trap, detail: e.to_string() })?,
        };
        primed.store.set_epoch_deadline(self.module.engine().deadline_ticks());
        let results =
            primed.bindings.offers_rules_rules().call_enrich(&mut primed.store, inputs).map_err(|e| classify(&e))?;
        if results.len() != inputs.len() {
            return Err(Failure {
                kind: FailureKind::Trap,
                detail: format!("module returned {} results for {} sign-ups", results.len(), inputs.len()),
            });
        }
        self.idle.lock().expect("pool lock is never held across a panic").push(primed);
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

    /// Turns a module result into offers, refusing indices outside the catalog.
    fn check(&self, result: Result<Vec<wit::Offer>, wit::RuleError>) -> Result<Vec<Offer>, Failure> {
        let offers = result.map_err(|e| convert::rejection(&e))?;
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
    Failure { kind: FailureKind::Trap, detail: format!("{e:#}") }
}
