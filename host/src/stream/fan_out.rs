//! Enhanced fan-out: a registered stream consumer gets its own 2 MB/s per
//! shard, pushed over one long-lived SubscribeToShard call instead of
//! GetRecords polls shared with every other reader of the stream.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{ConsumerStatus, StartingPosition};

use super::aws::explain;

/// Longest wait for a newly registered consumer to become ACTIVE (AWS takes
/// a few seconds).
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);

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
pub(super) fn starting_position(position: &super::shard::Position) -> StartingPosition {
    use super::shard::Position;
    use aws_sdk_kinesis::types::ShardIteratorType as T;
    let builder = StartingPosition::builder();
    let builder = match position {
        Position::After(seq) => builder.r#type(T::AfterSequenceNumber).sequence_number(seq),
        Position::TrimHorizon => builder.r#type(T::TrimHorizon),
        Position::Latest => builder.r#type(T::Latest),
        Position::Timestamp(t) => builder.r#type(T::AtTimestamp).timestamp((*t).into()),
    };
    builder.build().expect("the type is always set")
}
