//! Starts dynalite (an in-memory DynamoDB API) on loopback for the lease
//! tests and the several-workers demo; stops it when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::kinesis_local::{free_port, wait_for_port};

pub struct Dynalite {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_DYNAMODB`.
    pub endpoint: String,
    child: Child,
}

impl Dynalite {
    /// Starts the server from `<root>/node_modules/dynalite`, in memory, and
    /// waits until it accepts connections.
    ///
    /// # Errors
    /// The package is not installed (`npm ci`), or the server does not come up.
    pub fn start(root: &Path) -> Result<Self> {
        let package = root.join("node_modules/dynalite");
        anyhow::ensure!(package.join("cli.js").is_file(), "{} is missing: run `npm ci`", package.display());
        let port = free_port()?;
        let child = Command::new("node")
            .arg(package.join("cli.js"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // Tables are active at once instead of after 500 ms.
            .args(["--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let mut server = Self { endpoint: format!("http://127.0.0.1:{port}"), child };
        wait_for_port(&mut server.child, "dynalite", port)?;
        Ok(server)
    }
}

impl Drop for Dynalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
