//! The one way offerd serves HTTP (metrics and health, the admin API): bind
//! at start-up, serve on its own task until shutdown, drain gracefully.
//!
//! Both servers face clients that may be hostile, so each bounds them:
//! at most [`MAX_CONNECTIONS`] at once (past it, a new connection is closed
//! as soon as it is accepted); request headers
//! within [`HEADER_READ_TIMEOUT`]; a TLS handshake within
//! [`HANDSHAKE_TIMEOUT`]; no connection silent either way for
//! [`IDLE_TIMEOUT`], and none open longer than [`MAX_CONNECTION_AGE`]. A
//! client holding thousands of half-sent requests costs offerd a bounded
//! number of descriptors, never the ones its leases, AWS calls and
//! checkpoint files need.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

/// How long requests in flight at shutdown may take to finish.
const DRAIN: Duration = Duration::from_secs(10);
/// Most connections served at once, per server.
pub const MAX_CONNECTIONS: usize = 128;
/// A request's headers must have arrived this long after the connection is
/// ready for them (the first request, or the next on a kept-alive one).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no byte moved either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection is closed this long after it opened, whatever it is doing:
/// a client trickling a body one byte at a time is not idle, but bounded.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Pause after a failed accept (out of descriptors): the loop must not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr`, naming `flag` if it cannot: called at start-up, so a taken
/// port stops it.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {flag} {addr}"))
}

/// Serves `app` on `listener` (over TLS if `tls` is given) until `shutdown`
/// turns true.
///
/// # Errors
/// The listener's address cannot be read.
pub fn spawn(
    listener: TcpListener,
    what: &'static str,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, max_connections = MAX_CONNECTIONS, "serving {what}");
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    Ok(tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Full: closed at once, so the client learns it now and the
            // descriptor is free again.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("{what}: {MAX_CONNECTIONS} connections open; closing a new one");
                continue;
            };
            let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
            tokio::spawn(async move {
                let _slot = slot;
                let io = Idle::new(stream, IDLE_TIMEOUT);
                let served = match tls {
                    None => serve(io, app, watcher).await,
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(io)) => serve(io, app, watcher).await,
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err("the TLS handshake took too long".into()),
                    },
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "{what}: connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
            tracing::warn!("{what}: requests still in flight after {DRAIN:?}; closing them");
        }
    }))
}

/// Serves HTTP/1.1 on one connection, for at most [`MAX_CONNECTION_AGE`].
async fn serve<I>(io: I, app: Router, watcher: hyper_util::server::graceful::Watcher) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    match tokio::time::timeout(MAX_CONNECTION_AGE, watcher.watch(connection)).await {
        Ok(served) => served.map_err(Into::into),
        Err(_) => Err("open too long".into()),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A stream that fails with `TimedOut` once no byte has moved either way
/// for its idle timeout, while a read or write waits.
struct Idle<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    /// Pending while the deadline is ahead (registering the waker), an error once it passed.
    fn check(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Error> {
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit of open descriptors to its hard limit,
/// at start-up: the servers' connections, the shard readers' AWS
/// connections and the checkpoint files all draw on it.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        (before, libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0)
    };
    match raised {
        (before, true) if before != limit.rlim_max => {
            tracing::debug!(from = before, to = limit.rlim_max, "raised the open-descriptor limit");
        }
        (_, true) => {}
        (before, false) => tracing::warn!(limit = before, "could not raise the open-descriptor limit"),
    }
}
