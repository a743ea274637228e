//! The contract versions this host speaks, and calls into a module at the
//! version it exports.
//!
//! The Rust types are generated from the newest WIT. A minor version only
//! adds, so every function of an older version has the same types as its
//! namesake in the newest, and the component model checks types by
//! structure: one set of Rust types calls every version. Each function is
//! type-checked once per instance ([`Functions::load`]), as `bindgen!`'s own
//! bindings do.

use wasmtime::component::{ComponentExportIndex, Func, Instance, InstancePre, TypedFunc};
use wasmtime::{AsContextMut, Store};

use super::module::StoreState;
use super::wit;

/// Bytes the host may allocate lifting the results of `metadata` or `init`
/// (a few short strings). Lifting copies every string and list a result
/// points at, at its host size, once per pointer: a module that points many
/// results at one large guest list or string would make the host copy it
/// again and again, far beyond the module's own memory cap. wasmtime charges
/// each copy against the store's hostcall fuel and fails the call when it
/// runs out; these budgets set that fuel (wasmtime's default is 128 MiB).
pub(super) const SMALL_RESULT_BYTES: usize = 1 << 20;

/// Bytes the host may allocate lifting the results of an `enrich` call of
/// `sent` sign-ups: what the most a legitimate module can answer takes, in
/// either version (`max_offers` offers or one reason of
/// [`MAX_REASON_BYTES`](super::region::MAX_REASON_BYTES) per sign-up), plus
/// [`SMALL_RESULT_BYTES`], so that one record's answer over the limits still
/// reaches the checks that name what was wrong with it.
pub(super) fn enrich_result_bytes(sent: usize, max_offers: u32) -> usize {
    let offer = std::mem::size_of::<wit::Offer>().max(std::mem::size_of::<wit::BatchOffer>());
    let per_signup = std::mem::size_of::<Result<Vec<wit::Offer>, wit::RuleError>>()
        + std::mem::size_of::<wit::BatchRejection>()
        + offer * max_offers as usize
        + super::region::MAX_REASON_BYTES;
    SMALL_RESULT_BYTES.saturating_add(sent.saturating_mul(per_signup))
}

/// Whether `e` is wasmtime refusing to lift more than the budget above.
pub(super) fn is_over_result_budget(e: &wasmtime::Error) -> bool {
    // wasmtime's error type for it is private; its message is pinned by
    // the `results_outside_the_contract_fail_their_record` test. Should it
    // change, the call still fails as a bad result, with a vaguer detail.
    e.chain().any(|cause| cause.to_string().contains("fuel allocated for hostcalls has been exhausted"))
}

/// A version of `offers:rules` that a module exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contract {
    /// `enrich` per record: strings in, a list of offers per sign-up out.
    V1_0,
    /// `enrich-compact`: indices and packed values in, two flat lists out.
    V1_1,
}

impl Contract {
    /// Every version this host speaks, newest first: a module exporting
    /// several is called at the newest.
    pub const ALL: [Contract; 2] = [Contract::V1_1, Contract::V1_0];

    pub fn version(self) -> &'static str {
        match self {
            Contract::V1_0 => "1.0.0",
            Contract::V1_1 => "1.1.0",
        }
    }

    /// The export a module of this version carries.
    pub fn interface(self) -> &'static str {
        match self {
            Contract::V1_0 => "offers:rules/rules@1.0.0",
            Contract::V1_1 => "offers:rules/rules@1.1.0",
        }
    }

    /// What the host speaks, for messages: `offers:rules/rules@1.1.0 or @1.0.0`.
    pub fn spoken() -> String {
        let versions: Vec<String> = Self::ALL.iter().map(|c| format!("@{}", c.version())).collect();
        format!("offers:rules/rules{}", versions.join(" or "))
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.version())
    }
}

/// Where a module's contract functions are: looked up once per compiled
/// module.
pub(super) struct Exports {
    contract: Contract,
    metadata: ComponentExportIndex,
    init: ComponentExportIndex,
    /// `enrich` for 1.0, `enrich-compact` for 1.1: the only one called.
    enrich: ComponentExportIndex,
}

impl Exports {
    /// # Errors
    /// A function of `contract` the module does not export, by name.
    pub fn find(pre: &InstancePre<StoreState>, contract: Contract) -> Result<Self, String> {
        let component = pre.component();
        let interface = component
            .get_export_index(None, contract.interface())
            .ok_or_else(|| format!("no exported instance named {}", contract.interface()))?;
        let lookup = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .ok_or_else(|| format!("{} does not export `{name}`", contract.interface()))
        };
        let enrich = match contract {
            Contract::V1_0 => "enrich",
            Contract::V1_1 => "enrich-compact",
        };
        Ok(Self { contract, metadata: lookup("metadata")?, init: lookup("init")?, enrich: lookup(enrich)? })
    }
}

type EnrichParams<'a> = (&'a [wit::SignUp],);
type EnrichResults = (Vec<Result<Vec<wit::Offer>, wit::RuleError>>,);
type CompactParams<'a> = (&'a [wit::CompactSignUp],);
type CompactResults = (wit::BatchResult,);
type InitParams<'a> = (&'a wit::Catalog,);
type InitResults = (Result<(), wit::CatalogError>,);

/// One instance's contract functions, type-checked.
pub(super) struct Functions {
    metadata: TypedFunc<(), (wit::ModuleInfo,)>,
    /// Checked as [`InitParams`] → [`InitResults`].
    init: Func,
    enrich: Enrich,
}

enum Enrich {
    /// Checked as [`EnrichParams`] → [`EnrichResults`].
    V1_0(Func),
    /// Checked as [`CompactParams`] → [`CompactResults`].
    V1_1(Func),
}

/// A batch in the form the module's version takes.
#[derive(Clone, Copy)]
pub(super) enum Batch<'a> {
    V1_0(&'a [wit::SignUp]),
    V1_1(&'a [wit::CompactSignUp]),
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        match self {
            Batch::V1_0(batch) => batch.len(),
            Batch::V1_1(batch) => batch.len(),
        }
    }
}

/// A batch's results in the form the module's version gives them.
pub(super) enum Results {
    V1_0(Vec<Result<Vec<wit::Offer>, wit::RuleError>>),
    V1_1(wit::BatchResult),
}

impl Functions {
    /// # Errors
    /// A function whose type is not the contract's.
    pub fn load(exports: &Exports, mut store: impl AsContextMut, instance: &Instance) -> wasmtime::Result<Self> {
        let mut store = store.as_context_mut();
        let metadata = instance.get_typed_func(&mut store, exports.metadata)?;
        let init = *instance.get_typed_func::<InitParams<'_>, InitResults>(&mut store, exports.init)?.func();
        let enrich = match exports.contract {
            Contract::V1_0 => Enrich::V1_0(
                *instance.get_typed_func::<EnrichParams<'_>, EnrichResults>(&mut store, exports.enrich)?.func(),
            ),
            Contract::V1_1 => Enrich::V1_1(
                *instance.get_typed_func::<CompactParams<'_>, CompactResults>(&mut store, exports.enrich)?.func(),
            ),
        };
        Ok(Self { metadata, init, enrich })
    }

    pub fn metadata(&self, store: &mut Store<StoreState>) -> wasmtime::Result<wit::ModuleInfo> {
        let _running = store.data().running();
        Ok(self.metadata.call(store, ())?.0)
    }

    pub fn init(
        &self,
        store: &mut Store<StoreState>,
        catalog: &wit::Catalog,
    ) -> wasmtime::Result<Result<(), wit::CatalogError>> {
        // SAFETY: `load` type-checked `init` with exactly these types.
        let init = unsafe { TypedFunc::<InitParams<'_>, InitResults>::new_unchecked(self.init) };
        let _running = store.data().running();
        Ok(init.call(store, (catalog,))?.0)
    }

    /// # Panics
    /// When `batch` is not of the module's version: the caller converts
    /// sign-ups by the module's [`ModuleInfo::contract`](super::ModuleInfo::contract).
    pub fn enrich(&self, store: &mut Store<StoreState>, batch: Batch<'_>) -> wasmtime::Result<Results> {
        let _running = store.data().running();
        match (&self.enrich, batch) {
            (Enrich::V1_0(func), Batch::V1_0(batch)) => {
                // SAFETY: `load` type-checked this function with exactly these types.
                let enrich = unsafe { TypedFunc::<EnrichParams<'_>, EnrichResults>::new_unchecked(*func) };
                Ok(Results::V1_0(enrich.call(store, (batch,))?.0))
            }
            (Enrich::V1_1(func), Batch::V1_1(batch)) => {
                // SAFETY: as above.
                let enrich = unsafe { TypedFunc::<CompactParams<'_>, CompactResults>::new_unchecked(*func) };
                Ok(Results::V1_1(enrich.call(store, (batch,))?.0))
            }
            _ => panic!("a batch converted for another contract version"),
        }
    }
}
