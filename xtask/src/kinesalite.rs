//! Starts kinesalite (a Kinesis API about 10–20× faster than kinesis-local;
//! polling only, no resharding events) on loopback for throughput runs where
//! kinesis-local would be the bottleneck; stops it when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::kinesis_local::{free_port, wait_for_port};

pub struct Kinesalite {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    child: Child,
}

impl Kinesalite {
    /// Starts the server from `<root>/node_modules/kinesalite`, in memory.
    ///
    /// # Errors
    /// The package is not installed (`npm ci`), or the server does not come up.
    pub fn start(root: &Path) -> Result<Self> {
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
        let child = Command::new("node")
            .args(["-e", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let mut server = Self { endpoint: format!("http://127.0.0.1:{port}"), child };
        wait_for_port(&mut server.child, "kinesalite", port)?;
        Ok(server)
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
