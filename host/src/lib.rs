//! offerd: enriches sign-ups with the offers of their sales region, computed
//! by that region's WebAssembly offer-rule module.
//!
//! # Layout
//! - [`config_file`]: TOML files people write, with errors that name file, key and line.
//! - [`catalog`]: region routing and plan catalogs, validated on load.
//! - [`signup`]: the sign-up wire format.
//! - [`engine`]: wasmtime, narrowed to "load a module" and "enrich a batch".
//! - [`module_store`]: the directory of `<region>.wasm` modules.
//! - [`enricher`]: one batch of raw records in, one output or dead letter per record out.
//! - [`record`]: the offer-record and dead-letter wire formats.
//! - [`signing`]: ed25519 module signatures (wasmsign2) and trusted keys.
//! - [`golden`]: golden cases for `offerd test`.
//! - [`stream`]: `offerd run`, the Kinesis consumer.
//! - [`metrics`]: Prometheus metrics and health endpoints of `offerd run`.
//! - [`rollout`]: gated hot swap of a region's rules, rollback, the store watcher.
//! - [`admin`]: the admin HTTP API of `offerd run`.
//! - [`registry`]: the module registry a fleet follows (DynamoDB and S3).
//! - `atomic_file`: crash-safe file replacement (checkpoints, module store).
//! - `process_lock`: one process per checkpoint file or registry state directory.
//! - `trusted_dir`: a directory as trusted as the binary (module cache, trusted keys), checked and held open.
//! - `http_server`: binding and serving either HTTP endpoint until shutdown.
//! - [`tls`]: TLS settings of the admin API.
//! - [`service`]: `offerd run` as one call: settings, bound listeners, a shutdown future.
//! - [`cli`]: the `offerd` command line.

pub(crate) mod admin;
mod atomic_file;
pub mod catalog;
pub mod cli;
pub mod config_file;
pub mod engine;
pub mod enricher;
pub mod golden;
mod http_server;
pub mod metrics;
pub mod module_store;
mod process_lock;
pub mod record;
pub mod registry;
pub mod rollout;
pub mod service;
pub mod signing;
pub mod signup;
pub mod stream;
#[cfg(test)]
mod test_alloc;
pub mod tls;
mod trusted_dir;

/// The machine's name, for default worker ids and publishers.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "offerd".to_owned())
}
