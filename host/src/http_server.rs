//! The one way offerd serves HTTP (metrics and health, the admin API): bind
//! at start-up, serve on its own task until shutdown, drain gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long requests in flight at shutdown may take to finish.
const DRAIN: Duration = Duration::from_secs(10);

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
    tracing::info!(addr = %listener.local_addr()?, scheme, "serving {what}");
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    Ok(tokio::spawn(async move {
        let served = match tls {
            None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
            Some(config) => {
                let handle = axum_server::Handle::new();
                let draining = handle.clone();
                tokio::spawn(async move {
                    stop.await;
                    draining.graceful_shutdown(Some(DRAIN));
                });
                match listener.into_std() {
                    Ok(listener) => {
                        let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
                        axum_server::from_tcp_rustls(listener, config)
                            .handle(handle)
                            .serve(app.into_make_service())
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "serving {what} failed");
        }
    }))
}
