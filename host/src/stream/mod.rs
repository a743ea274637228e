//! `offerd run`: consume a Kinesis stream, enrich, publish offers and dead
//! letters, checkpoint — at least once, in order per shard.
//!
//! # Layout
//! - [`aws`]: the one place AWS clients are built.
//! - [`checkpoint`]: the checkpoint-store seam and its crash-safe file store.
//! - [`sink`]: PutRecords with retry of the failed entries only.
//! - `shard`: the read–enrich–write–checkpoint loop of one shard.

pub mod aws;
pub mod checkpoint;
mod shard;
pub mod sink;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_kinesis::Client;
use tokio::sync::watch;

use crate::enricher::Enricher;
use checkpoint::CheckpointStore;

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
}

/// What `offerd run` needs besides the enricher.
pub struct RunConfig {
    pub input_stream: String,
    pub output_stream: String,
    /// Records that cannot be enriched, with the reason.
    pub dead_letter_stream: String,
    pub checkpoints: PathBuf,
    pub start_at: StartAt,
    /// Most records per GetRecords call, hence per batch.
    pub batch_size: i32,
}

/// How often the shard list is read again, to pick up shards created by resharding.
const RELIST_EVERY: Duration = Duration::from_secs(10);

/// Runs until `shutdown` turns true, then lets every shard finish its batch,
/// write and checkpoint, and returns.
///
/// # Errors
/// The checkpoint store cannot be opened or the input stream cannot be listed.
pub async fn run(
    client: Client,
    config: RunConfig,
    enricher: Arc<Enricher>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let store: Arc<dyn CheckpointStore> = Arc::new(
        checkpoint::FileCheckpoints::open(&config.checkpoints, &config.input_stream)
            .with_context(|| format!("opening checkpoints {}", config.checkpoints.display()))?,
    );
    let config = Arc::new(config);
    let mut running = std::collections::HashMap::new();
    loop {
        let shards = list_shards(&client, &config.input_stream).await?;
        for shard_id in shards {
            if running.contains_key(&shard_id) {
                continue;
            }
            tracing::info!(shard_id, "consuming shard");
            let task = shard::ShardReader {
                client: client.clone(),
                config: config.clone(),
                enricher: enricher.clone(),
                store: store.clone(),
                shard_id: shard_id.clone(),
                shutdown: shutdown.clone(),
            };
            running.insert(shard_id, tokio::spawn(task.run()));
        }
        tokio::select! {
            _ = tokio::time::sleep(RELIST_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    for (shard_id, task) in running {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(shard_id, error = %format!("{e:#}"), "shard stopped with an error"),
            Err(e) => tracing::error!(shard_id, error = %e, "shard task panicked"),
        }
    }
    Ok(())
}

/// Every shard id of the stream, following ListShards pages.
async fn list_shards(client: &Client, stream: &str) -> anyhow::Result<Vec<String>> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // A page token must be sent without the stream name.
        let request = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await.with_context(|| format!("listing the shards of {stream}"))?;
        shards.extend(page.shards().iter().map(|s| s.shard_id().to_owned()));
        match page.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok(shards),
        }
    }
}
