//! The shard loop against a scripted feed and a fake sink: hostile records
//! and refused writes never stop a shard; writes that can never succeed
//! stop it without a checkpoint.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use aws_sdk_kinesis::primitives::Blob;
use serde_json::Value;

use super::*;
use crate::catalog::Catalogs;
use crate::module_store::LoadedRules;
use crate::stream::StartAt;
use crate::stream::feed::BoxFuture;
use crate::stream::sink::PutFailure;
use crate::stream::sink::tests::FakeSink;

/// Hands out scripted reads, then reports the shard closed.
struct ScriptedFeed(VecDeque<Vec<Record>>);

impl Feed for ScriptedFeed {
    fn read<'a>(&'a mut self, _room: usize, _woken: BoxFuture<'a, ()>) -> BoxFuture<'a, anyhow::Result<Read>> {
        Box::pin(async move {
            let records = self.0.pop_front().unwrap_or_default();
            let closed = self.0.is_empty();
            Ok(Read::Records { records, millis_behind_latest: Some(0), closed })
        })
    }
}

/// Checkpoints in memory, with every one written, in order.
#[derive(Default)]
struct MemoryCheckpoints(Mutex<Vec<Checkpoint>>);

impl CheckpointStore for MemoryCheckpoints {
    fn get(&self, _shard_id: &str) -> Option<Checkpoint> {
        self.0.lock().unwrap().last().cloned()
    }

    fn set(&self, _shard_id: &str, _epoch: Option<u64>, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(checkpoint.clone());
        Ok(())
    }
}

fn record(seq: u64, key: &str, data: impl Into<Vec<u8>>) -> Record {
    Record::builder()
        .sequence_number(format!("{seq:020}"))
        .partition_key(key)
        .data(Blob::new(data.into()))
        .build()
        .unwrap()
}

/// Regions from the repository's catalogs, none with a module: every
/// record becomes a dead letter, which is all these tests need.
fn enricher() -> Arc<Enricher> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../catalogs");
    let catalogs = Arc::new(Catalogs::load(&dir).unwrap());
    let unserved = catalogs.regions().map(|c| (c.region.clone(), "no module in this test".to_owned())).collect();
    Arc::new(Enricher::new(catalogs, LoadedRules { rules: HashMap::new(), unserved }))
}

struct Run {
    result: anyhow::Result<ShardExit>,
    store: Arc<MemoryCheckpoints>,
    sink: Arc<FakeSink>,
}

async fn run(reads: Vec<Vec<Record>>, sink: FakeSink) -> Run {
    let (_stop, stop) = watch::channel(Stop::No);
    run_feed(Box::new(ScriptedFeed(reads.into())), sink, Duration::ZERO, stop).await
}

async fn run_feed(feed: Box<dyn Feed>, sink: FakeSink, batch_window: Duration, stop: watch::Receiver<Stop>) -> Run {
    let store = Arc::new(MemoryCheckpoints::default());
    let sink = Arc::new(sink);
    let reader = ShardReader {
        sink: sink.clone(),
        config: Arc::new(RunConfig {
            input_stream: "in".into(),
            output_stream: "out".into(),
            dead_letter_stream: "dlq".into(),
            start_at: StartAt::TrimHorizon,
            batch_size: 500,
            batch_window,
            max_idle_poll: Duration::from_secs(1),
            consumer_name: None,
            resubscribe_after: Duration::from_secs(290),
            max_aggregate_records: kpl::DEFAULT_MAX_RECORDS,
            put_retry_budget: Duration::from_secs(30),
        }),
        enricher: enricher(),
        store: store.clone(),
        metrics: Arc::new(Metrics::default()),
        shard_id: "shardId-000000000000".into(),
        epoch: None,
        stop,
    };
    Run { result: reader.run(feed).await, store, sink }
}

/// Reads one record, then, on the next read, has the lease lost (as the run
/// loop does when a renewal is refused) and waits to be woken.
struct LosingFeed {
    first: Option<Record>,
    lose: watch::Sender<Stop>,
}

impl Feed for LosingFeed {
    fn read<'a>(&'a mut self, _room: usize, woken: BoxFuture<'a, ()>) -> BoxFuture<'a, anyhow::Result<Read>> {
        Box::pin(async move {
            if let Some(record) = self.first.take() {
                return Ok(Read::Records { records: vec![record], millis_behind_latest: Some(0), closed: false });
            }
            Stop::ask(&self.lose, Stop::Now);
            woken.await;
            Ok(Read::Nothing)
        })
    }
}

fn letters(sink: &FakeSink) -> Vec<Value> {
    let landed = sink.landed.lock().unwrap();
    landed.iter().filter(|(s, ..)| s == "dlq").map(|(_, _, d)| serde_json::from_slice(d).unwrap()).collect()
}

fn signup(user: &str) -> String {
    format!(r#"{{"user_id": "{user}", "location": {{"country": "DE"}}}}"#)
}

/// The record the issue found stalling a shard: a 1,000,000-byte line of
/// invalid UTF-8, between good ones. Its dead letter fits Kinesis's limit
/// and names where the whole record is; the shard goes on to its end.
#[tokio::test]
async fn a_megabyte_of_invalid_utf8_is_one_bounded_dead_letter() {
    let huge = vec![0xff; 1_000_000];
    let reads = vec![vec![record(1, "a", signup("a")), record(2, "b", huge), record(3, "c", signup("c"))]];
    let run = run(reads, FakeSink::default()).await;
    assert_eq!(run.result.unwrap(), ShardExit::Drained);
    let letters = letters(&run.sink);
    assert_eq!(letters.len(), 3);
    let big = &letters[1];
    assert_eq!(big["reason"], "invalid-record");
    assert_eq!((big["input_truncated"].as_bool(), big["input_bytes"].as_u64()), (Some(true), Some(1_000_000)));
    assert_eq!(big["source"]["sequence_number"], format!("{:020}", 2));
    assert_eq!(big["source"]["shard_id"], "shardId-000000000000");
    assert_eq!(run.store.get("shardId-000000000000"), Some(Checkpoint::ShardEnd));
}

/// An entry Kinesis refuses for good becomes a small output-rejected dead
/// letter naming its source; the batch is checkpointed and the shard goes on.
#[tokio::test]
async fn a_refused_write_becomes_an_output_rejected_letter_and_the_shard_goes_on() {
    let sink = FakeSink {
        entry_fault: Some(Box::new(|_, data| {
            (data.contains("refuse-me") && !data.contains("output-rejected"))
                .then(|| PutFailure::Reject("InvalidArgumentException: no".into()))
        })),
        ..FakeSink::default()
    };
    let reads =
        vec![vec![record(1, "a", signup("a")), record(2, "b", signup("refuse-me"))], vec![record(3, "c", signup("c"))]];
    let run = run(reads, sink).await;
    assert_eq!(run.result.unwrap(), ShardExit::Drained);
    let letters = letters(&run.sink);
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["unknown-region", "output-rejected", "unknown-region"]);
    let rejected = &letters[1];
    assert!(rejected["detail"].as_str().unwrap().contains("InvalidArgumentException"), "{rejected}");
    assert_eq!(rejected["source"]["sequence_number"], format!("{:020}", 2));
    assert_eq!(run.store.get("shardId-000000000000"), Some(Checkpoint::ShardEnd));
}

/// A write that can never succeed (the stream is gone) stops the shard with
/// an error and leaves the batch uncheckpointed, to be read again.
#[tokio::test]
async fn a_fatal_write_stops_the_shard_without_a_checkpoint() {
    let sink = FakeSink {
        call_fault: Some(Box::new(|_, _| Some(PutFailure::Fatal("ResourceNotFoundException: gone".into())))),
        ..FakeSink::default()
    };
    let run = run(vec![vec![record(1, "a", signup("a"))]], sink).await;
    let err = run.result.unwrap_err();
    assert!(format!("{err:#}").contains("ResourceNotFoundException"), "{err:#}");
    assert_eq!(run.store.get("shardId-000000000000"), None);
    assert_eq!(run.sink.calls.lock().unwrap().len(), 1, "no retry of what cannot succeed");
}

/// The aggregate that drove offerd past 2 GiB (a 300,000-character key
/// shared by 80,000 empty records) is one dead letter.
#[tokio::test]
async fn a_hostile_aggregate_is_one_dead_letter() {
    let key = "k".repeat(300_000);
    let users = vec![kpl::UserRecord { partition_key: &key, data: b"" }; 80_000];
    let packed = kpl::aggregate(&users);
    let run = run(vec![vec![record(1, "agg", packed), record(2, "a", signup("a"))]], FakeSink::default()).await;
    assert_eq!(run.result.unwrap(), ShardExit::Drained);
    let letters = letters(&run.sink);
    assert_eq!(letters.len(), 2);
    assert!(letters[0]["detail"].as_str().unwrap().contains("300000 characters"), "{}", letters[0]);
    assert_eq!(letters[0]["input_truncated"], true);
}

/// Two Kinesis records holding 6,000 user records each are enriched and
/// published as two chunks, each checkpointed: never 12,000 at once.
#[tokio::test]
async fn a_batch_of_large_aggregates_is_processed_in_chunks() {
    let lines: Vec<String> = (0..6_000).map(|i| signup(&format!("u{i}"))).collect();
    let users: Vec<kpl::UserRecord<'_>> =
        lines.iter().map(|l| kpl::UserRecord { partition_key: "k", data: l.as_bytes() }).collect();
    let packed = kpl::aggregate(&users);
    let run = run(vec![vec![record(1, "a", packed.clone()), record(2, "b", packed)]], FakeSink::default()).await;
    assert_eq!(run.result.unwrap(), ShardExit::Drained);
    assert_eq!(letters(&run.sink).len(), 12_000);
    let at = |seq: u64| Checkpoint::At(format!("{seq:020}"));
    assert_eq!(*run.store.0.lock().unwrap(), [at(1), at(2), Checkpoint::ShardEnd]);
}

/// A lease lost while records wait in the batch window: they are dropped,
/// not written (the new owner has written them and later ones already, so
/// writing them here would put a user's older offer after a newer one).
#[tokio::test]
async fn a_lost_lease_drops_records_read_but_not_written() {
    let (lose, stop) = watch::channel(Stop::No);
    let feed = LosingFeed { first: Some(record(1, "a", signup("a"))), lose };
    let run = run_feed(Box::new(feed), FakeSink::default(), Duration::from_secs(600), stop).await;
    assert_eq!(run.result.unwrap(), ShardExit::Stopped);
    assert!(run.sink.calls.lock().unwrap().is_empty(), "written after the lease was lost");
    assert_eq!(run.store.get("shardId-000000000000"), None);
}

/// A lease lost while a batch's writes are being retried: the retries stop
/// at once and nothing is checkpointed; a shutdown would have let them go on.
#[tokio::test]
async fn a_lost_lease_abandons_the_writes_in_flight() {
    let (lose, stop) = watch::channel(Stop::No);
    let sink = FakeSink {
        call_fault: Some(Box::new(move |_, _| {
            Stop::ask(&lose, Stop::Now);
            Some(PutFailure::Retry("ProvisionedThroughputExceededException".into()))
        })),
        ..FakeSink::default()
    };
    let records = vec![vec![record(1, "a", signup("a"))], vec![record(2, "a", signup("a"))]];
    let run = run_feed(Box::new(ScriptedFeed(records.into())), sink, Duration::ZERO, stop).await;
    assert_eq!(run.result.unwrap(), ShardExit::Stopped);
    assert_eq!(run.store.get("shardId-000000000000"), None);
    assert_eq!(run.sink.calls.lock().unwrap().len(), 1, "retried after the lease was lost");
}
