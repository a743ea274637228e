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
use super::backoff::Backoff;
use super::checkpoint::{Checkpoint, CheckpointStore};
use super::feed::{Feed, Read};
use super::kpl;
use super::lease::LeaseError;
use super::prepare::{PreparedBatch, SourceId, dead_letter_key, prepare};
use super::sink::{self, Entry, PutError, RecordSink, Rejected};
use crate::engine::BatchBudget;
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
/// How long a checkpoint that fails (the store unreachable, throttled) is
/// retried in place before the shard fails and restarts from its last one.
/// Retrying in place repeats nothing: the batch is written once, and a
/// restart would write it again on every attempt.
const CHECKPOINT_RETRY_BUDGET: Duration = Duration::from_secs(120);
const CHECKPOINT_RETRY_FIRST: Duration = Duration::from_millis(100);
const CHECKPOINT_RETRY_MAX: Duration = Duration::from_secs(2);

/// What a shard reader is asked to do, by the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Stop {
    /// Keep reading.
    No,
    /// Shutdown, or the lease is being handed over: finish the batch in
    /// flight, write and checkpoint it, then return.
    AfterBatch,
    /// The lease was lost: another worker may be reading the shard from its
    /// checkpoint already, and writes these records in order. Nothing more
    /// is written here, so no offer comes out after a newer one for the same
    /// user.
    Now,
}

impl Stop {
    /// Asks `reader` to stop as `how`, unless it was asked for more already
    /// (a lost lease is never downgraded to a graceful stop).
    pub(super) fn ask(reader: &watch::Sender<Stop>, how: Stop) {
        reader.send_if_modified(|asked| {
            let raise = *asked < how;
            if raise {
                *asked = how;
            }
            raise
        });
    }
}

/// What became of a batch.
enum Batch {
    Checkpointed,
    /// The lease was lost, or writes were still failing [`SHUTDOWN_GRACE`]
    /// after shutdown.
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
    /// The lease acquisition the reader runs under (with leases); every
    /// checkpoint is written under it.
    pub epoch: Option<u64>,
    pub stop: watch::Receiver<Stop>,
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
            let stop = *self.stop.borrow();
            match stop {
                Stop::No => {}
                Stop::AfterBatch => {
                    if !pending.is_empty() {
                        self.process(pending).await?;
                    }
                    return Ok(ShardExit::Stopped);
                }
                Stop::Now => {
                    if !pending.is_empty() {
                        tracing::info!(
                            shard_id = self.shard_id,
                            records = pending.len(),
                            "lease lost: dropping records read but not written; the new owner writes them"
                        );
                    }
                    return Ok(ShardExit::Stopped);
                }
            }
            let room = self.config.batch_size - pending.len();
            let window = (!pending.is_empty()).then_some(window_closes);
            let mut stop = self.stop.clone();
            let woken = Box::pin(async move {
                match window {
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        _ = stop.changed() => {}
                    },
                    None => {
                        let _ = stop.changed().await;
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

    /// Makes `checkpoint` durable, off the async threads. A failure is
    /// retried in place for [`CHECKPOINT_RETRY_BUDGET`] (or
    /// [`SHUTDOWN_GRACE`] once a stop is asked for); a lost lease is not.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(CHECKPOINT_RETRY_FIRST, CHECKPOINT_RETRY_MAX);
        let mut deadline = Instant::now() + CHECKPOINT_RETRY_BUDGET;
        let mut stop = self.stop.clone();
        loop {
            let (store, shard_id, epoch, at) =
                (self.store.clone(), self.shard_id.clone(), self.epoch, checkpoint.clone());
            let written = tokio::task::spawn_blocking(move || store.set(&shard_id, epoch, &at))
                .await
                .context("checkpoint task panicked")?;
            let Err(e) = written else {
                self.metrics.checkpointed(&self.shard_id);
                return Ok(());
            };
            let lost = e.chain().any(|c| matches!(c.downcast_ref(), Some(LeaseError::Lost(_))));
            if *stop.borrow() != Stop::No {
                deadline = deadline.min(Instant::now() + SHUTDOWN_GRACE);
            }
            if lost || *stop.borrow() == Stop::Now || Instant::now() >= deadline {
                return Err(e);
            }
            tracing::warn!(shard_id = self.shard_id, error = %format!("{e:#}"), "checkpointing failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.wait_for(|s| *s == Stop::Now) => {}
            }
        }
    }

    /// Processes a batch in chunks of at most [`MAX_USER_RECORDS`] user records.
    async fn process(&self, mut records: Vec<Record>) -> anyhow::Result<Batch> {
        // One budget for failing modules across the batch's chunks.
        let budget = Arc::new(BatchBudget::start());
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
            if let Batch::Abandoned = self.process_chunk(records, budget.clone()).await? {
                return Ok(Batch::Abandoned);
            }
            records = rest;
        }
        Ok(Batch::Checkpointed)
    }

    /// Enrich, publish both streams, then checkpoint the chunk's last record.
    async fn process_chunk(&self, records: Vec<Record>, budget: Arc<BatchBudget>) -> anyhow::Result<Batch> {
        let started = Instant::now();
        let last = records.last().expect("process is called with records").sequence_number().to_owned();
        let (enricher, shard_id) = (self.enricher.clone(), self.shard_id.clone());
        let max_aggregate = self.config.max_aggregate_records;
        let (prepared, records) = tokio::task::spawn_blocking(move || {
            let prepared = prepare(&enricher, &shard_id, &records, max_aggregate, &budget);
            (prepared, records)
        })
        .await
        .context("the enrichment task panicked")?;
        let (n_offers, n_dead) = (prepared.offers.len(), prepared.dead_letters.len());
        if *self.stop.borrow() == Stop::Now {
            return Ok(Batch::Abandoned);
        }
        let mut stop = self.stop.clone();
        let give_up = async move {
            let _ = stop.wait_for(|s| *s != Stop::No).await;
            tokio::select! {
                () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
                _ = stop.wait_for(|s| *s == Stop::Now) => {}
            }
        };
        let mut reasons = prepared.dead_letter_reasons.clone();
        tokio::select! {
            published = self.publish(&prepared, &records) => reasons.extend(published?),
            () = give_up => {
                tracing::warn!(
                    shard_id = self.shard_id,
                    offers = n_offers,
                    dead_letters = n_dead,
                    "lease lost, or writes still failing at shutdown: the batch stays uncheckpointed here, to be read again"
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
