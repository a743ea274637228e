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
use crate::engine::{Engine, Limits, ModuleCache};
use crate::metrics::{self, Metrics};
use crate::module_store::ModuleStore;
use crate::registry::Registry;
use crate::registry::follow::{FollowSettings, Follower, Poll};
use crate::registry::state::StateDir;
use crate::rollout::{self, Rollout};
use crate::signing::TrustedKeys;
use crate::stream::checkpoint::{CheckpointStore, FileCheckpoints};
use crate::stream::lease::{LeaseSettings, LeaseTable, Leases};
use crate::stream::{self, RunConfig};

/// How often idle module instances beyond the last period's need are dropped.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Everything `offerd run` is told.
pub struct Settings {
    pub stream: RunConfig,
    /// Where the rules come from.
    pub rules: Rules,
    /// Catalog directory.
    pub catalogs: PathBuf,
    pub checkpoints: Checkpoints,
    pub limits: Limits,
    /// When set, every module (at start-up and published) must be signed by one of these keys.
    pub trusted_keys: Option<Arc<TrustedKeys>>,
    /// When set, compiled modules are kept there across restarts.
    pub module_cache: Option<Arc<ModuleCache>>,
    /// See [`Metrics::stalled_shards`].
    pub stall_after: Duration,
}

/// Where a region's rules come from.
pub enum Rules {
    /// A module store directory, watched: this process alone.
    Directory(PathBuf),
    /// A registry every worker of the fleet follows.
    Registry(Following),
}

/// How this worker follows a registry.
pub struct Following {
    pub registry: Arc<dyn Registry>,
    /// Where the last served revisions are kept across restarts.
    pub state_dir: PathBuf,
    pub poll_every: Duration,
    /// This worker's name in the fleet.
    pub worker: String,
}

/// Seconds between a worker's reports to the registry when nothing changes.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// Where checkpoints live, and with them who reads which shard.
pub enum Checkpoints {
    /// A file, locked for the service's lifetime: this process reads every shard.
    File(PathBuf),
    /// A DynamoDB lease table shared by several workers: this one reads the
    /// shards it holds a lease on.
    Leases { settings: LeaseSettings, client: aws_sdk_dynamodb::Client },
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

/// Takes the checkpoint lock (or opens the lease table), loads catalogs and modules (each region's
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
    let Settings { stream: config, rules, catalogs, checkpoints, limits, trusted_keys, module_cache, stall_after } =
        settings;
    let metrics = Arc::new(Metrics::new(stall_after));
    let input_stream = config.input_stream.clone();
    let started_metrics = metrics.clone();
    // First: a lease table that cannot be used, or a second offerd on the
    // same checkpoint file, stops start-up before anything is compiled.
    // (The leases, or the path of the file to open off the async threads.)
    let opened: Result<Arc<Leases>, PathBuf> = match checkpoints {
        Checkpoints::File(path) => Err(path),
        Checkpoints::Leases { settings, client } => {
            let table = LeaseTable::open(client, &settings.table).await?;
            tracing::info!(table = settings.table, worker_id = settings.worker_id, "sharing the stream through leases");
            Ok(Arc::new(Leases::new(table, &settings, metrics.clone())))
        }
    };
    let leases = opened.as_ref().ok().cloned();
    // Blocking work: locking and reading files, compiling and gating modules.
    let (store, enricher, rollout, routing, following) = tokio::task::spawn_blocking(move || {
        let store: Arc<dyn CheckpointStore> = match opened {
            Ok(leases) => leases,
            Err(path) => Arc::new(
                FileCheckpoints::open(&path, &input_stream)
                    .with_context(|| format!("opening checkpoints {}", path.display()))?,
            ),
        };
        // Following a registry, the roll-out serves from the local state:
        // what served before the restart, until the registry says otherwise.
        let (modules, catalogs, following) = match rules {
            Rules::Directory(dir) => (ModuleStore::open(&dir)?, catalogs, None),
            Rules::Registry(following) => {
                let state = StateDir::open(&following.state_dir, &catalogs)?;
                (state.module_store()?, state.catalogs_dir(), Some((following, state)))
            }
        };
        let loaded = Arc::new(Catalogs::load(&catalogs)?);
        let engine = Engine::new(limits)?.trusting(trusted_keys).caching(module_cache);
        let (enricher, rollout) =
            Rollout::start(engine, modules, &catalogs, loaded.clone(), started_metrics, following.is_some())?;
        anyhow::Ok((store, enricher, Arc::new(rollout), loaded, following))
    })
    .await
    .context("the start-up task panicked")??;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // The file watcher, or the registry: never both.
    let (_watcher, follower_task, registry_access) = match following {
        None => (Some(rollout::watcher::start(rollout.clone())?), None, None),
        Some((following, state)) => {
            let access = crate::admin::RegistryAccess {
                registry: following.registry.clone(),
                catalogs: routing.clone(),
                catalogs_dir: state.catalogs_dir(),
                publisher: format!("admin-api@{}", following.worker),
            };
            let follower = start_following(following, state, rollout.clone(), routing, metrics.clone()).await?;
            (None, Some(tokio::spawn(Arc::new(follower).run(stopping.clone()))), Some(Arc::new(access)))
        }
    };
    let trimmed = enricher.clone();
    let trimmer = tokio::spawn(async move {
        let mut every = tokio::time::interval(TRIM_EVERY);
        loop {
            every.tick().await;
            trimmed.trim_idle();
        }
    });
    let mut servers = Vec::new();
    if let Some(listener) = listeners.metrics {
        servers.push(metrics::serve(listener, metrics.clone(), stopping.clone())?);
    }
    if let Some(AdminEndpoint { listener, token, tls }) = listeners.admin {
        servers.push(crate::admin::serve(listener, token, rollout, tls, registry_access, stopping.clone())?);
    }
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: finishing in-flight batches, then checkpointing");
        let _ = stop.send(true);
    });
    stream::run(client, config, store, leases, enricher, metrics, stopping).await?;
    trimmer.abort();
    for server in servers {
        let _ = server.await;
    }
    if let Some(task) = follower_task {
        let _ = task.await;
    }
    Ok(())
}

/// Reads the registry once before any record is read, so a new worker
/// serves the registry's revisions from its first record. With the registry
/// unreachable, what the local state kept serves (degraded).
///
/// # Errors
/// No region ends up with rules: the registry is unreachable and the state
/// holds nothing, or no revision passes this worker's gate.
async fn start_following(
    following: Following,
    state: StateDir,
    rollout: Arc<Rollout>,
    routing: Arc<Catalogs>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Follower> {
    let Following { registry, state_dir, poll_every, worker } = following;
    let settings = FollowSettings { worker, poll_every, heartbeat_every: HEARTBEAT_EVERY };
    let described = registry.describe();
    let follower = Follower::new(registry, rollout.clone(), routing, state, metrics, settings);
    let poll = follower.poll().await;
    let serving =
        rollout.enricher().region_names().into_iter().filter(|r| rollout.enricher().active(r).is_some()).count();
    match poll {
        Poll::Unreachable if serving == 0 => anyhow::bail!(
            "the {described} is unreachable (see the warning above) and {} holds no revision served before: \
             start-up needs one or the other",
            state_dir.display()
        ),
        Poll::Unreachable => {
            tracing::warn!(registry = %described, regions = serving, "registry unreachable at start-up: serving the revisions this worker served last (degraded)")
        }
        Poll::Answered { .. } if serving == 0 => anyhow::bail!(
            "no region has rules: the {described} holds no revision of a region regions.toml defines that passes \
             this worker's gate (each refusal is logged above; publish with `offerd publish --registry-table …`)"
        ),
        Poll::Answered { swapped } => {
            tracing::info!(registry = %described, regions = serving, swapped, "following the registry")
        }
    }
    Ok(follower)
}
