//! `offerd run` against a real Kinesis API (kinesis-local on loopback,
//! started by `cargo xtask test`). Each test has its own account, hence its
//! own streams.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use serde_json::Value;

use super::{catalogs, store_with};

const DEADLINE: Duration = Duration::from_secs(90);

fn endpoint() -> String {
    std::env::var("OFFERD_TEST_KINESIS_ENDPOINT").expect(
        "OFFERD_TEST_KINESIS_ENDPOINT is unset: run the suite with `cargo xtask test`, which starts kinesis-local",
    )
}

/// A 12-digit access key id selects its own account in kinesis-local.
fn fresh_account() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:06}{:06}", std::process::id() % 1_000_000, n)
}

struct Kinesis {
    client: Client,
    account: String,
}

impl Kinesis {
    async fn new() -> Self {
        let account = fresh_account();
        let creds = aws_sdk_kinesis::config::Credentials::new(&account, "secret", None, None, "test");
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .credentials_provider(creds)
            .load()
            .await;
        Self { client: Client::new(&config), account }
    }

    async fn create(&self, name: &str, shards: i32) {
        self.client.create_stream().stream_name(name).shard_count(shards).send().await.unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let d = self.client.describe_stream_summary().stream_name(name).send().await.unwrap();
            if d.stream_description_summary().unwrap().stream_status() == &StreamStatus::Active {
                return;
            }
            assert!(Instant::now() < deadline, "{name} never became active");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts each round in one call: records of one key keep their order.
    async fn put(&self, stream: &str, records: &[(String, String)]) {
        let entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder().partition_key(key).data(Blob::new(data.as_bytes())).build().unwrap()
            })
            .collect();
        let out = self.client.put_records().stream_name(stream).set_records(Some(entries)).send().await.unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
    }

    /// Every record of every shard, in shard order.
    async fn read_all(&self, stream: &str) -> Vec<Value> {
        let shards = self.client.list_shards().stream_name(stream).send().await.unwrap();
        let mut all = Vec::new();
        for shard in shards.shards() {
            let it = self
                .client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap();
            let mut iterator = it.shard_iterator().map(str::to_owned);
            while let Some(it) = iterator {
                let out = self.client.get_records().shard_iterator(it).send().await.unwrap();
                all.extend(out.records().iter().map(|r| serde_json::from_slice::<Value>(r.data().as_ref()).unwrap()));
                if out.records().is_empty() {
                    break;
                }
                iterator = out.next_shard_iterator().map(str::to_owned);
            }
        }
        all
    }

    /// Polls both output streams until they hold `want` records in all.
    async fn wait_for(&self, out: &str, dlq: &str, want: usize) -> (Vec<Value>, Vec<Value>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (offers, dead) = (self.read_all(out).await, self.read_all(dlq).await);
            if offers.len() + dead.len() >= want {
                return (offers, dead);
            }
            assert!(Instant::now() < deadline, "only {} + {} of {want} records arrived", offers.len(), dead.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn offerd(&self, streams: &Streams, checkpoints: &Path, modules: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_offerd-cli"))
            .args(["run", "--input-stream", &streams.input, "--output-stream", &streams.output])
            .args(["--dead-letter-stream", &streams.dlq, "--batch-size", "50"])
            .arg("--modules")
            .arg(modules)
            .arg("--catalogs")
            .arg(catalogs())
            .arg("--checkpoints")
            .arg(checkpoints)
            .env("AWS_ENDPOINT_URL", endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", &self.account)
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("OFFERD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }
}

struct Streams {
    input: String,
    output: String,
    dlq: String,
}

async fn streams(k: &Kinesis, input_shards: i32) -> Streams {
    let s = Streams { input: "signups".into(), output: "offers".into(), dlq: "dead-letters".into() };
    k.create(&s.input, input_shards).await;
    k.create(&s.output, 2).await;
    k.create(&s.dlq, 1).await;
    s
}

/// SIGINT, then the process must exit 0 within the bound.
fn stop(mut child: Child) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "offerd exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "offerd did not stop within 30 s of SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signup(user: &str, n: usize) -> String {
    format!(r#"{{"user_id": "{user}", "location": {{"country": "DE", "lat": 52.52, "lon": 13.4}}, "n": {n}}}"#)
}

/// Sequence numbers are decimal strings too long for any integer type:
/// ordered by length, then digits.
type Seq = (usize, String);

fn seq_of(text: &str) -> Seq {
    (text.len(), text.to_owned())
}

fn seq(v: &Value) -> Seq {
    seq_of(v["source"]["sequence_number"].as_str().unwrap())
}

/// 4 shards, 20 keys × 6 records and 3 bad records: every record comes out
/// once, per-key order holds, bad records carry their reason, SIGINT stops
/// cleanly with every shard checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_in_order_with_dead_letters() {
    let k = Kinesis::new().await;
    let s = streams(&k, 4).await;
    for round in 0..6 {
        let batch: Vec<(String, String)> =
            (0..20).map(|u| (format!("k{u}"), signup(&format!("k{u}"), round))).collect();
        k.put(&s.input, &batch).await;
    }
    let bad = [
        ("b1", "not json"),
        ("b2", r#"{"location": {"country": "DE"}}"#),
        ("b3", r#"{"user_id": "z", "location": {"country": "ZZ"}}"#),
    ];
    k.put(&s.input, &bad.map(|(key, data)| (key.to_owned(), data.to_owned()))).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let child = k.offerd(&s, &checkpoints, store.path());
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 123).await;
    stop(child);

    assert_eq!(offers.len(), 120);
    let mut by_user: BTreeMap<&str, Vec<Seq>> = BTreeMap::new();
    for o in &offers {
        assert_eq!(o["region"], "europe");
        by_user.entry(o["user_id"].as_str().unwrap()).or_default().push(seq(o));
    }
    assert_eq!(by_user.len(), 20);
    for (user, seqs) in &by_user {
        assert_eq!(seqs.len(), 6, "{user}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{user} out of order: {seqs:?}");
    }
    let mut reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid-record", "invalid-record", "unknown-region"]);
    let sources: HashSet<(String, Seq)> =
        offers.iter().chain(&dead).map(|v| (v["source"]["shard_id"].as_str().unwrap().to_owned(), seq(v))).collect();
    assert_eq!(sources.len(), 123, "no record twice");

    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoints).unwrap()).unwrap();
    let saved: HashMap<String, Seq> = saved["shards"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(shard, s)| (shard.clone(), seq_of(s.as_str().unwrap())))
        .collect();
    let mut last_of: HashMap<&str, Seq> = HashMap::new();
    for (shard, s) in &sources {
        let e = last_of.entry(shard.as_str()).or_default();
        *e = (*e).clone().max(s.clone());
    }
    assert_eq!(saved.len(), 4, "every shard checkpointed: {saved:?}");
    for (shard, last) in last_of {
        assert_eq!(saved.get(shard), Some(&last), "{shard} checkpointed at its last record");
    }
}

/// Stop, put more, start again: the second run resumes from the checkpoint,
/// so every record is published exactly once across the two runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_checkpoint() {
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let first: Vec<(String, String)> = (0..30).map(|i| (format!("a{i}"), signup(&format!("a{i}"), i))).collect();
    k.put(&s.input, &first).await;
    let child = k.offerd(&s, &checkpoints, store.path());
    k.wait_for(&s.output, &s.dlq, 30).await;
    stop(child);

    let second: Vec<(String, String)> = (0..30).map(|i| (format!("b{i}"), signup(&format!("b{i}"), i))).collect();
    k.put(&s.input, &second).await;
    let child = k.offerd(&s, &checkpoints, store.path());
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 60).await;
    stop(child);
    assert!(dead.is_empty());
    let users: HashSet<&str> = offers.iter().map(|o| o["user_id"].as_str().unwrap()).collect();
    assert_eq!(users.len(), 60);
    assert_eq!(offers.len(), 60, "a clean stop and restart repeats nothing");
}
