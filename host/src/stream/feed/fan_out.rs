//! Enhanced fan-out: a registered stream consumer gets its own 2 MB/s per
//! shard, pushed over one long-lived SubscribeToShard call instead of
//! GetRecords polls shared with every other reader of the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput;
use aws_sdk_kinesis::types::{ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream};

use super::{BoxFuture, Feed, Position, Read, ShardStart};
use crate::metrics::Metrics;
use crate::stream::aws::explain;
use crate::stream::backoff::Backoff;

/// Longest wait for a newly registered consumer to become ACTIVE (AWS takes
/// a few seconds).
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a caught-up reader checks whether its shard ended; see
/// [`FanOut::ended_after`].
const CHECK_END_EVERY: Duration = Duration::from_secs(5);
/// The ARN of consumer `name` on `stream`, registering it if missing and
/// waiting until it is ACTIVE.
///
/// # Errors
/// The stream is missing, or the consumer cannot be registered or does not
/// become active within [`REGISTRATION_TIMEOUT`].
pub async fn consumer_arn(client: &Client, stream: &str, name: &str) -> anyhow::Result<String> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(explain(&e)))
        .with_context(|| format!("describing the input stream {stream:?}"))?;
    let stream_arn = summary.stream_description_summary().map(|d| d.stream_arn().to_owned()).unwrap_or_default();
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    let mut registered = false;
    loop {
        let described = client.describe_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await;
        match described {
            Ok(out) => {
                let consumer = out.consumer_description().context("DescribeStreamConsumer returned no consumer")?;
                if *consumer.consumer_status() == ConsumerStatus::Active {
                    return Ok(consumer.consumer_arn().to_owned());
                }
            }
            Err(e) if !registered && e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
                tracing::info!(stream, consumer = name, "registering the enhanced fan-out consumer");
                let registering = client.register_stream_consumer().stream_arn(&stream_arn).consumer_name(name);
                match registering.send().await {
                    Ok(_) => {}
                    // Another host registered it first.
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
                    Err(e) => {
                        bail!("registering the consumer {name:?} on {stream:?}: {}", explain(&e))
                    }
                }
                registered = true;
                continue;
            }
            Err(e) => bail!("describing the consumer {name:?} on {stream:?}: {}", explain(&e)),
        }
        if Instant::now() > deadline {
            bail!("the consumer {name:?} on {stream:?} is not ACTIVE after {REGISTRATION_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where a subscription starts.
fn starting_position(position: &Position) -> StartingPosition {
    let builder = StartingPosition::builder().r#type(position.iterator_type());
    let builder = match position {
        Position::After(seq) | Position::At(seq) => builder.sequence_number(seq),
        Position::Timestamp(t) => builder.timestamp((*t).into()),
        Position::TrimHorizon | Position::Latest => builder,
    };
    builder.build().expect("the type is always set")
}

struct Subscription {
    /// Holds the event stream (the SDK does not export its type).
    call: SubscribeToShardOutput,
    opened: Instant,
    /// Whether an event arrived: the service refuses a subscription (another
    /// one still active) through the event stream, not the call.
    confirmed: bool,
}

pub struct FanOut {
    client: Client,
    stream: String,
    consumer_arn: Arc<str>,
    start: ShardStart,
    metrics: Arc<Metrics>,
    /// How long a subscription is used before a fresh one is opened; the
    /// service ends each after 5 minutes.
    resubscribe_after: Duration,
    subscription: Option<Box<Subscription>>,
    /// Where the next subscription resumes: the last event's continuation
    /// sequence number, which covers every record received (processed or
    /// still pending in a batch window).
    resume_after: Option<String>,
    /// When the shard was last checked for having ended; see [`Self::ended_after`].
    checked_end: Instant,
    backoff: Backoff,
}

impl FanOut {
    pub fn new(
        client: Client,
        stream: String,
        consumer_arn: Arc<str>,
        start: ShardStart,
        metrics: Arc<Metrics>,
        resubscribe_after: Duration,
    ) -> Self {
        Self {
            client,
            stream,
            consumer_arn,
            start,
            metrics,
            resubscribe_after,
            subscription: None,
            resume_after: None,
            checked_end: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
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
            .stream_name(&self.stream)
            .shard_id(&self.start.shard_id)
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
}

impl Feed for FanOut {
    fn read<'a>(&'a mut self, _room: usize, woken: BoxFuture<'a, ()>) -> BoxFuture<'a, anyhow::Result<Read>> {
        Box::pin(async move {
            let shard_id = self.start.shard_id.clone();
            let lifetime = self.resubscribe_after;
            if self.subscription.as_ref().is_none_or(|s| s.opened.elapsed() >= lifetime) {
                self.subscription = None;
                let position = match &self.resume_after {
                    Some(seq) => Position::After(seq.clone()),
                    None => self.start.position()?,
                };
                let request = self
                    .client
                    .subscribe_to_shard()
                    .consumer_arn(&*self.consumer_arn)
                    .shard_id(&shard_id)
                    .starting_position(starting_position(&position));
                match request.send().await {
                    Ok(out) => {
                        self.subscription =
                            Some(Box::new(Subscription { call: out, opened: Instant::now(), confirmed: false }))
                    }
                    Err(e) if super::is_fatal(e.code()) => bail!("subscribing to {shard_id}: {}", explain(&e)),
                    Err(e) => {
                        let error = explain(&e);
                        tracing::warn!(shard_id, %error, "SubscribeToShard failed; backing off");
                        self.backoff.sleep().await;
                        return Ok(Read::Nothing);
                    }
                }
            }
            let current = self.subscription.as_mut().expect("opened above");
            // Re-subscribe before the service ends the call at 5 minutes.
            let expires = current.opened + lifetime;
            let event = tokio::select! {
                event = current.call.event_stream.recv() => event,
                () = tokio::time::sleep_until(expires.into()) => return Ok(Read::Nothing),
                () = woken => return Ok(Read::Nothing),
            };
            match event {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(mut event))) => {
                    self.backoff.reset();
                    if !current.confirmed {
                        current.confirmed = true;
                        tracing::debug!(shard_id, "subscribed");
                        self.metrics.subscribed(&shard_id);
                    }
                    // The service sends a null continuation (read as empty)
                    // and the children once the shard is closed and every
                    // record of it has been sent.
                    let mut closed = event.continuation_sequence_number.is_empty()
                        || event.child_shards.as_ref().is_some_and(|c| !c.is_empty());
                    if !closed {
                        self.resume_after = Some(std::mem::take(&mut event.continuation_sequence_number));
                    }
                    if !closed
                        && event.records.is_empty()
                        && self.checked_end.elapsed() >= CHECK_END_EVERY
                        && let Some(seq) = self.resume_after.as_deref()
                    {
                        self.checked_end = Instant::now();
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
                    tracing::debug!(shard_id, "subscription ended; re-subscribing");
                    self.subscription = None;
                    Ok(Read::Nothing)
                }
                Err(e) => {
                    let error = explain(&e);
                    if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) {
                        // The subscription just replaced is not released yet
                        // (AWS: for up to 5 s).
                        tracing::debug!(shard_id, %error, "previous subscription still active");
                    } else {
                        tracing::warn!(shard_id, %error, "subscription failed; re-subscribing");
                    }
                    self.subscription = None;
                    self.backoff.sleep().await;
                    Ok(Read::Nothing)
                }
            }
        })
    }
}
