//! Promo-first offer rules, an example built from `offerd new-rule`: plain-Rust logic in [`rules`], tested natively
//! with `cargo test`; `component` (wasm32 only) adapts it to the
//! `offers:rules` contract that `offerd wit` writes into `wit/`.

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod component;

/// Reported in every offer record's `rule.name`: a short identifier.
pub const NAME: &str = env!("CARGO_PKG_NAME");
/// Reported in every offer record's `rule.version`: bump it with each change.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
