//! `offerd run` as one library call, the way mini-redis's `server::run` is
//! one: the whole service assembled from its settings, listeners the caller
//! bound, a Kinesis client and a shutdown future. The command line only
//! parses flags, binds and waits for a signal; a test can run the service
//! in-process.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::catalog::Catalogs;
use crate::engine::{Engine, Limits};
use crate::metrics::{self, Metrics};
use crate::module_store::ModuleStore;
use crate::rollout::{self, Rollout};
use crate::stream::checkpoint::{CheckpointStore, FileCheckpoints};
use crate::stream::{self, RunConfig};

/// How often idle module instances beyond the last period's need are dropped.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Everything `offerd run` is told.
pub struct Settings {
    pub stream: RunConfig,
    /// Module store directory.
    pub modules: PathBuf,
    /// Catalog directory.
    pub catalogs: PathBuf,
    /// Checkpoint file (locked for the service's lifetime).
    pub checkpoints: PathBuf,
    pub limits: Limits,
    /// See [`Metrics::stalled_shards`].
    pub stall_after: Duration,
}

/// The admin API: its listener, bearer token and TLS, if served.
pub struct AdminEndpoint {
    pub listener: TcpListener,
    pub token: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Listeners already bound, so a taken port fails where it was named.
#[derive(Default)]
pub struct Listeners {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: Option<TcpListener>,
    pub admin: Option<AdminEndpoint>,
}

/// Takes the checkpoint lock, loads catalogs and modules (each region's
/// module gated), serves the listeners, watches the module store and
/// catalogs, and consumes the stream until `shutdown` completes; then
/// finishes in-flight batches, checkpoints and returns.
///
/// # Errors
/// Start-up fails (lock held, catalogs or modules unusable, a stream
/// missing) or a shard task panics.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    client: aws_sdk_kinesis::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Settings { stream: config, modules, catalogs, checkpoints, limits, stall_after } = settings;
    let metrics = Arc::new(Metrics::new(stall_after));
    let input_stream = config.input_stream.clone();
    let started_metrics = metrics.clone();
    // Blocking work: locking and reading files, compiling and gating modules.
    let (store, enricher, rollout) = tokio::task::spawn_blocking(move || {
        // First: a second offerd on the same checkpoints stops before compiling anything.
        let store: Arc<dyn CheckpointStore> = Arc::new(
            FileCheckpoints::open(&checkpoints, &input_stream)
                .with_context(|| format!("opening checkpoints {}", checkpoints.display()))?,
        );
        let loaded = Arc::new(Catalogs::load(&catalogs)?);
        let engine = Engine::new(limits)?;
        let (enricher, rollout) =
            Rollout::start(engine, ModuleStore::open(&modules)?, &catalogs, loaded, started_metrics)?;
        anyhow::Ok((store, enricher, Arc::new(rollout)))
    })
    .await
    .context("the start-up task panicked")??;
    let _watcher = rollout::watcher::start(rollout.clone())?;
    let trimmed = enricher.clone();
    let trimmer = tokio::spawn(async move {
        let mut every = tokio::time::interval(TRIM_EVERY);
        loop {
            every.tick().await;
            trimmed.trim_idle();
        }
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    if let Some(listener) = listeners.metrics {
        servers.push(metrics::serve(listener, metrics.clone(), stopping.clone())?);
    }
    if let Some(AdminEndpoint { listener, token, tls }) = listeners.admin {
        servers.push(crate::admin::serve(listener, token, rollout, tls, stopping.clone())?);
    }
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: finishing in-flight batches, then checkpointing");
        let _ = stop.send(true);
    });
    stream::run(client, config, store, enricher, metrics, stopping).await?;
    trimmer.abort();
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}
