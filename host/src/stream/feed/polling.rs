//! Polling: GetRecords on a shard iterator, at most five calls a second,
//! and less often while the shard stays empty.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;

use super::{BoxFuture, Feed, Position, Read, ShardStart};
use crate::stream::backoff::Backoff;

/// Kinesis allows five GetRecords calls per second per shard.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause after the first empty read. Each further empty read in a row
/// doubles it, up to the `max_idle_pause` the shard was opened with: every
/// GetRecords costs about half a millisecond of CPU in the AWS SDK, so a
/// caught-up shard polled four times a second costs 2 ms/s on its own
/// (Lambda and the Kinesis Client Library poll an idle shard once a second).
/// The first record resets it, so a busy shard never waits on it; so does
/// an empty read of a shard that is behind the tip of the stream (Kinesis
/// returns those across sparse stretches).
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(250);

pub struct Polling {
    client: Client,
    stream: String,
    start: ShardStart,
    iterator: String,
    next_call: Instant,
    pause: Pause,
    backoff: Backoff,
}

impl Polling {
    /// # Errors
    /// No iterator for the shard's start position.
    pub async fn open(
        client: Client,
        stream: String,
        start: ShardStart,
        max_idle_pause: Duration,
    ) -> anyhow::Result<Self> {
        let iterator = iterator(&client, &stream, &start).await?;
        Ok(Self {
            client,
            stream,
            start,
            iterator,
            next_call: Instant::now(),
            pause: Pause::new(max_idle_pause),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        })
    }
}

/// A shard iterator at [`ShardStart::position`].
async fn iterator(client: &Client, stream: &str, start: &ShardStart) -> anyhow::Result<String> {
    let position = start.position()?;
    let mut request = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(&start.shard_id)
        .shard_iterator_type(position.iterator_type());
    match position {
        Position::After(seq) | Position::At(seq) => request = request.starting_sequence_number(seq),
        Position::Timestamp(t) => request = request.timestamp(t.into()),
        Position::TrimHorizon | Position::Latest => {}
    }
    let out = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(crate::stream::aws::explain(&e)))
        .with_context(|| format!("getting an iterator for {}", start.shard_id))?;
    out.shard_iterator().map(str::to_owned).context("GetShardIterator returned no iterator")
}

/// How long after a read the next one may start: [`MIN_CALL_INTERVAL`]
/// after records (or while behind), a pause growing with every idle read
/// in a row.
struct Pause {
    /// The pause after the next empty read.
    idle: Duration,
    max_idle: Duration,
}

impl Pause {
    fn new(max_idle: Duration) -> Self {
        Self { idle: FIRST_IDLE_PAUSE.min(max_idle), max_idle }
    }

    /// `idle`: the read returned nothing and the shard is at its tip.
    fn after_read(&mut self, idle: bool) -> Duration {
        if idle {
            let pause = self.idle;
            self.idle = (pause * 2).min(self.max_idle);
            pause
        } else {
            self.idle = FIRST_IDLE_PAUSE.min(self.max_idle);
            MIN_CALL_INTERVAL
        }
    }
}

impl Feed for Polling {
    fn read<'a>(&'a mut self, room: usize, woken: BoxFuture<'a, ()>) -> BoxFuture<'a, anyhow::Result<Read>> {
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep_until(self.next_call.into()) => {}
                () = woken => return Ok(Read::Nothing),
            }
            let started = Instant::now();
            let request = self.client.get_records().shard_iterator(&self.iterator).limit(room as i32);
            match request.send().await {
                Ok(mut out) => {
                    self.backoff.reset();
                    let records = std::mem::take(&mut out.records);
                    let behind = out.millis_behind_latest.is_some_and(|ms| ms > 0);
                    self.next_call = started + self.pause.after_read(records.is_empty() && !behind);
                    let closed = match out.next_shard_iterator {
                        Some(next) => {
                            self.iterator = next;
                            false
                        }
                        None => true,
                    };
                    Ok(Read::Records { records, millis_behind_latest: out.millis_behind_latest, closed })
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_expired_iterator_exception()) => {
                    tracing::info!(shard_id = self.start.shard_id, "iterator expired; renewing from the checkpoint");
                    self.iterator = iterator(&self.client, &self.stream, &self.start).await?;
                    Ok(Read::Rewound)
                }
                Err(e) if super::is_fatal(e.code()) => {
                    anyhow::bail!("reading {}: {}", self.start.shard_id, crate::stream::aws::explain(&e))
                }
                Err(e) => {
                    let error = crate::stream::aws::explain(&e);
                    tracing::warn!(shard_id = self.start.shard_id, %error, "GetRecords failed; backing off");
                    self.backoff.sleep().await;
                    Ok(Read::Nothing)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pauses(max_ms: u64, reads: &str) -> Vec<u128> {
        let mut pause = Pause::new(Duration::from_millis(max_ms));
        reads.chars().map(|read| pause.after_read(read == '.').as_millis()).collect()
    }

    #[test]
    fn an_idle_shard_is_polled_less_often_until_a_record_comes() {
        // '.': an empty read at the tip; 'r': records; 'b': an empty read
        // behind the tip, which is not idle (the caller tells them apart by
        // `millis_behind_latest`).
        assert_eq!(pauses(1000, "....r..r"), [250, 500, 1000, 1000, 200, 250, 500, 200]);
        assert_eq!(pauses(1000, "...b."), [250, 500, 1000, 200, 250]);
        assert_eq!(pauses(600, "...."), [250, 500, 600, 600]);
        assert_eq!(pauses(200, "..r."), [200, 200, 200, 200]);
    }
}
