//! Reference offer rules for every sales region.
//!
//! # Layout
//! - [`catalog`]: the catalog types a module receives at `init`, and their checks.
//! - [`geo`]: great-circle distances and the metro-area index.
//! - [`rules`]: eligibility, promos and ranking for one sign-up.
//! - `component` (wasm32 only): the thin `offers:rules` adapter.
//!
//! The logic is plain Rust so that it is unit-tested natively and benchmarked
//! against its own WebAssembly build on the same inputs.

mod catalog;
mod geo;
mod rules;

#[cfg(target_arch = "wasm32")]
mod component;

pub use catalog::{Catalog, CatalogError, Coverage, Metro, Plan, Promo, Segment, Technology};
pub use rules::{AppliedPromo, Offer, Rejection, Rules, SignUp};

/// Name reported in module metadata and in every output's `rule.name`.
pub const NAME: &str = "reference-offer-rules";
/// Version reported in module metadata and in every output's `rule.version`:
/// the package's, unless a build sets `OFFER_RULES_VERSION` (the demo builds
/// a second version this way to publish into a running offerd).
pub const VERSION: &str = match option_env!("OFFER_RULES_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
