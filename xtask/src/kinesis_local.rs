//! Starts kinesis-local (kinesis-mock, the engine LocalStack uses) on
//! loopback for tests and demos.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::local_server::{LocalServer, free_port};

/// Installs the npm packages of the repository (`npm ci`).
///
/// # Errors
/// npm is missing or fails.
pub fn npm_ci(root: &Path) -> Result<()> {
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(root)
        .status()
        .context("running npm (is Node.js installed?)")?;
    if !status.success() {
        bail!("`npm ci` failed ({status})");
    }
    Ok(())
}

/// Starts kinesis-local from `<root>/node_modules/kinesis-local` and waits
/// until it accepts connections.
///
/// # Errors
/// The package is not installed (`npm ci`), or the server does not come up.
pub fn start(root: &Path) -> Result<LocalServer> {
    let package = root.join("node_modules/kinesis-local");
    anyhow::ensure!(package.join("main.js").is_file(), "{} is missing: run `npm ci`", package.display());
    let (plain, tls) = (free_port()?, free_port()?);
    let mut command = Command::new("node");
    command
        .arg(package.join("main.js"))
        .env("KINESIS_MOCK_CERT_PATH", package.join("server.json"))
        .env("KINESIS_MOCK_PLAIN_PORT", plain.to_string())
        .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
        // Stream changes take 35-65 ms instead of 500 ms.
        .env("CREATE_STREAM_DURATION", "0ms")
        .env("DELETE_STREAM_DURATION", "0ms")
        .env("UPDATE_SHARD_COUNT_DURATION", "0ms")
        .env("SPLIT_SHARD_DURATION", "0ms")
        .env("MERGE_SHARDS_DURATION", "0ms")
        .env("REGISTER_STREAM_CONSUMER_DURATION", "0ms")
        // The limit counts the shards of every account on the server;
        // tests run in parallel, each with its own account.
        .env("SHARD_LIMIT", "100000")
        .env("LOG_LEVEL", "ERROR");
    LocalServer::spawn("kinesis-local", command, plain)
}
