//! Starts dynalite (an in-memory DynamoDB API) on loopback for the lease
//! tests, the several-workers demo and the lease bench.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::local_server::{LocalServer, free_port};

/// Starts the server from `<root>/node_modules/dynalite`, in memory, and
/// waits until it accepts connections. Its endpoint is for
/// `AWS_ENDPOINT_URL_DYNAMODB`.
///
/// # Errors
/// The package is not installed (`npm ci`), or the server does not come up.
pub fn start(root: &Path) -> Result<LocalServer> {
    let package = root.join("node_modules/dynalite");
    anyhow::ensure!(package.join("cli.js").is_file(), "{} is missing: run `npm ci`", package.display());
    let port = free_port()?;
    let mut command = Command::new("node");
    command
        .arg(package.join("cli.js"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        // Tables are active at once instead of after 500 ms.
        .args(["--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"]);
    LocalServer::spawn("dynalite", command, port)
}
