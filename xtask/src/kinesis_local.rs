//! Starts kinesis-local (kinesis-mock, the engine LocalStack uses) on
//! loopback for tests and demos; stops it when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the server may take to answer; it usually needs about a second.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KinesisLocal {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    child: Child,
}

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

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl KinesisLocal {
    /// Starts the server from `<root>/node_modules/kinesis-local` and waits until it accepts connections.
    ///
    /// # Errors
    /// The package is not installed (`npm ci`), or the server does not come up.
    pub fn start(root: &Path) -> Result<Self> {
        let package = root.join("node_modules/kinesis-local");
        anyhow::ensure!(package.join("main.js").is_file(), "{} is missing: run `npm ci`", package.display());
        let (plain, tls) = (free_port()?, free_port()?);
        let child = Command::new("node")
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
            .env("LOG_LEVEL", "ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let mut server = Self { endpoint: format!("http://127.0.0.1:{plain}"), child };
        wait_for_port(&mut server.child, "kinesis-local", plain)?;
        Ok(server)
    }
}

/// Waits until `child` accepts connections on loopback `port`.
pub(crate) fn wait_for_port(child: &mut Child, name: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer on port {port} within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
