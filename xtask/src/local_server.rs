//! A local AWS-compatible server (a Node.js or Python process on loopback) for tests,
//! demos and benches: started quiet, awaited until it answers, killed when
//! dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a server may take to answer; they usually need about a second.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct LocalServer {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL` (or a service's own variable).
    pub endpoint: String,
    child: Child,
}

impl LocalServer {
    /// Spawns `command` with its output discarded and waits until it
    /// accepts connections on loopback `port`.
    pub(crate) fn spawn(name: &str, mut command: Command, port: u16) -> Result<Self> {
        let child =
            command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
        let mut server = Self { endpoint: format!("http://127.0.0.1:{port}"), child };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("{name} did not answer on port {port} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
