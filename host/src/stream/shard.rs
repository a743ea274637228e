//! One shard's loop: read a batch, enrich it off the async threads, publish
//! offers and dead letters, and only then checkpoint. In order, at least once.
//! Records come from a [`Feed`] and go to a [`RecordSink`], so the loop is
//! tested with scripted faults on both sides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::types::Record;
use tokio::sync::watch;

use super::RunConfig;
use super::checkpoint::{Checkpoint, CheckpointStore};
use super::feed::{Feed, Read};
use super::kpl;
use super::prepare::{PreparedBatch, SourceId, dead_letter_key, prepare};
use super::sink::{self, Entry, PutError, RecordSink, Rejected};
use crate::enricher::Enricher;
use crate::metrics::Metrics;
use crate::record::{self, Reason};

/// How long a batch may keep retrying its writes after shutdown is asked
/// for. Past it the batch is abandoned unacknowledged and uncheckpointed: it
/// is read again on the next start, so nothing is lost.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A batch is processed once its records hold this many bytes, whatever
/// its record count: a batch of 10,000 records of 1 MiB each must not sit in
/// memory. (One GetRecords call returns at most 10 MiB.)
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most user records enriched and published at once. A batch of KPL
/// aggregates can hold far more user records than Kinesis records (an empty
/// user record takes 6 bytes of an aggregate, its dead letter hundreds), so
/// a batch is processed in chunks of whole Kinesis records, each checkpointed.
const MAX_USER_RECORDS: usize = 10_000;

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
    pub sink: Arc<dyn RecordSink>,
    pub config: Arc<RunConfig>,
    pub enricher: Arc<Enricher>,
    pub store: Arc<dyn CheckpointStore>,
    pub metrics: Arc<Metrics>,
    pub shard_id: String,
    pub shutdown: watch::Receiver<bool>,
}

impl ShardReader {
    /// Reads `feed` until shutdown or until the shard is closed and drained.
    ///
    /// # Errors
    /// A batch that cannot be published or checkpointed: the shard stops
    /// rather than skip records, and is restarted from its checkpoint.
    pub async fn run(self, mut feed: Box<dyn Feed>) -> anyhow::Result<ShardExit> {
        // Records read but not yet processed, while a batch window is open.
        let mut pending: Vec<Record> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut window_closes = Instant::now();
        loop {
            if *self.shutdown.borrow() {
                if !pending.is_empty() {
                    self.process(pending).await?;
                }
                return Ok(ShardExit::Stopped);
            }
            let room = self.config.batch_size - pending.len();
            let window = (!pending.is_empty()).then_some(window_closes);
            let mut shutdown = self.shutdown.clone();
            let woken = Box::pin(async move {
                match window {
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        _ = shutdown.changed() => {}
                    },
                    None => {
                        let _ = shutdown.changed().await;
                    }
                }
            });
            let (mut records, millis_behind_latest, closed) = match feed.read(room, woken).await? {
                Read::Records { records, millis_behind_latest, closed } => (records, millis_behind_latest, closed),
                Read::Nothing => (Vec::new(), None, false),
                Read::Rewound => {
                    pending.clear();
                    pending_bytes = 0;
                    continue;
                }
            };
            self.metrics.read(&self.shard_id, records.len(), millis_behind_latest);
            if pending.is_empty() {
                window_closes = Instant::now() + self.config.batch_window;
            }
            pending_bytes += records.iter().map(|r| r.data().as_ref().len()).sum::<usize>();
            pending.append(&mut records);
            let full = closed
                || Instant::now() >= window_closes
                || pending.len() >= self.config.batch_size
                || pending_bytes >= MAX_BATCH_BYTES;
            if full && !pending.is_empty() {
                pending_bytes = 0;
                if let Batch::Abandoned = self.process(std::mem::take(&mut pending)).await? {
                    return Ok(ShardExit::Stopped);
                }
            }
            if closed {
                self.checkpoint(Checkpoint::ShardEnd).await?;
                tracing::info!(shard_id = self.shard_id, "shard closed and drained");
                return Ok(ShardExit::Drained);
            }
        }
    }

    /// Makes `checkpoint` durable, off the async threads.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        let (store, shard_id) = (self.store.clone(), self.shard_id.clone());
        tokio::task::spawn_blocking(move || store.set(&shard_id, &checkpoint))
            .await
            .context("checkpoint task panicked")??;
        self.metrics.checkpointed(&self.shard_id);
        Ok(())
    }

    /// Processes a batch in chunks of at most [`MAX_USER_RECORDS`] user records.
    async fn process(&self, mut records: Vec<Record>) -> anyhow::Result<Batch> {
        while !records.is_empty() {
            let max = self.config.max_aggregate_records;
            let mut users = 0;
            let take = records
                .iter()
                .take_while(|r| {
                    users += kpl::count(r.data().as_ref(), max);
                    users <= MAX_USER_RECORDS
                })
                .count()
                .max(1);
            let rest = records.split_off(take);
            if let Batch::Abandoned = self.process_chunk(records).await? {
                return Ok(Batch::Abandoned);
            }
            records = rest;
        }
        Ok(Batch::Checkpointed)
    }

    /// Enrich, publish both streams, then checkpoint the chunk's last record.
    async fn process_chunk(&self, records: Vec<Record>) -> anyhow::Result<Batch> {
        let started = Instant::now();
        let last = records.last().expect("process is called with records").sequence_number().to_owned();
        let (enricher, shard_id) = (self.enricher.clone(), self.shard_id.clone());
        let max_aggregate = self.config.max_aggregate_records;
        let (prepared, records) = tokio::task::spawn_blocking(move || {
            let prepared = prepare(&enricher, &shard_id, &records, max_aggregate);
            (prepared, records)
        })
        .await
        .context("the enrichment task panicked")?;
        let (n_offers, n_dead) = (prepared.offers.len(), prepared.dead_letters.len());
        let mut shutdown = self.shutdown.clone();
        let give_up = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let mut reasons = prepared.dead_letter_reasons.clone();
        tokio::select! {
            published = self.publish(&prepared, &records) => reasons.extend(published?),
            () = give_up => {
                tracing::warn!(
                    shard_id = self.shard_id,
                    offers = n_offers,
                    dead_letters = n_dead,
                    "writes still failing at shutdown; the batch stays uncheckpointed and is read again on restart"
                );
                return Ok(Batch::Abandoned);
            }
        }
        self.checkpoint(Checkpoint::At(last)).await?;
        self.metrics.batch_done(&prepared.by_region, &reasons, started.elapsed().as_secs_f64());
        tracing::debug!(shard_id = self.shard_id, offers = n_offers, dead_letters = n_dead, "batch done");
        Ok(Batch::Checkpointed)
    }

    /// Writes a prepared batch: offers and dead letters at once, then a
    /// small `output-rejected` dead letter for every entry Kinesis refused
    /// for good. Returns the reasons of those extra dead letters.
    async fn publish(&self, batch: &PreparedBatch, records: &[Record]) -> Result<Vec<&'static str>, PutError> {
        let (sink, config, metrics) = (&*self.sink, &self.config, &*self.metrics);
        let budget = config.put_retry_budget;
        let (offers, dead) = tokio::join!(
            sink::put_all(sink, &config.output_stream, &batch.offers, budget, metrics),
            sink::put_all(sink, &config.dead_letter_stream, &batch.dead_letters, budget, metrics),
        );
        let (offers, dead) = (offers?, dead?);
        if offers.is_empty() && dead.is_empty() {
            return Ok(Vec::new());
        }
        let letter = |entries: &[Entry], sources: &[SourceId], what: &str, r: &Rejected| {
            let source = sources[r.index].resolve(&self.shard_id, records);
            let refused = &entries[r.index];
            let detail = format!("Kinesis refused the {what} ({} bytes): {}", refused.data.len(), r.reason);
            tracing::warn!(shard_id = self.shard_id, sequence_number = source.sequence_number, %detail, "output refused");
            let mut data = Vec::new();
            record::write_output_rejected(&mut data, &detail, &source);
            Entry { partition_key: dead_letter_key(&source), data }
        };
        let letters: Vec<Entry> = offers
            .iter()
            .map(|r| letter(&batch.offers, &batch.offer_sources, "offer record", r))
            .chain(dead.iter().map(|r| letter(&batch.dead_letters, &batch.dead_letter_sources, "dead letter", r)))
            .collect();
        let lost = sink::put_all(sink, &config.dead_letter_stream, &letters, budget, metrics).await?;
        for r in &lost {
            tracing::error!(
                shard_id = self.shard_id,
                reason = r.reason,
                "Kinesis refused even the small output-rejected dead letter; the record's outcome is only in this log"
            );
        }
        Ok(vec![Reason::OutputRejected.as_str(); letters.len() - lost.len()])
    }
}

#[cfg(test)]
mod tests;
