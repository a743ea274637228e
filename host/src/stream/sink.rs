//! Publishing records with PutRecords: only what can succeed is retried,
//! per-key order holds under partial failure, and what Kinesis can never
//! take comes back to the caller instead of being retried forever.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::backoff::Backoff;
use crate::metrics::Metrics;
use crate::record::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES, partition_key_fits};

/// Kinesis accepts at most 500 entries per PutRecords call.
const MAX_ENTRIES: usize = 500;
/// Kinesis accepts at most 5 MiB per PutRecords call; stay just under.
const MAX_BYTES: usize = 5 * 1024 * 1024 - 64 * 1024;
/// How long retryable failures (throttling, service errors) are retried
/// before the batch fails and its shard restarts from the checkpoint.
pub const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// How a PutRecords call, or one entry of it, failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutFailure {
    /// Throttling or a service fault: the same request may succeed later.
    Retry(String),
    /// The entry (or, for a whole call, one of its entries) is invalid: no
    /// retry will ever succeed.
    Reject(String),
    /// Neither: the stream is gone, access is denied, its key is disabled.
    Fatal(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where records are published: Kinesis PutRecords, or a fake in tests.
pub trait RecordSink: Send + Sync {
    /// Puts `entries` in one call: one result per entry (`None`: written),
    /// or the call's failure.
    fn put_records<'a>(
        &'a self,
        stream: &'a str,
        entries: &'a [&'a Entry],
    ) -> BoxFuture<'a, Result<Vec<Option<PutFailure>>, PutFailure>>;
}

/// Why a batch could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("writing to {stream} failed and cannot succeed by retrying: {reason}")]
    Fatal { stream: String, reason: String },
    #[error("writing to {stream} still failing after {budget:?} of retries: {reason}")]
    RetriesExhausted { stream: String, budget: Duration, reason: String },
}

/// An entry Kinesis refused for good, by its index in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

/// Writes every entry of `entries` to `stream`. Entries that fail with a
/// retryable error are retried with jittered, capped backoff while some
/// call succeeds at least every `retry_budget`. Entries Kinesis refuses for good (checked locally first:
/// key length and record size) are returned, and the rest is written.
///
/// Order per partition key: a call carries at most one entry per key, so an
/// entry is sent only once every earlier entry with its key is written (or
/// refused for good). Keys are usually distinct per batch (user ids); a
/// batch that repeats one key takes one call per repetition.
///
/// # Errors
/// A fatal failure, or `retry_budget` of retryable failures in a row.
/// Entries written before it stay written.
pub async fn put_all(
    sink: &dyn RecordSink,
    stream: &str,
    entries: &[Entry],
    retry_budget: Duration,
    metrics: &Metrics,
) -> Result<Vec<Rejected>, PutError> {
    let mut rejected = Vec::new();
    let mut pending: Vec<usize> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match refused_locally(entry) {
            Some(reason) => rejected.push(Rejected { index, reason }),
            None => pending.push(index),
        }
    }
    // Since when every call failed; reset by any progress.
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    // Halved while a whole call is refused, to find the entry it refuses.
    let mut max_entries = MAX_ENTRIES;
    let exhausted =
        |reason: String| PutError::RetriesExhausted { stream: stream.to_owned(), budget: retry_budget, reason };
    while !pending.is_empty() {
        let chunk = next_chunk(entries, &pending, max_entries);
        let refs: Vec<&Entry> = chunk.iter().map(|&i| &entries[i]).collect();
        let mut done: HashSet<usize> = HashSet::with_capacity(chunk.len());
        let mut retry: Option<String> = None;
        match sink.put_records(stream, &refs).await {
            Ok(results) => {
                for (position, &index) in chunk.iter().enumerate() {
                    match results.get(position).cloned().unwrap_or(Some(PutFailure::Retry("no result".into()))) {
                        None => {
                            done.insert(index);
                        }
                        Some(PutFailure::Retry(reason)) => retry = Some(reason),
                        Some(PutFailure::Reject(reason)) => {
                            done.insert(index);
                            rejected.push(Rejected { index, reason });
                        }
                        Some(PutFailure::Fatal(reason)) => {
                            return Err(PutError::Fatal { stream: stream.to_owned(), reason });
                        }
                    }
                }
                let retried = chunk.len() - done.len();
                if retried > 0 {
                    metrics.put_entries_retried(stream, retried);
                }
                max_entries = (max_entries * 2).min(MAX_ENTRIES);
            }
            Err(PutFailure::Retry(reason)) => {
                metrics.put_entries_retried(stream, chunk.len());
                retry = Some(reason);
            }
            Err(PutFailure::Reject(reason)) if chunk.len() == 1 => {
                done.insert(chunk[0]);
                rejected.push(Rejected { index: chunk[0], reason });
            }
            Err(PutFailure::Reject(reason)) => {
                tracing::debug!(stream, entries = chunk.len(), %reason, "PutRecords refused; halving the call");
                max_entries = chunk.len() / 2;
            }
            Err(PutFailure::Fatal(reason)) => return Err(PutError::Fatal { stream: stream.to_owned(), reason }),
        }
        pending.retain(|i| !done.contains(i));
        if !done.is_empty() {
            failing_since = None;
        }
        if let Some(reason) = retry {
            if failing_since.get_or_insert_with(Instant::now).elapsed() >= retry_budget {
                return Err(exhausted(reason));
            }
            tracing::warn!(stream, failed = chunk.len() - done.len(), %reason, "PutRecords entries failed; retrying");
            backoff.sleep().await;
        } else {
            backoff.reset();
        }
    }
    if !rejected.is_empty() {
        metrics.put_entries_rejected(stream, rejected.len());
        rejected.sort_by_key(|r| r.index);
    }
    Ok(rejected)
}

/// Why Kinesis would refuse `entry`, known without asking it.
fn refused_locally(entry: &Entry) -> Option<String> {
    if !partition_key_fits(&entry.partition_key) {
        return Some(format!(
            "partition key of {} characters; Kinesis takes 1 to {MAX_PARTITION_KEY_CHARS}",
            entry.partition_key.chars().count()
        ));
    }
    let bytes = entry.data.len() + entry.partition_key.len();
    (bytes > MAX_RECORD_BYTES).then(|| format!("record of {bytes} bytes; Kinesis takes at most {MAX_RECORD_BYTES}"))
}

/// The pending entries of the next call: in order, at most one per
/// partition key (an entry whose key is held back by an earlier pending
/// entry waits), within the call's entry and byte limits.
fn next_chunk(entries: &[Entry], pending: &[usize], max_entries: usize) -> Vec<usize> {
    let mut keys: HashSet<&str> = HashSet::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for &index in pending {
        let entry = &entries[index];
        // Inserted even when the entry does not fit: later ones of its key wait.
        if !keys.insert(&entry.partition_key) {
            continue;
        }
        let size = entry.data.len() + entry.partition_key.len();
        if chunk.len() == max_entries.max(1) || (!chunk.is_empty() && bytes + size > MAX_BYTES) {
            break;
        }
        bytes += size;
        chunk.push(index);
    }
    chunk
}

/// PutRecords on Kinesis, with its errors sorted into retry, reject and fatal.
pub struct KinesisSink {
    pub client: Client,
}

impl RecordSink for KinesisSink {
    fn put_records<'a>(
        &'a self,
        stream: &'a str,
        entries: &'a [&'a Entry],
    ) -> BoxFuture<'a, Result<Vec<Option<PutFailure>>, PutFailure>> {
        Box::pin(async move {
            let records = entries
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&e.partition_key)
                        .data(Blob::new(e.data.clone()))
                        .build()
                        .expect("partition key and data are set")
                })
                .collect();
            match self.client.put_records().stream_name(stream).set_records(Some(records)).send().await {
                Ok(out) => Ok(out
                    .records()
                    .iter()
                    .map(|r| r.error_code().map(|code| entry_failure(code, r.error_message().unwrap_or_default())))
                    .collect()),
                Err(e) => Err(call_failure(&e)),
            }
        })
    }
}

/// A failed entry of a PutRecords response, by its error code.
fn entry_failure(code: &str, message: &str) -> PutFailure {
    let reason = format!("{code}: {message}");
    match code {
        "InvalidArgumentException" | "ValidationException" => PutFailure::Reject(reason),
        "ProvisionedThroughputExceededException" | "InternalFailure" | "KMSThrottlingException" => {
            PutFailure::Retry(reason)
        }
        // The KMS key is disabled, missing or not ours, or anything new.
        _ => PutFailure::Fatal(reason),
    }
}

/// A failed PutRecords call, by the SDK's error.
fn call_failure(
    e: &aws_sdk_kinesis::error::SdkError<
        aws_sdk_kinesis::operation::put_records::PutRecordsError,
        aws_sdk_kinesis::config::http::HttpResponse,
    >,
) -> PutFailure {
    use aws_sdk_kinesis::error::SdkError;
    let reason = super::aws::explain(e);
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match s.err().code() {
                Some("InvalidArgumentException" | "ValidationException" | "SerializationException") => {
                    PutFailure::Reject(reason)
                }
                Some(
                    "ProvisionedThroughputExceededException"
                    | "KMSThrottlingException"
                    | "LimitExceededException"
                    | "ThrottlingException"
                    | "InternalFailure"
                    | "ServiceUnavailable",
                ) => PutFailure::Retry(reason),
                _ if status >= 500 || status == 429 => PutFailure::Retry(reason),
                _ => PutFailure::Fatal(reason),
            }
        }
        // Timeouts, connection failures, unreadable responses.
        _ => PutFailure::Retry(reason),
    }
}

#[cfg(test)]
pub(crate) mod tests;
