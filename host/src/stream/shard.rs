//! One shard's loop: read a batch, enrich it off the async threads, publish
//! offers and dead letters, and only then checkpoint. In order, at least once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use tokio::sync::watch;

use super::checkpoint::{Checkpoint, CheckpointStore};
use super::sink::{self, Entry};
use super::{RunConfig, StartAt};
use crate::enricher::{Enricher, Outcome};
use crate::metrics::Metrics;

/// Kinesis allows five GetRecords calls per second per shard.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause after an empty read: bounds the put → output latency when idle.
const IDLE_PAUSE: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a batch may keep retrying its writes after shutdown is asked
/// for. Past it the batch is abandoned unacknowledged and uncheckpointed: it
/// is read again on the next start, so nothing is lost.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What became of a batch.
enum Batch {
    Checkpointed,
    /// Writes still failing [`SHUTDOWN_GRACE`] after shutdown.
    Abandoned,
}

/// Why a shard reader returned without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ShardExit {
    /// The shard is closed and every record of it is published and
    /// checkpointed: its children may start.
    Drained,
    /// Shutdown was asked for; the last batch is checkpointed.
    Stopped,
}

pub(super) struct ShardReader {
    pub client: Client,
    pub config: Arc<RunConfig>,
    pub enricher: Arc<Enricher>,
    pub store: Arc<dyn CheckpointStore>,
    pub metrics: Arc<Metrics>,
    pub shard_id: String,
    pub shutdown: watch::Receiver<bool>,
}

impl ShardReader {
    /// Reads until shutdown or until the shard is closed and drained.
    ///
    /// # Errors
    /// A batch that cannot be published or checkpointed: the shard stops
    /// rather than skip records, and is restarted from its checkpoint.
    pub async fn run(mut self) -> anyhow::Result<ShardExit> {
        let Some(mut iterator) = self.iterator().await? else {
            return Ok(ShardExit::Drained);
        };
        let mut backoff = FIRST_BACKOFF;
        // Records read but not yet processed, while a batch window is open.
        let mut pending: Vec<Record> = Vec::new();
        let mut window_opened = Instant::now();
        loop {
            if *self.shutdown.borrow() {
                if !pending.is_empty() {
                    self.process(&pending).await?;
                }
                return Ok(ShardExit::Stopped);
            }
            let started = Instant::now();
            let room = self.config.batch_size - pending.len();
            let request = self.client.get_records().shard_iterator(&iterator).limit(room as i32);
            let out = match request.send().await {
                Ok(out) => out,
                Err(e) => {
                    if e.as_service_error().is_some_and(|s| s.is_expired_iterator_exception()) {
                        tracing::info!(shard_id = self.shard_id, "iterator expired; renewing from the checkpoint");
                        // Records read since the checkpoint are read again.
                        pending.clear();
                        match self.iterator().await? {
                            Some(renewed) => iterator = renewed,
                            None => return Ok(ShardExit::Drained),
                        }
                    } else {
                        let error = super::aws::explain(&e);
                        tracing::warn!(shard_id = self.shard_id, %error, "GetRecords failed; backing off");
                        backoff = sink::sleep_backoff(backoff).await;
                    }
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            let got = out.records().len();
            self.metrics.read(&self.shard_id, got, out.millis_behind_latest());
            if pending.is_empty() {
                window_opened = Instant::now();
            }
            pending.extend_from_slice(out.records());
            let closed = out.next_shard_iterator().is_none();
            let window_over = window_opened.elapsed() >= self.config.batch_window;
            if !pending.is_empty() && (closed || window_over || pending.len() >= self.config.batch_size) {
                if let Batch::Abandoned = self.process(&pending).await? {
                    return Ok(ShardExit::Stopped);
                }
                pending.clear();
            }
            let Some(next) = out.next_shard_iterator() else {
                self.checkpoint(Checkpoint::ShardEnd).await?;
                tracing::info!(shard_id = self.shard_id, "shard closed and drained");
                return Ok(ShardExit::Drained);
            };
            iterator = next.to_owned();
            let wait = if got == 0 && pending.is_empty() {
                IDLE_PAUSE
            } else {
                MIN_CALL_INTERVAL.saturating_sub(started.elapsed())
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// An iterator just after the checkpoint, or at the configured start;
    /// none if the shard was already read to its end.
    async fn iterator(&self) -> anyhow::Result<Option<String>> {
        let request = self.client.get_shard_iterator().stream_name(&self.config.input_stream).shard_id(&self.shard_id);
        let request = match self.store.get(&self.shard_id) {
            Some(Checkpoint::ShardEnd) => return Ok(None),
            Some(Checkpoint::At(seq)) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
            }
            None => match self.config.start_at {
                StartAt::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
                StartAt::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
                StartAt::Timestamp(t) => {
                    request.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(t.into())
                }
            },
        };
        let out = request.send().await.with_context(|| format!("getting an iterator for {}", self.shard_id))?;
        out.shard_iterator().map(|it| Some(it.to_owned())).context("GetShardIterator returned no iterator")
    }

    /// Makes `checkpoint` durable, off the async threads.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        let (store, shard_id) = (self.store.clone(), self.shard_id.clone());
        tokio::task::spawn_blocking(move || store.set(&shard_id, &checkpoint))
            .await
            .context("checkpoint task panicked")?
    }

    /// Enrich, publish both streams, then checkpoint the batch's last record.
    async fn process(&self, records: &[Record]) -> anyhow::Result<Batch> {
        let started = Instant::now();
        let inputs: Vec<Vec<u8>> = records.iter().map(|r| r.data().as_ref().to_vec()).collect();
        let enricher = self.enricher.clone();
        let enriched = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            enricher.enrich(&refs)
        })
        .await
        .context("the enrichment task panicked")?;
        let (mut offers, mut dead, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        for (record, outcome) in records.iter().zip(enriched.outcomes) {
            let seq = record.sequence_number();
            match outcome {
                Outcome::Offer { user_id, line } => {
                    offers.push(Entry { partition_key: user_id, data: with_source(line, &self.shard_id, seq) })
                }
                Outcome::DeadLetter { line, reason } => {
                    reasons.push(reason.as_str());
                    dead.push(Entry {
                        partition_key: record.partition_key().unwrap_or(&self.shard_id).to_owned(),
                        data: with_source(line, &self.shard_id, seq),
                    })
                }
            }
        }
        let (n_offers, n_dead) = (offers.len(), dead.len());
        let publish = async {
            let (o, d) = tokio::join!(
                sink::put_all(&self.client, &self.config.output_stream, offers),
                sink::put_all(&self.client, &self.config.dead_letter_stream, dead),
            );
            o.and(d)
        };
        let mut shutdown = self.shutdown.clone();
        let give_up = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            published = publish => published?,
            () = give_up => {
                tracing::warn!(
                    shard_id = self.shard_id,
                    records = records.len(),
                    "writes still failing at shutdown; the batch stays uncheckpointed and is read again on restart"
                );
                return Ok(Batch::Abandoned);
            }
        }
        let last = records.last().expect("process is called with records").sequence_number().to_owned();
        self.checkpoint(Checkpoint::At(last)).await?;
        self.metrics.batch_done(&enriched.by_region, &reasons, started.elapsed().as_secs_f64());
        tracing::debug!(shard_id = self.shard_id, offers = n_offers, dead_letters = n_dead, "batch done");
        Ok(Batch::Checkpointed)
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
