//! Starts moto in server mode (a local S3 API) on loopback for the registry
//! tests and the fleet demo, from a virtual environment under `target/`
//! that this module installs from `tests/requirements-moto.txt` (pinned).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::local_server::{LocalServer, free_port};

/// The virtual environment moto runs from.
fn venv(root: &Path) -> PathBuf {
    root.join("target/moto-venv")
}

/// Creates the virtual environment and installs the pinned requirements,
/// unless they are installed already (a marker holds the requirements
/// installed, so a changed pin reinstalls).
///
/// # Errors
/// python3 is missing, or pip fails.
pub fn install(root: &Path) -> Result<()> {
    let requirements = root.join("tests/requirements-moto.txt");
    let wanted = std::fs::read(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let venv = venv(root);
    let marker = venv.join("installed-requirements.txt");
    if std::fs::read(&marker).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    let run = |command: &mut Command, what: &str| -> Result<()> {
        let status = command.status().with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv (is Python 3 installed?)")?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "pip install -r tests/requirements-moto.txt",
    )?;
    std::fs::write(&marker, wanted).with_context(|| format!("writing {}", marker.display()))
}

/// Starts moto's server (installed by [`install`]), in memory, and waits
/// until it accepts connections. Its endpoint is for `AWS_ENDPOINT_URL_S3`.
///
/// # Errors
/// moto is not installed, or the server does not come up.
pub fn start(root: &Path) -> Result<LocalServer> {
    let python = venv(root).join("bin/python");
    anyhow::ensure!(python.is_file(), "{} is missing: run `cargo xtask test` (it installs moto)", python.display());
    let port = free_port()?;
    let mut command = Command::new(python);
    command.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
    LocalServer::spawn("moto", command, port)
}

/// Creates `bucket` on the local S3 server at `endpoint` (path-style; it
/// takes unsigned requests).
///
/// # Errors
/// The server cannot be reached or refuses.
pub fn create_bucket(endpoint: &str, bucket: &str) -> Result<()> {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {endpoint}"))?;
    write!(conn, "PUT /{bucket} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer.lines().next().unwrap_or_default();
    if !(status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200")) {
        bail!("creating the bucket {bucket} on {endpoint}: {status}");
    }
    Ok(())
}
