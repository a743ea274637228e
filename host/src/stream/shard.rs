//! One shard's loop: read a batch, enrich it off the async threads, publish
//! offers and dead letters, and only then checkpoint. In order, at least once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use tokio::sync::watch;

use super::checkpoint::CheckpointStore;
use super::sink::{self, Entry};
use super::{RunConfig, StartAt};
use crate::enricher::{Enricher, Outcome};

/// Kinesis allows five GetRecords calls per second per shard.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause after an empty read: bounds the put → output latency when idle.
const IDLE_PAUSE: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub(super) struct ShardReader {
    pub client: Client,
    pub config: Arc<RunConfig>,
    pub enricher: Arc<Enricher>,
    pub store: Arc<dyn CheckpointStore>,
    pub shard_id: String,
    pub shutdown: watch::Receiver<bool>,
}

impl ShardReader {
    /// Reads until shutdown or until the shard is closed and drained.
    ///
    /// # Errors
    /// A batch that cannot be published or checkpointed: the shard stops
    /// rather than skip records.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut iterator = self.iterator().await?;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let request = self.client.get_records().shard_iterator(&iterator).limit(self.config.batch_size);
            let out = match request.send().await {
                Ok(out) => out,
                Err(e) => {
                    if e.as_service_error().is_some_and(|s| s.is_expired_iterator_exception()) {
                        tracing::info!(shard_id = self.shard_id, "iterator expired; renewing from the checkpoint");
                        iterator = self.iterator().await?;
                    } else {
                        let error = aws_sdk_kinesis::error::DisplayErrorContext(&e);
                        tracing::warn!(shard_id = self.shard_id, %error, "GetRecords failed; backing off");
                        backoff = sink::sleep_backoff(backoff).await;
                    }
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            if !out.records().is_empty() {
                self.process(out.records()).await?;
            }
            let Some(next) = out.next_shard_iterator() else {
                tracing::info!(shard_id = self.shard_id, "shard closed and drained");
                return Ok(());
            };
            iterator = next.to_owned();
            let wait =
                if out.records().is_empty() { IDLE_PAUSE } else { MIN_CALL_INTERVAL.saturating_sub(started.elapsed()) };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// An iterator just after the checkpoint, or at the configured start.
    async fn iterator(&self) -> anyhow::Result<String> {
        let request = self.client.get_shard_iterator().stream_name(&self.config.input_stream).shard_id(&self.shard_id);
        let request = match self.store.get(&self.shard_id) {
            Some(seq) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
            }
            None => request.shard_iterator_type(match self.config.start_at {
                StartAt::TrimHorizon => ShardIteratorType::TrimHorizon,
                StartAt::Latest => ShardIteratorType::Latest,
            }),
        };
        let out = request.send().await.with_context(|| format!("getting an iterator for {}", self.shard_id))?;
        out.shard_iterator().map(str::to_owned).context("GetShardIterator returned no iterator")
    }

    /// Enrich, publish both streams, then checkpoint the batch's last record.
    async fn process(&self, records: &[Record]) -> anyhow::Result<()> {
        let inputs: Vec<Vec<u8>> = records.iter().map(|r| r.data().as_ref().to_vec()).collect();
        let enricher = self.enricher.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            enricher.enrich(&refs)
        })
        .await
        .context("the enrichment task panicked")?;
        let (mut offers, mut dead) = (Vec::new(), Vec::new());
        for (record, outcome) in records.iter().zip(outcomes) {
            let seq = record.sequence_number();
            match outcome {
                Outcome::Offer { user_id, line } => {
                    offers.push(Entry { partition_key: user_id, data: with_source(line, &self.shard_id, seq) })
                }
                Outcome::DeadLetter { line, .. } => dead.push(Entry {
                    partition_key: record.partition_key().unwrap_or(&self.shard_id).to_owned(),
                    data: with_source(line, &self.shard_id, seq),
                }),
            }
        }
        let (n_offers, n_dead) = (offers.len(), dead.len());
        let (o, d) = tokio::join!(
            sink::put_all(&self.client, &self.config.output_stream, offers),
            sink::put_all(&self.client, &self.config.dead_letter_stream, dead),
        );
        o?;
        d?;
        let last = records.last().expect("process is called with records").sequence_number().to_owned();
        let (store, shard_id) = (self.store.clone(), self.shard_id.clone());
        tokio::task::spawn_blocking(move || store.set(&shard_id, &last))
            .await
            .context("checkpoint task panicked")??;
        tracing::debug!(shard_id = self.shard_id, offers = n_offers, dead_letters = n_dead, "batch done");
        Ok(())
    }
}

/// Adds `"source": {"shard_id", "sequence_number"}` to a JSON object line, so
/// consumers can de-duplicate what at-least-once delivery repeats.
fn with_source(mut line: Vec<u8>, shard_id: &str, sequence_number: &str) -> Vec<u8> {
    debug_assert_eq!(line.last(), Some(&b'}'), "outcomes are JSON objects");
    line.pop();
    line.extend_from_slice(br#","source":{"shard_id":"#);
    serde_json::to_writer(&mut line, shard_id).expect("writing to a Vec cannot fail");
    line.extend_from_slice(br#","sequence_number":"#);
    serde_json::to_writer(&mut line, sequence_number).expect("writing to a Vec cannot fail");
    line.extend_from_slice(b"}}");
    line
}
