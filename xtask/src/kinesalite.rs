//! Starts kinesalite (a Kinesis API about 10–20× faster than kinesis-local;
//! polling only, no resharding events) on loopback for throughput runs where
//! kinesis-local would be the bottleneck.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::local_server::{LocalServer, free_port};

/// Starts the server from `<root>/node_modules/kinesalite`, in memory.
///
/// # Errors
/// The package is not installed (`npm ci`), or the server does not come up.
pub fn start(root: &Path) -> Result<LocalServer> {
    let package = root.join("node_modules/kinesalite");
    let index = package.join("index.js");
    anyhow::ensure!(index.is_file(), "{} is missing: run `npm ci`", package.display());
    let port = free_port()?;
    // Its command line has no host option: the library, on loopback only.
    let script = format!(
        "require({:?})({{createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 1000}})\
         .listen({port}, '127.0.0.1')",
        index.to_str().context("a UTF-8 path")?
    );
    let mut command = Command::new("node");
    command.args(["-e", &script]);
    LocalServer::spawn("kinesalite", command, port)
}
