//! `offerd run`: consume a Kinesis stream, enrich, publish offers and dead
//! letters, checkpoint — at least once, in order per shard.
//!
//! # Layout
//! - [`aws`]: the one place AWS clients are built.
//! - [`checkpoint`]: the checkpoint-store seam and its crash-safe file store.
//! - [`sink`]: PutRecords with retry of the failed entries only.
//! - [`kpl`]: de-aggregation of records packed by the Kinesis Producer Library.
//! - `shard`: the read–enrich–write–checkpoint loop of one shard, and [`prepare`],
//!   its per-record work without the network.

pub mod aws;
pub mod checkpoint;
pub mod fan_out;
pub mod kpl;
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
use checkpoint::{Checkpoint, CheckpointStore};
use shard::ShardExit;
pub use shard::{PreparedBatch, prepare};

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
    /// Read with enhanced fan-out through this consumer (registered if
    /// missing) instead of polling.
    pub consumer_name: Option<String>,
    /// How long a fan-out subscription is used before a fresh one is opened;
    /// the service ends each after 5 minutes.
    pub resubscribe_after: Duration,
}

/// How often the shard list is read again, to pick up shards created by resharding.
const RELIST_EVERY: Duration = Duration::from_secs(10);
/// Pause before a failed shard is started again from its checkpoint.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true, then lets every shard finish its batch,
/// write and checkpoint, and returns.
///
/// Shards are read concurrently. A child shard (from a split or merge) starts
/// only once its parents are drained and checkpointed at their end, so the
/// records of one partition key keep their order across resharding. A shard
/// task that fails is restarted from its checkpoint.
///
/// # Errors
/// A stream does not exist or cannot be reached at start-up.
pub async fn run(
    client: Client,
    config: RunConfig,
    store: Arc<dyn CheckpointStore>,
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
        Some(name) => Some(fan_out::consumer_arn(&client, &config.input_stream, name).await?.into()),
        None => None,
    };
    let mut tasks: JoinSet<(String, anyhow::Result<ShardExit>)> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut drained: HashSet<String> = HashSet::new();
    // Shards that failed, and when they may start again.
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let mut next_list = Instant::now() + RELIST_EVERY;
    // A reader that returns at shutdown must not be started again.
    while !*shutdown.borrow() {
        let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
        for shard in &shards {
            let id = shard.shard_id();
            if running.contains(id) || drained.contains(id) || failed.get(id).is_some_and(|at| Instant::now() < *at) {
                continue;
            }
            if store.get(id) == Some(Checkpoint::ShardEnd) {
                drained.insert(id.to_owned());
                continue;
            }
            // A parent no longer listed has aged out of retention: nothing to wait for.
            let waiting_for = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .find(|p| listed.contains(p) && !drained.contains(*p));
            if let Some(parent) = waiting_for {
                tracing::debug!(shard_id = id, parent, "waiting for the parent shard to drain");
                continue;
            }
            tracing::info!(shard_id = id, "consuming shard");
            let reader = shard::ShardReader {
                client: client.clone(),
                config: config.clone(),
                enricher: enricher.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                shard_id: id.to_owned(),
                consumer_arn: consumer_arn.clone(),
                shutdown: shutdown.clone(),
            };
            let shard_id = id.to_owned();
            metrics.shard_started();
            tasks.spawn(async move { (shard_id, reader.run().await) });
            running.insert(id.to_owned());
        }
        metrics.set_ready(true);
        tokio::select! {
            _ = tokio::time::sleep_until(next_list.into()) => {}
            Some(joined) = tasks.join_next() => {
                let (shard_id, result) = joined.context("a shard task panicked")?;
                running.remove(&shard_id);
                metrics.shard_stopped(&shard_id);
                match result {
                    Ok(ShardExit::Drained) => {
                        drained.insert(shard_id);
                        // Its children can start now, not at the next periodic listing.
                        next_list = Instant::now();
                    }
                    Ok(ShardExit::Stopped) => {}
                    Err(e) => {
                        tracing::error!(shard_id, error = %format!("{e:#}"), "shard failed; restarting it from its checkpoint");
                        failed.insert(shard_id, Instant::now() + RESTART_AFTER);
                        next_list = next_list.min(Instant::now() + RESTART_AFTER);
                    }
                }
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        match list_shards(&client, &config.input_stream).await {
            Ok(fresh) => shards = fresh,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "listing shards failed; keeping the last list"),
        }
        next_list = Instant::now() + RELIST_EVERY;
    }
    metrics.set_ready(false);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((shard_id, Err(e))) => {
                tracing::error!(shard_id, error = %format!("{e:#}"), "shard stopped with an error")
            }
            Err(e) => tracing::error!(error = %e, "shard task panicked"),
        }
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
