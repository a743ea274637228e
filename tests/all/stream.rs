//! `offerd run` against a real Kinesis API (kinesis-local on loopback,
//! started by `cargo xtask test`). Each test has its own account, hence its
//! own streams.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use serde_json::Value;

use super::{catalogs, store_with};

pub(super) const DEADLINE: Duration = Duration::from_secs(90);

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

#[derive(Clone)]
pub(super) struct Kinesis {
    pub(super) client: Client,
    account: String,
}

impl Kinesis {
    pub(super) async fn new() -> Self {
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
        self.wait_active(name).await;
    }

    /// Puts each round in one call: records of one key keep their order.
    /// Returns where each record landed: (shard id, sequence number).
    pub(super) async fn put(&self, stream: &str, records: &[(String, String)]) -> Vec<(String, Seq)> {
        let entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder().partition_key(key).data(Blob::new(data.as_bytes())).build().unwrap()
            })
            .collect();
        let out = self.client.put_records().stream_name(stream).set_records(Some(entries)).send().await.unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
        out.records().iter().map(|r| (r.shard_id().unwrap().to_owned(), seq_of(r.sequence_number().unwrap()))).collect()
    }

    pub(super) async fn wait_active(&self, name: &str) {
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

    /// Every record of every shard, in shard order.
    pub(super) async fn read_all(&self, stream: &str) -> Vec<Value> {
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
    pub(super) async fn wait_for(&self, out: &str, dlq: &str, want: usize) -> (Vec<Value>, Vec<Value>) {
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

    fn offerd(&self, streams: &Streams, checkpoints: &Path, modules: &Path, extra: &[&str]) -> Offerd {
        self.offerd_with(streams, checkpoints, modules, &catalogs(), extra)
    }

    pub(super) fn offerd_with(
        &self,
        streams: &Streams,
        checkpoints: &Path,
        modules: &Path,
        catalogs: &Path,
        extra: &[&str],
    ) -> Offerd {
        let mut command = self.offerd_command(streams, modules, catalogs);
        command.args(extra).arg("--checkpoints").arg(checkpoints);
        Offerd(Some(command.spawn().unwrap()))
    }

    /// The environment that points an AWS SDK client at this account.
    pub(super) fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", self.account.clone()),
            ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ]
    }

    /// `offerd run` on `streams`, through this account, without checkpoint
    /// settings.
    pub(super) fn offerd_command(&self, streams: &Streams, modules: &Path, catalogs: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_offerd-cli"));
        command
            .args(["run", "--input-stream", &streams.input, "--output-stream", &streams.output])
            .args(["--dead-letter-stream", &streams.dlq])
            .arg("--modules")
            .arg(modules)
            .arg("--catalogs")
            .arg(catalogs)
            .envs(self.env())
            .env("OFFERD_LOG", std::env::var("OFFERD_TEST_LOG").as_deref().unwrap_or("warn"))
            .stdout(Stdio::null());
        command
    }
}

/// A running `offerd run`, killed if the test fails before stopping it.
pub(super) struct Offerd(pub(super) Option<Child>);

impl Offerd {
    /// Sends `signal` (`INT`, `TERM`, `STOP`, `CONT`, …).
    pub(super) fn signal(&self, signal: &str) {
        let pid = self.0.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGINT, then the process must exit 0 within the bound.
    pub(super) fn stop(self) {
        self.stop_with("INT");
    }

    /// `signal` (INT or TERM), then the process must exit 0 within the bound.
    pub(super) fn stop_with(mut self, signal: &str) {
        self.signal(signal);
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "offerd exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "offerd did not stop within 30 s of SIG{signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub(super) fn kill_9(mut self) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Offerd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) struct Streams {
    pub(super) input: String,
    pub(super) output: String,
    pub(super) dlq: String,
}

pub(super) async fn streams(k: &Kinesis, input_shards: i32) -> Streams {
    let s = Streams { input: "signups".into(), output: "offers".into(), dlq: "dead-letters".into() };
    k.create(&s.input, input_shards).await;
    k.create(&s.output, 2).await;
    k.create(&s.dlq, 1).await;
    s
}

/// A loopback address nothing listens on yet.
pub(super) fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// A plain HTTP/1.0 GET: (status, body).
pub(super) fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, b"")
}

/// One HTTP/1.0 request, with a bearer token if given: (status, body).
pub(super) fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(conn, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\r\n", body.len()).unwrap();
    conn.write_all(body).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Polls `/metrics` until it holds `line`; the endpoint may not be bound yet.
pub(super) fn wait_for_metric(addr: &str, line: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            let (status, text) = http_get(addr, "/metrics");
            assert_eq!(status, 200);
            if text.lines().any(|l| l == line) {
                return text;
            }
            assert!(Instant::now() < deadline, "no line {line:?} in\n{text}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn signup(user: &str, n: usize) -> String {
    format!(r#"{{"user_id": "{user}", "location": {{"country": "DE", "lat": 52.52, "lon": 13.4}}, "n": {n}}}"#)
}

/// Sequence numbers are decimal strings too long for any integer type:
/// ordered by length, then digits.
pub(super) type Seq = (usize, String);

fn seq_of(text: &str) -> Seq {
    (text.len(), text.to_owned())
}

pub(super) fn seq(v: &Value) -> Seq {
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
    let metrics = free_addr();
    let child = k.offerd(&s, &checkpoints, store.path(), &["--metrics-addr", &metrics, "--batch-size", "50"]);
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 123).await;
    let text = wait_for_metric(&metrics, r#"offerd_offers_total{region="europe",module_version="0.1.0"} 120"#);
    assert!(text.contains(r#"offerd_dead_letters_total{reason="invalid-record"} 2"#), "{text}");
    assert!(text.contains(r#"offerd_dead_letters_total{reason="unknown-region"} 1"#), "{text}");
    assert!(text.contains("offerd_shards_reading 4"), "{text}");
    assert!(text.contains(r#"offerd_millis_behind_latest{shard_id="shardId-000000000003"}"#), "{text}");
    assert!(text.contains("offerd_batch_seconds_count"), "{text}");
    assert_eq!(http_get(&metrics, "/readyz").0, 200);
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".to_owned()));
    child.stop();

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
    let child = k.offerd(&s, &checkpoints, store.path(), &[]);
    k.wait_for(&s.output, &s.dlq, 30).await;
    child.stop();

    let second: Vec<(String, String)> = (0..30).map(|i| (format!("b{i}"), signup(&format!("b{i}"), i))).collect();
    k.put(&s.input, &second).await;
    let child = k.offerd(&s, &checkpoints, store.path(), &[]);
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 60).await;
    child.stop();
    assert!(dead.is_empty());
    let users: HashSet<&str> = offers.iter().map(|o| o["user_id"].as_str().unwrap()).collect();
    assert_eq!(users.len(), 60);
    assert_eq!(offers.len(), 60, "a clean stop and restart repeats nothing");
}

/// Per key, the rounds of its outputs in output-stream order, given where
/// each input landed. Panics on an output whose source is not an input.
pub(super) fn rounds_by_user(offers: &[Value], landed: &HashMap<(String, Seq), usize>) -> BTreeMap<String, Vec<usize>> {
    let mut by_user: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for o in offers {
        let source = (o["source"]["shard_id"].as_str().unwrap().to_owned(), seq(o));
        let round = *landed.get(&source).unwrap_or_else(|| panic!("output from no input: {o}"));
        by_user.entry(o["user_id"].as_str().unwrap().to_owned()).or_default().push(round);
    }
    by_user
}

/// Puts one round: one sign-up for each of `users` keys, in one call, and
/// records where each landed.
async fn put_round(k: &Kinesis, stream: &str, users: usize, round: usize, landed: &mut HashMap<(String, Seq), usize>) {
    let batch: Vec<(String, String)> = (0..users).map(|u| (format!("u{u}"), signup(&format!("u{u}"), round))).collect();
    for source in k.put(stream, &batch).await {
        landed.insert(source, round);
    }
}

/// Splits the shard whose hash range starts at 0 into two halves and waits
/// until the stream is active: (parent, first key of the upper half, last key
/// of the parent).
pub(super) async fn split_first_shard(k: &Kinesis, stream: &str) -> (String, u128, u128) {
    let (first, start, end) = shard_starting_at(k, stream, "0").await;
    let (start, end): (u128, u128) = (start.parse().unwrap(), end.parse().unwrap());
    let mid = (start + end) / 2;
    k.client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&first)
        .new_starting_hash_key(mid.to_string())
        .send()
        .await
        .unwrap();
    k.wait_active(stream).await;
    (first, mid, end)
}

/// The shard whose hash range starts at `start`: (id, start, end).
async fn shard_starting_at(k: &Kinesis, stream: &str, start: &str) -> (String, String, String) {
    let shards = k.client.list_shards().stream_name(stream).send().await.unwrap();
    let s = shards.shards().iter().find(|s| s.hash_key_range().unwrap().starting_hash_key() == start).unwrap();
    let range = s.hash_key_range().unwrap();
    (s.shard_id().to_owned(), range.starting_hash_key().to_owned(), range.ending_hash_key().to_owned())
}

/// Nine rounds of one sign-up for each of 12 keys: three before the first
/// shard of a 2-shard stream is split, three between the split and the merge
/// of its upper half with the second original shard, three after. Where
/// each record landed (its round), and the three shards that end closed:
/// the split parent, its upper half, the second original shard.
pub(super) async fn rounds_around_split_and_merge(
    k: &Kinesis,
    stream: &str,
) -> (HashMap<(String, Seq), usize>, [String; 3]) {
    let mut landed: HashMap<(String, Seq), usize> = HashMap::new();
    for round in 0..3 {
        put_round(k, stream, 12, round, &mut landed).await;
    }
    let (first, mid, end) = split_first_shard(k, stream).await;
    for round in 3..6 {
        put_round(k, stream, 12, round, &mut landed).await;
    }
    let (upper, ..) = shard_starting_at(k, stream, &mid.to_string()).await;
    let (second, ..) = shard_starting_at(k, stream, &(end + 1).to_string()).await;
    k.client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(&upper)
        .adjacent_shard_to_merge(&second)
        .send()
        .await
        .unwrap();
    k.wait_active(stream).await;
    for round in 6..9 {
        put_round(k, stream, 12, round, &mut landed).await;
    }
    (landed, [first, upper, second])
}

/// Records put before a split, between a split and a merge, and after the
/// merge all come out once, and each key's records come out in the order
/// they were put: children wait until their parents are drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_mid_stream_keep_per_key_order() {
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let child = k.offerd(&s, &checkpoints, store.path(), &["--batch-size", "7"]);
    let (landed, [first, upper, second]) = rounds_around_split_and_merge(&k, &s.input).await;
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 108).await;
    child.stop();

    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(offers.len(), 108, "each record once");
    let shards_read: HashSet<&str> = offers.iter().map(|o| o["source"]["shard_id"].as_str().unwrap()).collect();
    assert_eq!(shards_read.len(), 5, "parents, split children and the merged child: {shards_read:?}");
    for (user, rounds) in rounds_by_user(&offers, &landed) {
        assert_eq!(rounds, (0..9).collect::<Vec<_>>(), "{user}: outputs out of put order");
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoints).unwrap()).unwrap();
    for parent in [&first, &upper, &second] {
        assert_eq!(saved["shards"][parent.as_str()], "SHARD_END", "{parent} checkpointed at its end");
    }
}

/// `kill -9` mid-stream, then a restart: every input comes out at least
/// once, and only the batches that were not yet checkpointed come out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_loses_nothing() {
    const BATCH: usize = 2;
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let mut inputs: HashSet<(String, Seq)> = HashSet::new();
    let first: Vec<(String, String)> = (0..60).map(|i| (format!("a{i}"), signup(&format!("a{i}"), i))).collect();
    inputs.extend(k.put(&s.input, &first).await);

    let child = k.offerd(&s, &checkpoints, store.path(), &["--batch-size", &BATCH.to_string()]);
    k.wait_for(&s.output, &s.dlq, 10).await;
    child.kill_9();
    let (before, _) = k.wait_for(&s.output, &s.dlq, 0).await;
    assert!(before.len() < 60, "killed mid-stream, not after the end ({} outputs)", before.len());

    let second: Vec<(String, String)> = (0..20).map(|i| (format!("b{i}"), signup(&format!("b{i}"), i))).collect();
    inputs.extend(k.put(&s.input, &second).await);
    let child = k.offerd(&s, &checkpoints, store.path(), &["--batch-size", &BATCH.to_string()]);
    let deadline = Instant::now() + DEADLINE;
    let offers = loop {
        let (offers, dead) = k.wait_for(&s.output, &s.dlq, 80).await;
        assert!(dead.is_empty(), "{dead:?}");
        let seen: HashSet<(String, Seq)> =
            offers.iter().map(|o| (o["source"]["shard_id"].as_str().unwrap().to_owned(), seq(o))).collect();
        if inputs.is_subset(&seen) {
            break offers;
        }
        assert!(Instant::now() < deadline, "{} of 80 inputs came out", inputs.intersection(&seen).count());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    child.stop();
    let duplicates = offers.len() - inputs.len();
    assert!(duplicates <= 2 * BATCH, "{duplicates} duplicates: more than one uncheckpointed batch per shard");
}

/// The output stream vanishes mid-run and comes back: offerd retries the
/// writes, holds its checkpoint, and publishes everything once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_output_stream_is_retried() {
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let metrics = free_addr();
    let child = k.offerd(&s, &checkpoints, store.path(), &["--metrics-addr", &metrics]);
    let first: Vec<(String, String)> = (0..10).map(|i| (format!("a{i}"), signup(&format!("a{i}"), i))).collect();
    k.put(&s.input, &first).await;
    k.wait_for(&s.output, &s.dlq, 10).await;

    k.client.delete_stream().stream_name(&s.output).send().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while k.client.describe_stream_summary().stream_name(&s.output).send().await.is_ok() {
        assert!(Instant::now() < deadline, "{} was never deleted", s.output);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second: Vec<(String, String)> = (0..10).map(|i| (format!("b{i}"), signup(&format!("b{i}"), i))).collect();
    k.put(&s.input, &second).await;
    // Read, and stuck publishing: nothing counted as an offer yet.
    let text = wait_for_metric(&metrics, r#"offerd_records_read_total{shard_id="shardId-000000000000"} 20"#);
    assert!(text.contains(r#"offerd_offers_total{region="europe",module_version="0.1.0"} 10"#), "{text}");

    k.create(&s.output, 1).await;
    let (offers, _) = k.wait_for(&s.output, &s.dlq, 10).await;
    child.stop();
    let users: BTreeSet<&str> = offers.iter().map(|o| o["user_id"].as_str().unwrap()).collect();
    let expected: BTreeSet<String> = (0..10).map(|i| format!("b{i}")).collect();
    assert_eq!(users, expected.iter().map(String::as_str).collect());
}

/// KPL-aggregated records are split into their user records; each output
/// names its place in the aggregate. A damaged aggregate is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_are_deaggregated() {
    use offerd::stream::kpl::{UserRecord, aggregate};
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    fn user<'a>(partition_key: &'a str, data: &'a str) -> UserRecord<'a> {
        UserRecord { partition_key, data: data.as_bytes() }
    }
    let (p0, p2, d) = (signup("p0", 0), signup("p2", 2), signup("d", 0));
    let packed = aggregate(&[user("p0", &p0), user("bad", "not json"), user("p2", &p2)]);
    let mut damaged = aggregate(&[user("d", &d)]);
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let entries = [packed, damaged, signup("plain", 3).into_bytes()]
        .map(|data| PutRecordsRequestEntry::builder().partition_key("agg").data(Blob::new(data)).build().unwrap());
    k.client.put_records().stream_name(&s.input).set_records(Some(entries.to_vec())).send().await.unwrap();

    let child = k.offerd(&s, &dir.path().join("checkpoints.json"), store.path(), &[]);
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 5).await;
    child.stop();
    let mut got: Vec<(&str, Option<u64>)> =
        offers.iter().map(|o| (o["user_id"].as_str().unwrap(), o["source"]["sub_sequence_number"].as_u64())).collect();
    got.sort();
    assert_eq!(got, [("p0", Some(0)), ("p2", Some(2)), ("plain", None)]);
    let mut letters: Vec<(&str, &str, Option<u64>)> = dead
        .iter()
        .map(|d| {
            (d["reason"].as_str().unwrap(), d["detail"].as_str().unwrap(), d["source"]["sub_sequence_number"].as_u64())
        })
        .collect();
    letters.sort();
    assert_eq!(letters.len(), 2, "{dead:?}");
    assert_eq!((letters[0].0, letters[0].1), ("invalid-record", "KPL aggregate fails its MD5 check"));
    assert_eq!((letters[1].0, letters[1].2), ("invalid-record", Some(1)));
}

/// The value of a counter or gauge line of `/metrics` starting with `series`, 0 if absent.
pub(super) fn metric_value(addr: &str, series: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Enhanced fan-out: the consumer is registered, records arrive through
/// SubscribeToShard in per-key order across re-subscriptions (every 2 s
/// here, 290 s by default) and a split, and a restart resumes from the
/// checkpoint without repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_resubscribes_and_follows_a_split() {
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let addr = free_addr();
    let efo = ["--consumer-name", "offers-app", "--resubscribe-after-secs", "2", "--metrics-addr", &addr];
    let child = k.offerd(&s, &checkpoints, store.path(), &efo);
    let mut landed: HashMap<(String, Seq), usize> = HashMap::new();
    for round in 0..3 {
        put_round(&k, &s.input, 8, round, &mut landed).await;
    }
    k.wait_for(&s.output, &s.dlq, 24).await;
    let (first, ..) = shard_starting_at(&k, &s.input, "0").await;
    // Every shard re-subscribed at least twice, resuming where it left off.
    let deadline = Instant::now() + DEADLINE;
    let series = format!("offerd_fan_out_subscriptions_total{{shard_id=\"{first}\"}}");
    while metric_value(&addr, &series) < 3.0 {
        assert!(Instant::now() < deadline, "no re-subscription of {first}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 3..5 {
        put_round(&k, &s.input, 8, round, &mut landed).await;
    }
    split_first_shard(&k, &s.input).await;
    for round in 5..8 {
        put_round(&k, &s.input, 8, round, &mut landed).await;
    }
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 64).await;
    child.stop();
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(offers.len(), 64, "each record once");
    let shards_read: HashSet<&str> = offers.iter().map(|o| o["source"]["shard_id"].as_str().unwrap()).collect();
    assert_eq!(shards_read.len(), 4, "both originals and the split children: {shards_read:?}");
    for (user, rounds) in rounds_by_user(&offers, &landed) {
        assert_eq!(rounds, (0..8).collect::<Vec<_>>(), "{user}: outputs out of put order");
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoints).unwrap()).unwrap();
    assert_eq!(saved["shards"][first.as_str()], "SHARD_END");

    // A restart subscribes after the checkpoints: nothing is repeated.
    put_round(&k, &s.input, 8, 8, &mut landed).await;
    let child = k.offerd(&s, &checkpoints, store.path(), &efo);
    let (offers, _) = k.wait_for(&s.output, &s.dlq, 72).await;
    child.stop();
    assert_eq!(offers.len(), 72, "a clean stop and restart repeats nothing");
    for (user, rounds) in rounds_by_user(&offers, &landed) {
        assert_eq!(rounds, (0..9).collect::<Vec<_>>(), "{user}: outputs out of put order");
    }
}

/// The records the issue found stalling a shard or exhausting memory, on a
/// 2-shard stream among good ones: a 1,000,000-byte line of invalid UTF-8,
/// a 300-character user id, and a KPL aggregate of a 300,000-character key
/// shared by 80,000 empty records. Each becomes one dead letter that fits
/// Kinesis's limits, and every good record behind them comes out. A second
/// offerd on the same checkpoints refuses to start, naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_become_dead_letters_and_the_shards_go_on() {
    use offerd::stream::kpl::{UserRecord, aggregate};
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let key = "k".repeat(300_000);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("utf8", vec![0xff; 1_000_000]),
        ("long", signup(&"u".repeat(300), 0).into_bytes()),
        ("agg", aggregate(&vec![UserRecord { partition_key: &key, data: b"" }; 80_000])),
    ];
    for (round, (pk, data)) in hostile.into_iter().enumerate() {
        let good: Vec<(String, String)> = (0..20).map(|u| (format!("g{u}"), signup(&format!("g{u}"), round))).collect();
        k.put(&s.input, &good[..10]).await;
        let entry = PutRecordsRequestEntry::builder().partition_key(pk).data(Blob::new(data)).build().unwrap();
        let out = k.client.put_records().stream_name(&s.input).records(entry).send().await.unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
        k.put(&s.input, &good[10..]).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let child = k.offerd(&s, &checkpoints, store.path(), &[]);
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 63).await;

    // A second process on the same checkpoint file stops at once and says who holds it.
    let second = Command::new(env!("CARGO_BIN_EXE_offerd-cli"))
        .args(["run", "--input-stream", &s.input, "--output-stream", &s.output, "--modules"])
        .arg(store.path())
        .arg("--catalogs")
        .arg(catalogs())
        .arg("--checkpoints")
        .arg(&checkpoints)
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", &k.account)
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap();
    let pid = child.0.as_ref().unwrap().id();
    child.stop();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");

    assert_eq!(offers.len(), 60, "every good record behind the hostile ones");
    let mut letters: Vec<(&str, &str)> =
        dead.iter().map(|d| (d["reason"].as_str().unwrap(), d["detail"].as_str().unwrap())).collect();
    letters.sort();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters.iter().all(|(reason, _)| *reason == "invalid-record"), "{letters:?}");
    assert!(letters.iter().any(|(_, d)| d.contains("user_id is 300 characters")), "{letters:?}");
    assert!(letters.iter().any(|(_, d)| d.contains("300000 characters")), "{letters:?}");
    assert!(letters.iter().any(|(_, d)| d.contains("record is 1000000 bytes")), "{letters:?}");
    for d in &dead {
        assert!(d["source"]["sequence_number"].is_string(), "{d}");
    }
    let cut = dead.iter().find(|d| d["input_bytes"] == 1_000_000).expect("the invalid UTF-8 letter names its size");
    assert_eq!(cut["input_truncated"], true);
}

/// `--start-at latest` applies to the shards open at start-up only: the
/// children of a split made while running start at their first record, so
/// nothing put after start-up is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_latest_never_skips_a_child_shard() {
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    // Before start-up: must not come out.
    put_round(&k, &s.input, 4, 99, &mut HashMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let addr = free_addr();
    let child = k.offerd(
        &s,
        &dir.path().join("checkpoints.json"),
        store.path(),
        &["--start-at", "latest", "--metrics-addr", &addr],
    );
    wait_for_metric(&addr, "offerd_shards_reading 1");
    // The reader holds a LATEST iterator once its first read is counted.
    let deadline = Instant::now() + DEADLINE;
    while !http_get(&addr, "/metrics").1.contains("offerd_millis_behind_latest{") {
        assert!(Instant::now() < deadline, "the shard was never read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut landed = HashMap::new();
    put_round(&k, &s.input, 8, 0, &mut landed).await;
    k.wait_for(&s.output, &s.dlq, 8).await;
    split_first_shard(&k, &s.input).await;
    // Into the children, before their readers exist.
    put_round(&k, &s.input, 8, 1, &mut landed).await;
    put_round(&k, &s.input, 8, 2, &mut landed).await;
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 24).await;
    child.stop();
    assert!(dead.is_empty(), "{dead:?}");
    for (user, rounds) in rounds_by_user(&offers, &landed) {
        assert_eq!(rounds, [0, 1, 2], "{user}: the records put before start-up are skipped, the rest come out");
    }
}

/// The whole service as a library call: bound listeners, a client and a
/// shutdown future in, a clean return (every batch checkpointed) out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_in_process_until_its_shutdown_future() {
    use offerd::service::{Listeners, Settings};
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = metrics.local_addr().unwrap().to_string();
    let settings = Settings {
        stream: offerd::stream::RunConfig {
            input_stream: s.input.clone(),
            output_stream: s.output.clone(),
            dead_letter_stream: s.dlq.clone(),
            start_at: offerd::stream::StartAt::TrimHorizon,
            batch_size: 100,
            batch_window: Duration::ZERO,
            max_idle_poll: Duration::from_secs(1),
            consumer_name: None,
            resubscribe_after: Duration::from_secs(290),
            max_aggregate_records: offerd::stream::kpl::DEFAULT_MAX_RECORDS,
            put_retry_budget: Duration::from_secs(60),
        },
        rules: offerd::service::Rules::Directory(store.path().to_owned()),
        catalogs: catalogs(),
        checkpoints: offerd::service::Checkpoints::File(checkpoints.clone()),
        limits: offerd::engine::Limits::default(),
        trusted_keys: None,
        module_cache: None,
        stall_after: Duration::from_secs(60),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = Listeners { metrics: Some(metrics), admin: None };
    let service = tokio::spawn(offerd::service::run(settings, listeners, k.client.clone(), async {
        let _ = stopped.await;
    }));
    let users: Vec<(String, String)> = (0..5).map(|u| (format!("u{u}"), signup(&format!("u{u}"), 0))).collect();
    k.put(&s.input, &users).await;
    let (offers, _) = k.wait_for(&s.output, &s.dlq, 5).await;
    assert_eq!(offers.len(), 5);
    assert_eq!(tokio::task::spawn_blocking(move || http_get(&addr, "/readyz").0).await.unwrap(), 200);
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoints).unwrap()).unwrap();
    assert_eq!(saved["shards"].as_object().unwrap().len(), 1, "{saved}");
}
