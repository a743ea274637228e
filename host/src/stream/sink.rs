//! Publishing records with PutRecords, retrying only the entries that failed.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

/// Kinesis accepts at most 500 entries per PutRecords call.
const MAX_ENTRIES: usize = 500;
/// Kinesis accepts at most 5 MiB per PutRecords call; stay just under.
const MAX_BYTES: usize = 5 * 1024 * 1024 - 64 * 1024;
/// First retry delay; doubles up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One record to publish.
pub struct Entry {
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Writes every entry to `stream`, retrying throttled or failed entries (and
/// failed calls) with jittered backoff until all are acknowledged.
///
/// # Errors
/// Only an entry Kinesis can never accept (e.g. an invalid argument).
pub async fn put_all(client: &Client, stream: &str, entries: Vec<Entry>) -> anyhow::Result<()> {
    let mut pending: Vec<PutRecordsRequestEntry> = entries
        .into_iter()
        .map(|e| {
            PutRecordsRequestEntry::builder()
                .partition_key(e.partition_key)
                .data(Blob::new(e.data))
                .build()
                .expect("partition key and data are set")
        })
        .collect();
    let mut backoff = FIRST_BACKOFF;
    while !pending.is_empty() {
        let take = chunk_len(&pending);
        let chunk: Vec<PutRecordsRequestEntry> = pending.drain(..take).collect();
        match client.put_records().stream_name(stream).set_records(Some(chunk.clone())).send().await {
            Ok(out) if out.failed_record_count().unwrap_or(0) == 0 => backoff = FIRST_BACKOFF,
            Ok(out) => {
                let failed: Vec<PutRecordsRequestEntry> = chunk
                    .into_iter()
                    .zip(out.records())
                    .filter(|(_, result)| result.error_code().is_some())
                    .map(|(entry, _)| entry)
                    .collect();
                tracing::warn!(stream, failed = failed.len(), "PutRecords entries failed; retrying them");
                pending.splice(0..0, failed);
                backoff = sleep_backoff(backoff).await;
            }
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_invalid_argument_exception()) {
                    anyhow::bail!("Kinesis refused records for {stream}: {}", super::aws::explain(&e));
                }
                tracing::warn!(stream, error = %super::aws::explain(&e), "PutRecords failed; retrying");
                pending.splice(0..0, chunk);
                backoff = sleep_backoff(backoff).await;
            }
        }
    }
    Ok(())
}

/// How many of the first entries fit one call.
fn chunk_len(entries: &[PutRecordsRequestEntry]) -> usize {
    let mut bytes = 0;
    entries
        .iter()
        .take(MAX_ENTRIES)
        .take_while(|e| {
            bytes += e.data().as_ref().len() + e.partition_key().map_or(0, str::len);
            bytes <= MAX_BYTES
        })
        .count()
        .max(1)
}

/// Sleeps `backoff` ± half, returns the next backoff.
pub(crate) async fn sleep_backoff(backoff: Duration) -> Duration {
    let jitter = 0.5 + fastrand::f64();
    tokio::time::sleep(backoff.mul_f64(jitter)).await;
    (backoff * 2).min(MAX_BACKOFF)
}
