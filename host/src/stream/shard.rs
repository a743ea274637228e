//! One shard's loop: read a batch, enrich it off the async threads, publish
//! offers and dead letters, and only then checkpoint. In order, at least once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput;
use aws_sdk_kinesis::types::{Record, ShardIteratorType, SubscribeToShardEventStream};
use tokio::sync::watch;

use super::checkpoint::{Checkpoint, CheckpointStore};
use super::kpl::{self, Unpacked};
use super::sink::{self, Entry};
use super::{RunConfig, StartAt};
use crate::enricher::{Enricher, Outcome, RegionTally};
use crate::metrics::Metrics;
use crate::record::{self, Reason};

/// Kinesis allows five GetRecords calls per second per shard.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause after an empty read: bounds the put → output latency when idle.
const IDLE_PAUSE: Duration = Duration::from_millis(250);
/// How often a caught-up fan-out reader checks whether its shard ended; see
/// [`ShardReader::ended_after`].
const CHECK_END_EVERY: Duration = Duration::from_secs(5);
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
    /// Read with SubscribeToShard through this consumer; poll if `None`.
    pub consumer_arn: Option<Arc<str>>,
    pub shutdown: watch::Receiver<bool>,
}

/// Where reading starts: after a checkpoint (or, with fan-out, after the last
/// continuation sequence number), or where the configuration says.
pub(super) enum Position {
    After(String),
    TrimHorizon,
    Latest,
    Timestamp(SystemTime),
}

/// How records reach a shard reader.
enum Feed {
    Polling {
        iterator: String,
        next_call: Instant,
    },
    FanOut {
        consumer_arn: Arc<str>,
        subscription: Option<Box<Subscription>>,
        /// Where the next subscription resumes: the last event's
        /// continuation sequence number, which covers every record received
        /// (processed or still pending in a batch window).
        resume_after: Option<String>,
        /// When the shard was last checked for having ended; see
        /// [`ShardReader::ended_after`].
        checked_end: Instant,
    },
}

struct Subscription {
    /// Holds the event stream (the SDK does not export its type).
    call: SubscribeToShardOutput,
    opened: Instant,
    /// Whether an event arrived: the service refuses a subscription (another
    /// one still active) through the event stream, not the call.
    confirmed: bool,
}

/// What one read brought.
enum Read {
    Records {
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        closed: bool,
    },
    /// Nothing this time: backed off, re-subscribed, or woken for shutdown
    /// or the end of a batch window.
    Nothing,
    /// The iterator expired and was renewed from the checkpoint: records read
    /// since then will come again, so the pending ones must be dropped.
    Rewound,
}

impl ShardReader {
    /// Reads until shutdown or until the shard is closed and drained.
    ///
    /// # Errors
    /// A batch that cannot be published or checkpointed: the shard stops
    /// rather than skip records, and is restarted from its checkpoint.
    pub async fn run(self) -> anyhow::Result<ShardExit> {
        let mut feed = match &self.consumer_arn {
            None => Feed::Polling { iterator: self.iterator().await?, next_call: Instant::now() },
            Some(arn) => Feed::FanOut {
                consumer_arn: arn.clone(),
                subscription: None,
                resume_after: None,
                checked_end: Instant::now(),
            },
        };
        // Records read but not yet processed, while a batch window is open.
        let mut pending: Vec<Record> = Vec::new();
        let mut window_closes = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *self.shutdown.borrow() {
                if !pending.is_empty() {
                    self.process(pending).await?;
                }
                return Ok(ShardExit::Stopped);
            }
            let room = self.config.batch_size - pending.len();
            let window = (!pending.is_empty()).then_some(window_closes);
            let (mut records, millis_behind_latest, closed) =
                match self.read(&mut feed, &mut backoff, room, window).await? {
                    Read::Records { records, millis_behind_latest, closed } => (records, millis_behind_latest, closed),
                    Read::Nothing => (Vec::new(), None, false),
                    Read::Rewound => {
                        pending.clear();
                        continue;
                    }
                };
            self.metrics.read(&self.shard_id, records.len(), millis_behind_latest);
            if pending.is_empty() {
                window_closes = Instant::now() + self.config.batch_window;
            }
            pending.append(&mut records);
            let full = closed || Instant::now() >= window_closes || pending.len() >= self.config.batch_size;
            if full
                && !pending.is_empty()
                && let Batch::Abandoned = self.process(std::mem::take(&mut pending)).await?
            {
                return Ok(ShardExit::Stopped);
            }
            if closed {
                self.checkpoint(Checkpoint::ShardEnd).await?;
                tracing::info!(shard_id = self.shard_id, "shard closed and drained");
                return Ok(ShardExit::Drained);
            }
        }
    }

    /// Reads at most `room` records (polling), waiting no later than
    /// `window` (the end of an open batch window) or shutdown.
    async fn read(
        &self,
        feed: &mut Feed,
        backoff: &mut Duration,
        room: usize,
        window: Option<Instant>,
    ) -> anyhow::Result<Read> {
        let mut shutdown = self.shutdown.clone();
        let woken = async move {
            match window {
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    _ = shutdown.changed() => {}
                },
                None => {
                    let _ = shutdown.changed().await;
                }
            }
        };
        match feed {
            Feed::Polling { iterator, next_call } => {
                tokio::select! {
                    () = tokio::time::sleep_until((*next_call).into()) => {}
                    () = woken => return Ok(Read::Nothing),
                }
                let started = Instant::now();
                let request = self.client.get_records().shard_iterator(&*iterator).limit(room as i32);
                match request.send().await {
                    Ok(mut out) => {
                        *backoff = FIRST_BACKOFF;
                        let records = std::mem::take(&mut out.records);
                        *next_call = if records.is_empty() && window.is_none() {
                            started + IDLE_PAUSE
                        } else {
                            started + MIN_CALL_INTERVAL
                        };
                        let closed = match out.next_shard_iterator {
                            Some(next) => {
                                *iterator = next;
                                false
                            }
                            None => true,
                        };
                        Ok(Read::Records { records, millis_behind_latest: out.millis_behind_latest, closed })
                    }
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_expired_iterator_exception()) => {
                        tracing::info!(shard_id = self.shard_id, "iterator expired; renewing from the checkpoint");
                        *iterator = self.iterator().await?;
                        Ok(Read::Rewound)
                    }
                    Err(e) => {
                        let error = super::aws::explain(&e);
                        tracing::warn!(shard_id = self.shard_id, %error, "GetRecords failed; backing off");
                        *backoff = sink::sleep_backoff(*backoff).await;
                        Ok(Read::Nothing)
                    }
                }
            }
            Feed::FanOut { consumer_arn, subscription, resume_after, checked_end } => {
                let lifetime = self.config.resubscribe_after;
                let current = match subscription {
                    Some(s) if s.opened.elapsed() < lifetime => s,
                    _ => {
                        *subscription = None;
                        let position = match resume_after {
                            Some(seq) => Position::After(seq.clone()),
                            None => self.start_position()?,
                        };
                        let request = self
                            .client
                            .subscribe_to_shard()
                            .consumer_arn(&**consumer_arn)
                            .shard_id(&self.shard_id)
                            .starting_position(super::fan_out::starting_position(&position));
                        match request.send().await {
                            Ok(out) => subscription.insert(Box::new(Subscription {
                                call: out,
                                opened: Instant::now(),
                                confirmed: false,
                            })),
                            Err(e) => {
                                let error = super::aws::explain(&e);
                                tracing::warn!(shard_id = self.shard_id, %error, "SubscribeToShard failed; backing off");
                                *backoff = sink::sleep_backoff(*backoff).await;
                                return Ok(Read::Nothing);
                            }
                        }
                    }
                };
                // Re-subscribe before the service ends the call at 5 minutes.
                let expires = current.opened + lifetime;
                let event = tokio::select! {
                    event = current.call.event_stream.recv() => event,
                    () = tokio::time::sleep_until(expires.into()) => return Ok(Read::Nothing),
                    () = woken => return Ok(Read::Nothing),
                };
                match event {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(mut event))) => {
                        *backoff = FIRST_BACKOFF;
                        if !current.confirmed {
                            current.confirmed = true;
                            tracing::debug!(shard_id = self.shard_id, "subscribed");
                            self.metrics.subscribed(&self.shard_id);
                        }
                        // The service sends a null continuation (read as
                        // empty) and the children once the shard is closed
                        // and every record of it has been sent.
                        let mut closed = event.continuation_sequence_number.is_empty()
                            || event.child_shards.as_ref().is_some_and(|c| !c.is_empty());
                        if !closed {
                            *resume_after = Some(std::mem::take(&mut event.continuation_sequence_number));
                        }
                        if !closed
                            && event.records.is_empty()
                            && checked_end.elapsed() >= CHECK_END_EVERY
                            && let Some(seq) = resume_after.as_deref()
                        {
                            *checked_end = Instant::now();
                            closed = self.ended_after(seq).await;
                        }
                        Ok(Read::Records {
                            records: std::mem::take(&mut event.records),
                            millis_behind_latest: Some(event.millis_behind_latest),
                            closed,
                        })
                    }
                    Ok(Some(_)) => Ok(Read::Nothing),
                    Ok(None) => {
                        tracing::debug!(shard_id = self.shard_id, "subscription ended; re-subscribing");
                        *subscription = None;
                        Ok(Read::Nothing)
                    }
                    Err(e) => {
                        let error = super::aws::explain(&e);
                        if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) {
                            // The subscription just replaced is not released
                            // yet (AWS: for up to 5 s).
                            tracing::debug!(shard_id = self.shard_id, %error, "previous subscription still active");
                        } else {
                            tracing::warn!(shard_id = self.shard_id, %error, "subscription failed; re-subscribing");
                        }
                        *subscription = None;
                        *backoff = sink::sleep_backoff(*backoff).await;
                        Ok(Read::Nothing)
                    }
                }
            }
        }
    }

    /// Whether the shard is closed with no record after `seq`, asked with
    /// GetRecords. Some Kinesis-compatible servers (kinesis-local among them)
    /// never send a closed shard's end on its subscription; AWS does, and
    /// then this is not reached. Called at most every [`CHECK_END_EVERY`],
    /// and only while the subscription is caught up.
    async fn ended_after(&self, seq: &str) -> bool {
        let iterator = self
            .client
            .get_shard_iterator()
            .stream_name(&self.config.input_stream)
            .shard_id(&self.shard_id)
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq)
            .send()
            .await;
        let Some(iterator) = iterator.ok().and_then(|out| out.shard_iterator) else {
            return false;
        };
        match self.client.get_records().shard_iterator(iterator).limit(1).send().await {
            Ok(out) => out.records.is_empty() && out.next_shard_iterator.is_none(),
            Err(_) => false,
        }
    }

    /// Just after the checkpoint, or the configured start.
    fn start_position(&self) -> anyhow::Result<Position> {
        Ok(match self.store.get(&self.shard_id) {
            // `run` never starts a reader on a shard read to its end.
            Some(Checkpoint::ShardEnd) => anyhow::bail!("{} is already read to its end", self.shard_id),
            Some(Checkpoint::At(seq)) => Position::After(seq),
            None => match self.config.start_at {
                StartAt::TrimHorizon => Position::TrimHorizon,
                StartAt::Latest => Position::Latest,
                StartAt::Timestamp(t) => Position::Timestamp(t),
            },
        })
    }

    /// A shard iterator at [`Self::start_position`].
    async fn iterator(&self) -> anyhow::Result<String> {
        let request = self.client.get_shard_iterator().stream_name(&self.config.input_stream).shard_id(&self.shard_id);
        let request = match self.start_position()? {
            Position::After(seq) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
            }
            Position::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Position::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            Position::Timestamp(t) => request.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(t.into()),
        };
        let out = request.send().await.with_context(|| format!("getting an iterator for {}", self.shard_id))?;
        out.shard_iterator().map(str::to_owned).context("GetShardIterator returned no iterator")
    }

    /// Makes `checkpoint` durable, off the async threads.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        let (store, shard_id) = (self.store.clone(), self.shard_id.clone());
        tokio::task::spawn_blocking(move || store.set(&shard_id, &checkpoint))
            .await
            .context("checkpoint task panicked")?
    }

    /// Enrich, publish both streams, then checkpoint the batch's last record.
    async fn process(&self, records: Vec<Record>) -> anyhow::Result<Batch> {
        let started = Instant::now();
        let last = records.last().expect("process is called with records").sequence_number().to_owned();
        let (enricher, shard_id) = (self.enricher.clone(), self.shard_id.clone());
        let prepared = tokio::task::spawn_blocking(move || prepare(&enricher, &shard_id, &records))
            .await
            .context("the enrichment task panicked")?;
        let PreparedBatch { offers, dead_letters: dead, dead_letter_reasons: reasons, by_region } = prepared;
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
                    offers = n_offers,
                    dead_letters = n_dead,
                    "writes still failing at shutdown; the batch stays uncheckpointed and is read again on restart"
                );
                return Ok(Batch::Abandoned);
            }
        }
        self.checkpoint(Checkpoint::At(last)).await?;
        self.metrics.batch_done(&by_region, &reasons, started.elapsed().as_secs_f64());
        tracing::debug!(shard_id = self.shard_id, offers = n_offers, dead_letters = n_dead, "batch done");
        Ok(Batch::Checkpointed)
    }
}

/// A batch ready to publish.
pub struct PreparedBatch {
    pub offers: Vec<Entry>,
    pub dead_letters: Vec<Entry>,
    /// One per dead letter, for metrics.
    pub dead_letter_reasons: Vec<&'static str>,
    pub by_region: Vec<RegionTally>,
}

/// Where one user record came from: a Kinesis record, or one record of a
/// KPL aggregate.
struct Source<'a> {
    data: &'a [u8],
    partition_key: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: Option<usize>,
}

/// The host's whole per-record work short of the network: de-aggregate,
/// enrich, and tag every output with its source. Outputs keep input order.
pub fn prepare(enricher: &Enricher, shard_id: &str, records: &[Record]) -> PreparedBatch {
    let unpacked: Vec<Unpacked> = records.iter().map(|r| kpl::unpack(r.data().as_ref())).collect();
    let mut batch = PreparedBatch {
        offers: Vec::with_capacity(records.len()),
        dead_letters: Vec::new(),
        dead_letter_reasons: Vec::new(),
        by_region: Vec::new(),
    };
    let mut sources: Vec<Source<'_>> = Vec::with_capacity(records.len());
    for (record, unpacked) in records.iter().zip(&unpacked) {
        let (sequence_number, partition_key) = (record.sequence_number(), record.partition_key().unwrap_or(shard_id));
        match unpacked {
            Unpacked::Plain => sources.push(Source {
                data: record.data().as_ref(),
                partition_key,
                sequence_number,
                sub_sequence_number: None,
            }),
            Unpacked::Aggregate(users) => {
                sources.extend(users.iter().enumerate().map(|(i, u)| Source {
                    data: &u.data,
                    partition_key: &u.partition_key,
                    sequence_number,
                    sub_sequence_number: Some(i),
                }));
            }
            Unpacked::Corrupt(why) => {
                let mut line = Vec::new();
                record::write_dead_letter(&mut line, Reason::InvalidRecord, why, None, record.data().as_ref());
                let source = Source { data: &[], partition_key, sequence_number, sub_sequence_number: None };
                batch.dead_letter_reasons.push(Reason::InvalidRecord.as_str());
                batch.dead_letters.push(Entry {
                    partition_key: partition_key.to_owned(),
                    data: with_source(line, shard_id, &source),
                });
            }
        }
    }
    let inputs: Vec<&[u8]> = sources.iter().map(|s| s.data).collect();
    let enriched = enricher.enrich(&inputs);
    for (source, outcome) in sources.iter().zip(enriched.outcomes) {
        match outcome {
            Outcome::Offer { user_id, line } => {
                batch.offers.push(Entry { partition_key: user_id, data: with_source(line, shard_id, source) })
            }
            Outcome::DeadLetter { line, reason } => {
                batch.dead_letter_reasons.push(reason.as_str());
                batch.dead_letters.push(Entry {
                    partition_key: source.partition_key.to_owned(),
                    data: with_source(line, shard_id, source),
                });
            }
        }
    }
    batch.by_region = enriched.by_region;
    batch
}

/// Adds `"source": {"shard_id", "sequence_number"[, "sub_sequence_number"]}`
/// to a JSON object line, so consumers can de-duplicate what at-least-once
/// delivery repeats.
fn with_source(mut line: Vec<u8>, shard_id: &str, source: &Source<'_>) -> Vec<u8> {
    debug_assert_eq!(line.last(), Some(&b'}'), "outcomes are JSON objects");
    line.pop();
    line.extend_from_slice(br#","source":{"shard_id":"#);
    serde_json::to_writer(&mut line, shard_id).expect("writing to a Vec cannot fail");
    line.extend_from_slice(br#","sequence_number":"#);
    serde_json::to_writer(&mut line, source.sequence_number).expect("writing to a Vec cannot fail");
    if let Some(sub) = source.sub_sequence_number {
        line.extend_from_slice(br#","sub_sequence_number":"#);
        line.extend_from_slice(itoa::Buffer::new().format(sub).as_bytes());
    }
    line.extend_from_slice(b"}}");
    line
}
