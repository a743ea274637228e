//! `offerd run`: consume a Kinesis stream, enrich, publish offers and dead
//! letters, checkpoint — at least once, in order per shard.
//!
//! # Layout
//! - [`aws`]: the one place AWS clients are built.
//! - [`checkpoint`]: the checkpoint-store seam and its crash-safe file store.
//! - [`feed`]: how records reach a shard (polling, enhanced fan-out).
//! - [`lease`]: several workers on one stream, through a DynamoDB lease table.
//! - [`sink`]: PutRecords: retry what can succeed, per-key order, refusals.
//! - `backoff`: the jittered exponential backoff of every retry.
//! - [`kpl`]: de-aggregation of records packed by the Kinesis Producer Library.
//! - `shard`: the read–enrich–write–checkpoint loop of one shard.
//! - `prepare`: a batch's per-record work without the network ([`prepare()`]).

pub mod aws;
mod backoff;
pub mod checkpoint;
pub mod feed;
pub mod kpl;
pub mod lease;
mod prepare;
mod shard;
pub mod sink;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::Shard;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::enricher::Enricher;
use crate::metrics::Metrics;
use backoff::Backoff;
use checkpoint::{Checkpoint, CheckpointStore};
use feed::ShardStart;
use lease::{LeaseError, Leases};
pub use prepare::{PreparedBatch, prepare};
use shard::{ShardExit, Stop};

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
    /// The first record written at or after this time.
    Timestamp(SystemTime),
}

/// What `offerd run` needs besides the enricher.
pub struct RunConfig {
    pub input_stream: String,
    pub output_stream: String,
    /// Records that cannot be enriched, with the reason.
    pub dead_letter_stream: String,
    pub start_at: StartAt,
    /// Most records per batch (and per GetRecords call), at most 10,000.
    pub batch_size: usize,
    /// How long a shard gathers records before processing a batch smaller
    /// than `batch_size` (Lambda's MaximumBatchingWindowInSeconds). Zero
    /// processes whatever one GetRecords call returned.
    pub batch_window: Duration,
    /// Longest pause between GetRecords calls on a shard that keeps
    /// returning nothing (polling only).
    pub max_idle_poll: Duration,
    /// Read with enhanced fan-out through this consumer (registered if
    /// missing) instead of polling.
    pub consumer_name: Option<String>,
    /// How long a fan-out subscription is used before a fresh one is opened;
    /// the service ends each after 5 minutes.
    pub resubscribe_after: Duration,
    /// KPL aggregates of more user records are dead-lettered whole.
    pub max_aggregate_records: usize,
    /// How long throttled or failing writes of a batch are retried before
    /// its shard restarts from the checkpoint.
    pub put_retry_budget: Duration,
}

/// How often the shard list is read again, to pick up shards created by resharding.
const RELIST_EVERY: Duration = Duration::from_secs(10);
/// Pause before a failed shard is started again from its checkpoint; it
/// doubles (with jitter) on each failure in a row, up to [`MAX_RESTART_AFTER`].
const RESTART_AFTER: Duration = Duration::from_secs(1);
const MAX_RESTART_AFTER: Duration = Duration::from_secs(120);
/// A shard that ran this long before failing starts its backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// A shard reader running: since when, and how to stop it alone (its lease
/// was lost) or with the others (shutdown).
struct Running {
    since: Instant,
    stop: watch::Sender<Stop>,
    /// The lease acquisition it reads under (with leases).
    epoch: Option<u64>,
}

/// A shard that failed: when it may start again, and how long the pause
/// after its next failure will be.
struct Failed {
    restart_at: Instant,
    backoff: Backoff,
}

/// Runs until `shutdown` turns true, then lets every shard finish its batch,
/// write and checkpoint, and returns.
///
/// Shards are read concurrently. A child shard (from a split or merge) starts
/// only once its parents are drained and checkpointed at their end, so the
/// records of one partition key keep their order across resharding, and
/// reads from its first record: only shards listed at start-up, whose
/// parents have no checkpoint, start at `config.start_at`. A shard task that
/// fails is restarted from its checkpoint after a pause that grows with each
/// failure in a row.
///
/// With `leases`, only shards this worker holds a lease on are read: a shard
/// whose lease is lost stops, and at shutdown the leases are released once
/// every shard has checkpointed, for other workers to take at once.
///
/// # Errors
/// A stream does not exist or cannot be reached at start-up, or the lease
/// table cannot be written.
#[allow(clippy::too_many_lines)]
pub async fn run(
    client: Client,
    config: RunConfig,
    store: Arc<dyn CheckpointStore>,
    leases: Option<Arc<Leases>>,
    enricher: Arc<Enricher>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Fails start-up on a missing stream or unusable credentials.
    let mut shards = list_shards(&client, &config.input_stream).await?;
    for (what, stream) in [("output", &config.output_stream), ("dead-letter", &config.dead_letter_stream)] {
        client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws::explain(&e)))
            .with_context(|| format!("checking the {what} stream {stream:?}"))?;
    }
    let consumer_arn: Option<Arc<str>> = match &config.consumer_name {
        Some(name) => Some(feed::fan_out::consumer_arn(&client, &config.input_stream, name).await?.into()),
        None => None,
    };
    let sink: Arc<dyn sink::RecordSink> = Arc::new(sink::KinesisSink { client: client.clone() });
    // Shards listed at start-up without a checkpoint: the only ones
    // `start_at` applies to (with their children listed then too). `latest`
    // means from start-up: a shard that starts reading later (a child
    // waiting for its parents) must not skip what arrived meanwhile.
    let started_at = SystemTime::now();
    let initial: HashSet<String> = shards.iter().map(|s| s.shard_id().to_owned()).collect();
    let fresh: HashSet<String> = initial.iter().filter(|id| store.get(id).is_none()).cloned().collect();
    let (end_leases, lease_end) = watch::channel(false);
    let mut lease_changes = None;
    let mut maintainer = match &leases {
        Some(leases) => {
            leases.sync_shards(&shards, config.start_at).await?;
            lease_changes = Some(leases.subscribe());
            Some(tokio::spawn(leases.clone().maintain(shutdown.clone(), lease_end)))
        }
        None => None,
    };
    let mut tasks: JoinSet<(String, anyhow::Result<ShardExit>)> = JoinSet::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut drained: HashSet<String> = HashSet::new();
    let mut failed: HashMap<String, Failed> = HashMap::new();
    let mut next_list = Instant::now() + RELIST_EVERY;
    // A reader that returns at shutdown must not be started again.
    while !*shutdown.borrow() {
        let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
        for shard in &shards {
            let id = shard.shard_id();
            if running.contains_key(id)
                || drained.contains(id)
                || failed.get(id).is_some_and(|f| Instant::now() < f.restart_at)
            {
                continue;
            }
            if store.get(id) == Some(Checkpoint::ShardEnd) {
                drained.insert(id.to_owned());
                continue;
            }
            if leases.as_ref().is_some_and(|l| l.epoch(id).is_none() || l.handing_off(id)) {
                continue;
            }
            let parents: Vec<&str> =
                [shard.parent_shard_id(), shard.adjacent_parent_shard_id()].into_iter().flatten().collect();
            // A parent no longer listed has aged out of retention: nothing to
            // wait for. With leases, a child's lease is taken only once its
            // parents' leases are finished (or removed after that).
            if leases.is_none()
                && let Some(parent) = parents.iter().find(|p| listed.contains(**p) && !drained.contains(**p))
            {
                tracing::debug!(shard_id = id, parent, "waiting for the parent shard to drain");
                continue;
            }
            let start_at = if fresh.contains(id) && parents.iter().all(|p| fresh.contains(*p) || !initial.contains(*p))
            {
                match config.start_at {
                    StartAt::Latest => StartAt::Timestamp(started_at),
                    other => other,
                }
            } else {
                StartAt::TrimHorizon
            };
            tracing::info!(shard_id = id, ?start_at, "consuming shard");
            let start = ShardStart { store: store.clone(), shard_id: id.to_owned(), start_at };
            let (stop, stopped) = watch::channel(Stop::No);
            let (client, config, enricher, store, metrics, sink, consumer_arn) = (
                client.clone(),
                config.clone(),
                enricher.clone(),
                store.clone(),
                metrics.clone(),
                sink.clone(),
                consumer_arn.clone(),
            );
            let shard_id = id.to_owned();
            let epoch = leases.as_ref().and_then(|l| l.epoch(id));
            metrics.shard_started(id);
            tasks.spawn(async move {
                let feed: Box<dyn feed::Feed> = match consumer_arn {
                    None => match feed::polling::Polling::open(
                        client,
                        config.input_stream.clone(),
                        start,
                        config.max_idle_poll,
                    )
                    .await
                    {
                        Ok(polling) => Box::new(polling),
                        Err(e) => return (shard_id, Err(e)),
                    },
                    Some(arn) => Box::new(feed::fan_out::FanOut::new(
                        client,
                        config.input_stream.clone(),
                        arn,
                        start,
                        metrics.clone(),
                        config.resubscribe_after,
                    )),
                };
                let reader = shard::ShardReader {
                    sink,
                    config,
                    enricher,
                    store,
                    metrics,
                    shard_id: shard_id.clone(),
                    epoch,
                    stop: stopped,
                };
                (shard_id, reader.run(feed).await)
            });
            running.insert(id.to_owned(), Running { since: Instant::now(), stop, epoch });
        }
        if let Some(leases) = &leases {
            for (id, shard) in &running {
                let asked = *shard.stop.borrow();
                if leases.epoch(id) != shard.epoch {
                    if asked != Stop::Now {
                        tracing::info!(shard_id = id, "lease lost (or taken again since): stopping the shard now");
                    }
                    Stop::ask(&shard.stop, Stop::Now);
                } else if leases.handing_off(id) && asked == Stop::No {
                    tracing::info!(shard_id = id, "handing the lease over: stopping after the batch in flight");
                    Stop::ask(&shard.stop, Stop::AfterBatch);
                }
            }
            // Stopped and checkpointed (or never started): over to the worker that asked.
            for id in leases.handoffs() {
                if !running.contains_key(&id) {
                    leases.hand_over(&id).await;
                }
            }
        }
        metrics.set_ready(true);
        let lease_changed = async {
            match &mut lease_changes {
                Some(changes) => changes.changed().await,
                None => std::future::pending().await,
            }
        };
        let maintainer_ended = async {
            match &mut maintainer {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next_list.into()) => {}
            Ok(()) = lease_changed => continue,
            ended = maintainer_ended => {
                // Unrenewed leases would be taken by others while the shards
                // here go on: stop everything.
                for shard in running.values() {
                    Stop::ask(&shard.stop, Stop::Now);
                }
                anyhow::bail!("the lease maintenance task ended ({ended:?}); stopping");
            }
            Some(joined) = tasks.join_next() => {
                let (shard_id, result) = joined.context("a shard task panicked")?;
                let ran = running.remove(&shard_id).map_or(Duration::ZERO, |r| r.since.elapsed());
                metrics.shard_stopped(&shard_id, matches!(result, Ok(ShardExit::Drained)));
                match result {
                    Ok(ShardExit::Drained) => {
                        failed.remove(&shard_id);
                        drained.insert(shard_id);
                        // Its children can start now, not at the next periodic listing.
                        next_list = Instant::now();
                    }
                    Ok(ShardExit::Stopped) => {}
                    Err(e) if e.chain().any(|c| matches!(c.downcast_ref(), Some(LeaseError::Lost(_)))) => {
                        tracing::warn!(shard_id, "the shard's lease was taken by another worker; its last batch stays uncheckpointed here");
                    }
                    Err(e) => {
                        let entry = failed.entry(shard_id.clone()).or_insert_with(|| Failed {
                            restart_at: Instant::now(),
                            backoff: Backoff::new(RESTART_AFTER, MAX_RESTART_AFTER),
                        });
                        if ran >= HEALTHY_RUN {
                            entry.backoff.reset();
                        }
                        let pause = entry.backoff.next_delay();
                        entry.restart_at = Instant::now() + pause;
                        metrics.shard_failed(&shard_id);
                        tracing::error!(
                            shard_id,
                            error = %format!("{e:#}"),
                            restart_in = ?pause,
                            "shard failed; restarting it from its checkpoint"
                        );
                        next_list = next_list.min(entry.restart_at);
                    }
                }
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        if Instant::now() >= next_list {
            match list_shards(&client, &config.input_stream).await {
                Ok(fresh) => shards = fresh,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "listing shards failed; keeping the last list"),
            }
            if let Some(leases) = &leases
                && let Err(e) = leases.sync_shards(&shards, config.start_at).await
            {
                tracing::warn!(error = %format!("{e:#}"), "creating leases of new shards failed; retrying at the next listing");
            }
            next_list = Instant::now() + RELIST_EVERY;
        }
    }
    metrics.set_ready(false);
    for shard in running.values() {
        Stop::ask(&shard.stop, Stop::AfterBatch);
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((shard_id, Err(e))) => {
                tracing::error!(shard_id, error = %format!("{e:#}"), "shard stopped with an error")
            }
            Err(e) => tracing::error!(error = %e, "shard task panicked"),
        }
    }
    if let (Some(leases), Some(maintainer)) = (leases, maintainer) {
        end_leases.send_replace(true);
        let _ = maintainer.await;
        leases.release_all().await;
    }
    Ok(())
}

/// Every shard of the stream (open and closed), following ListShards pages.
async fn list_shards(client: &Client, stream: &str) -> anyhow::Result<Vec<Shard>> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // A page token must be sent without the stream name.
        let request = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws::explain(&e)))
            .with_context(|| format!("listing the shards of {stream}"))?;
        shards.extend_from_slice(page.shards());
        match page.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok(shards),
        }
    }
}
