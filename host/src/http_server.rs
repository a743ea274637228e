//! The one way offerd serves HTTP (metrics and health, the admin API): bind
//! at start-up, serve on its own task until shutdown, drain gracefully.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::sync::watch;

/// Binds `addr` now, so a taken port stops start-up naming `flag`, then
/// serves `app` until `shutdown` turns true.
///
/// # Errors
/// The address cannot be bound.
pub async fn spawn(
    addr: SocketAddr,
    flag: &str,
    what: &'static str,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {flag} {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving {what}");
    Ok(tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "serving {what} failed");
        }
    }))
}
