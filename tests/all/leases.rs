//! Several `offerd run` workers on one stream through a DynamoDB lease table
//! (dynalite on loopback, started by `cargo xtask test`), against
//! kinesis-local: balance, a worker joining, SIGTERM hand-off, kill -9
//! failover, a paused worker fenced off, and a table left by a KCL
//! application adopted with its checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;

use super::proxy::Proxy;
use super::stream::{
    DEADLINE, Kinesis, Offerd, Seq, Streams, rounds_around_split_and_merge, rounds_by_user, seq, signup, streams,
};
use super::{catalogs, store_with};

fn dynamodb_endpoint() -> String {
    std::env::var("OFFERD_TEST_DYNAMODB_ENDPOINT")
        .expect("OFFERD_TEST_DYNAMODB_ENDPOINT is unset: run the suite with `cargo xtask test`, which starts dynalite")
}

async fn dynamodb() -> aws_sdk_dynamodb::Client {
    dynamodb_at(&dynamodb_endpoint()).await
}

async fn dynamodb_at(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let creds = aws_sdk_dynamodb::config::Credentials::new("test", "secret", None, None, "test");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// A table name no other test uses.
fn fresh_table() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("leases-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One worker: `offerd run --lease-table`, renewing every 250 ms, leases of
/// 2 s (eight renewals: a loaded test machine does not expire a live
/// worker's lease) unless `extra` says otherwise; its log goes to `log` if
/// given.
fn worker(
    k: &Kinesis,
    s: &Streams,
    table: &str,
    id: &str,
    modules: &Path,
    extra: &[&str],
    log: Option<&Path>,
) -> Offerd {
    worker_at(&dynamodb_endpoint(), k, s, table, id, modules, extra, log)
}

/// [`worker`], reaching DynamoDB at `dynamodb`.
#[allow(clippy::too_many_arguments)]
fn worker_at(
    dynamodb: &str,
    k: &Kinesis,
    s: &Streams,
    table: &str,
    id: &str,
    modules: &Path,
    extra: &[&str],
    log: Option<&Path>,
) -> Offerd {
    let mut command = k.offerd_command(s, modules, &catalogs());
    command
        .args(["--lease-table", table, "--worker-id", id, "--batch-size", "50"])
        .args(if extra.is_empty() { &["--lease-duration-ms", "2000", "--lease-renew-ms", "250"][..] } else { extra })
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb);
    if let Some(log) = log {
        command.env("OFFERD_LOG", "info").stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    }
    Offerd(Some(command.spawn().unwrap()))
}

/// Per shard: (owner, checkpoint).
async fn leases(db: &aws_sdk_dynamodb::Client, table: &str) -> BTreeMap<String, (Option<String>, String)> {
    let out = db.scan().table_name(table).consistent_read(true).send().await.unwrap();
    out.items()
        .iter()
        .map(|item| {
            let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            (s("leaseKey").unwrap(), (s("leaseOwner"), s("checkpoint").unwrap_or_default()))
        })
        .collect()
}

/// How many leases each worker holds.
fn held(leases: &BTreeMap<String, (Option<String>, String)>) -> BTreeMap<String, usize> {
    let mut held = BTreeMap::new();
    for (owner, _) in leases.values() {
        *held.entry(owner.clone().unwrap_or_else(|| "(none)".into())).or_default() += 1;
    }
    held
}

/// Polls the table until `done` holds of it; the leases then.
async fn wait_for_leases(
    db: &aws_sdk_dynamodb::Client,
    table: &str,
    what: &str,
    done: impl Fn(&BTreeMap<String, (Option<String>, String)>) -> bool,
) -> BTreeMap<String, (Option<String>, String)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if db.describe_table().table_name(table).send().await.is_ok() {
            let leases = leases(db, table).await;
            if done(&leases) {
                return leases;
            }
            assert!(Instant::now() < deadline, "{what}: never happened; leases {leases:?}");
        }
        assert!(Instant::now() < deadline, "{what}: the lease table {table} never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a table keyed by the string `key` alone (as a test's stand-in for
/// a table some other program made) and waits until it is active.
async fn create_table(db: &aws_sdk_dynamodb::Client, table: &str, key: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    };
    db.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(KeySchemaElement::builder().attribute_name(key).key_type(KeyType::Hash).build().unwrap())
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name(key).attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while db.describe_table().table_name(table).send().await.unwrap().table().unwrap().table_status()
        != Some(&TableStatus::Active)
    {
        assert!(Instant::now() < deadline, "{table} never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` sign-ups of distinct users, round `round`.
fn round(round: usize, n: usize) -> Vec<(String, String)> {
    (0..n).map(|u| (format!("u{u}"), signup(&format!("u{u}"), round))).collect()
}

/// Polls the output stream until every input record (shard, sequence
/// number) has come out; how many outputs repeat one.
async fn duplicates_once_all_out(k: &Kinesis, s: &Streams, inputs: &[(String, Seq)]) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut count: HashMap<(String, Seq), usize> = HashMap::new();
        for v in k.read_all(&s.output).await {
            *count.entry((v["source"]["shard_id"].as_str().unwrap().to_owned(), seq(&v))).or_default() += 1;
        }
        let missing = inputs.iter().filter(|i| !count.contains_key(*i)).count();
        if missing == 0 {
            return count.values().map(|n| n - 1).sum();
        }
        assert!(Instant::now() < deadline, "{missing} of {} records never came out", inputs.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three workers share eight shards within one lease of each other; a
/// fourth takes its share with only the leases it needs moving; SIGTERM
/// hands a worker's leases over at once. Leases move at batch boundaries
/// (hand-offs), so none of it repeats a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_balance_a_joiner_takes_its_share_and_sigterm_hands_off_without_duplicates() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 8).await;
    let store = store_with("reference");
    let mut workers: Vec<Offerd> =
        ["w1", "w2", "w3"].iter().map(|id| worker(&k, &s, &table, id, store.path(), &[], None)).collect();
    let mut inputs = k.put(&s.input, &round(0, 200)).await;
    wait_for_leases(&db, &table, "3 workers balanced ±1", |l| {
        let held = held(l);
        l.len() == 8 && held.len() == 3 && !held.contains_key("(none)") && held.values().all(|n| (2..=3).contains(n))
    })
    .await;
    // Workers starting together move leases while they settle (the first
    // to scan sees only itself and takes all), by hand-offs at batch
    // boundaries: nothing is repeated.
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0, "balancing at start-up repeated records");

    // A fourth joins while sign-ups flow: the two leases it needs move, again without repeats.
    workers.push(worker(&k, &s, &table, "w4", store.path(), &[], None));
    let feeding = {
        let (k, input) = (k.clone(), s.input.clone());
        tokio::spawn(async move {
            let mut landed = Vec::new();
            for r in 1..=10 {
                landed.extend(k.put(&input, &round(r, 20)).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            landed
        })
    };
    wait_for_leases(&db, &table, "4 workers with 2 leases each", |l| {
        held(l).values().all(|n| *n == 2) && held(l).len() == 4
    })
    .await;
    inputs.extend(feeding.await.unwrap());
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0, "the joiner's hand-offs repeated records");

    let w1 = workers.remove(0);
    w1.stop_with("TERM");
    let handed = wait_for_leases(&db, &table, "w1's leases taken by the others", |l| {
        l.values().all(|(owner, _)| owner.as_deref().is_some_and(|o| o != "w1"))
    })
    .await;
    assert_eq!(held(&handed).len(), 3, "{handed:?}");
    inputs.extend(k.put(&s.input, &round(11, 200)).await);
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0, "the SIGTERM hand-off repeated records");
    for w in workers {
        w.stop_with("TERM");
    }
    let released = leases(&db, &table).await;
    assert!(released.values().all(|(owner, _)| owner.is_none()), "leases left held after SIGTERM: {released:?}");
}

/// kill -9 of a worker under load: the other takes its shards once their
/// leases expire; nothing is lost, and repeats stay within the killed
/// worker's last batch per shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_shards_are_taken_over_and_nothing_is_lost() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 4).await;
    let store = store_with("reference");
    let a = worker(&k, &s, &table, "a", store.path(), &[], None);
    let b = worker(&k, &s, &table, "b", store.path(), &[], None);
    wait_for_leases(&db, &table, "a and b hold 2 leases each", |l| {
        let held = held(l);
        held.get("a") == Some(&2) && held.get("b") == Some(&2)
    })
    .await;
    let mut inputs = k.put(&s.input, &round(0, 200)).await;
    k.wait_for(&s.output, &s.dlq, 100).await;
    a.kill_9();
    let killed = Instant::now();
    inputs.extend(k.put(&s.input, &round(1, 200)).await);
    wait_for_leases(&db, &table, "b holds all 4", |l| held(l).get("b") == Some(&4)).await;
    eprintln!("failover after kill -9: {:?} (lease 2 s, renewal 250 ms)", killed.elapsed());
    let repeated = duplicates_once_all_out(&k, &s, &inputs).await;
    assert!(repeated <= 2 * 50, "{repeated} duplicates: more than one batch for each of a's 2 shards");
    b.stop_with("TERM");
}

/// A worker paused (SIGSTOP) with a batch read and not yet written loses
/// its leases to another, which gets further ahead. Resumed, it learns it
/// lost them and writes no checkpoint: the table's checkpoints stay exactly
/// the other worker's (without fencing, its stale checkpoint would move
/// them back to its batch), and every record comes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_is_fenced_off_its_shards() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 2).await;
    let store = store_with("reference");
    let log = tempfile::NamedTempFile::new().unwrap();
    let metrics = super::stream::free_addr();
    let a_flags = [
        "--lease-duration-ms",
        "2000",
        "--lease-renew-ms",
        "250",
        "--batch-window-ms",
        "5000",
        "--metrics-addr",
        &metrics,
    ];
    let a = worker(&k, &s, &table, "a", store.path(), &a_flags, Some(log.path()));
    wait_for_leases(&db, &table, "a holds both", |l| held(l).get("a") == Some(&2)).await;
    let mut inputs = k.put(&s.input, &round(0, 100)).await;
    k.wait_for(&s.output, &s.dlq, 100).await;

    // Round 1 read by a, and held in its 5 s batch window when it stops.
    inputs.extend(k.put(&s.input, &round(1, 100)).await);
    let deadline = Instant::now() + DEADLINE;
    while records_read(&metrics) < 200.0 {
        assert!(Instant::now() < deadline, "a never read round 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.signal("STOP");
    let b = worker(&k, &s, &table, "b", store.path(), &[], None);
    wait_for_leases(&db, &table, "b took both from the paused a", |l| held(l).get("b") == Some(&2)).await;
    inputs.extend(k.put(&s.input, &round(2, 100)).await);
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0);
    let mut last: BTreeMap<&str, &Seq> = BTreeMap::new();
    for (shard, seq) in &inputs {
        let at = last.entry(shard.as_str()).or_insert(seq);
        *at = (*at).max(seq);
    }
    let before = wait_for_leases(&db, &table, "b checkpointed its last record of each shard", |l| {
        last.iter().all(|(shard, (_, seq))| {
            l.get(*shard).is_some_and(|(owner, at)| owner.as_deref() == Some("b") && at == seq)
        })
    })
    .await;

    a.signal("CONT");
    // a finds out at its first renewal, and its shards stop without writing.
    let deadline = Instant::now() + DEADLINE;
    while std::fs::read_to_string(log.path()).unwrap().matches("lease lost;").count() < 2
        || super::stream::metric_value(&metrics, "offerd_shards_reading") != 0.0
    {
        assert!(Instant::now() < deadline, "a never stopped: {}", std::fs::read_to_string(log.path()).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a may take a lease back since, to balance (by a hand-off from b, at
    // b's checkpoint): the checkpoints are b's still.
    let checkpoints = |l: &BTreeMap<String, (Option<String>, String)>| {
        l.iter().map(|(shard, (_, at))| (shard.clone(), at.clone())).collect::<BTreeMap<_, _>>()
    };
    let after = leases(&db, &table).await;
    assert_eq!(checkpoints(&after), checkpoints(&before), "a stale worker moved a checkpoint");

    inputs.extend(k.put(&s.input, &round(3, 100)).await);
    duplicates_once_all_out(&k, &s, &inputs).await;
    b.stop_with("TERM");
    a.stop_with("TERM");
}

/// Records read so far by the worker serving metrics at `addr`, over all shards.
fn records_read(addr: &str) -> f64 {
    if std::net::TcpStream::connect(addr).is_err() {
        return 0.0;
    }
    let (_, text) = super::stream::http_get(addr, "/metrics");
    text.lines()
        .filter(|l| l.starts_with("offerd_records_read_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A lease table written by a Kinesis Client Library application (its
/// attribute names, a worker that is gone) is adopted: its leases are taken
/// once they expire and reading resumes after their checkpoints, or at the
/// checkpointed record when the checkpoint is inside a KPL aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kcl_lease_table_is_adopted_with_its_checkpoints() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 2).await;
    let first = k.put(&s.input, &round(0, 40)).await;
    // The KCL application processed the first 5 records of each shard.
    let mut checkpoints: BTreeMap<&str, &Seq> = BTreeMap::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (shard, seq) in &first {
        let n = seen.entry(shard).or_default();
        *n += 1;
        if *n == 5 {
            checkpoints.insert(shard, seq);
        }
    }
    create_table(&db, &table, "leaseKey").await;
    // The first shard's checkpoint is inside a KPL aggregate (sub-sequence
    // 3): reading resumes at that record, which comes out again.
    let inside = *checkpoints.keys().next().unwrap();
    for (shard, seq) in &checkpoints {
        let sub = if *shard == inside { "3" } else { "0" };
        db.put_item()
            .table_name(&table)
            .item("leaseKey", AttributeValue::S((*shard).to_owned()))
            .item("leaseOwner", AttributeValue::S("kcl-worker-long-gone".into()))
            .item("leaseCounter", AttributeValue::N("41".into()))
            .item("checkpoint", AttributeValue::S(seq.1.clone()))
            .item("checkpointSubSequenceNumber", AttributeValue::N(sub.into()))
            .item("ownerSwitchesSinceCheckpoint", AttributeValue::N("2".into()))
            .send()
            .await
            .unwrap();
    }
    let store = store_with("reference");
    let w = worker(&k, &s, &table, "offerd-1", store.path(), &[], None);
    let (offers, _) = k.wait_for(&s.output, &s.dlq, 31).await;
    wait_for_leases(&db, &table, "offerd took both", |l| held(l).get("offerd-1") == Some(&2)).await;
    let after_checkpoints: Vec<&(String, Seq)> = first
        .iter()
        .filter(|(shard, seq)| (seq.0, &seq.1) > (checkpoints[shard.as_str()].0, &checkpoints[shard.as_str()].1))
        .collect();
    assert_eq!(after_checkpoints.len(), 30);
    // What `offerd lease list` says: both leases offerd's, the KCL's
    // checkpoints or later ones.
    let listed = lease_list(&table);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for lease in &listed {
        assert_eq!(lease["owner"], "offerd-1");
        let at = checkpoints[lease["shard_id"].as_str().unwrap()];
        let now = lease["checkpoint"].as_str().unwrap();
        assert!((now.len(), now) >= (at.0, at.1.as_str()), "{lease}");
    }
    assert_eq!(offers.len(), 31, "the records after the KCL's checkpoints, and the one checkpointed inside");
    for v in &offers {
        let shard = v["source"]["shard_id"].as_str().unwrap();
        let at = checkpoints[shard];
        let s = seq(v);
        let resumed_at = shard == inside && (s.0, &s.1) == (at.0, &at.1);
        assert!(resumed_at || (s.0, &s.1) > (at.0, &at.1), "{shard}: {s:?} is not after the checkpoint {at:?}");
    }
    w.stop_with("TERM");
}

/// `offerd lease list --table <table>` with `extra` flags, against dynalite.
fn offerd_lease_list(table: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_offerd-cli"))
        .args(["lease", "list", "--table", table])
        .args(extra)
        .env("AWS_ENDPOINT_URL", dynamodb_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap()
}

/// `offerd lease list --json`, one object per lease.
fn lease_list(table: &str) -> Vec<serde_json::Value> {
    let out = offerd_lease_list(table, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A table that is not a lease table (another key) stops start-up with a
/// message naming the table and its key; so does listing a missing table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_shape_stops_start_up_with_what_is_wrong() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 1).await;
    create_table(&db, &table, "id").await;
    let store = store_with("reference");
    let out = k
        .offerd_command(&s, store.path(), &catalogs())
        .args(["--lease-table", &table])
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{table:?} is not a lease table")) && stderr.contains("\"id\""), "{stderr}");
    let missing = offerd_lease_list("no-such-table", &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("there is no lease table \"no-such-table\""));
}

/// A split, then a merge, while three workers share the stream: every
/// child is read only after its parents were read to their end, whichever
/// worker held them, so each key's records come out once and in order; the
/// finished parents' leases are removed once their children started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_across_three_workers_keep_per_key_order() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 2).await;
    let store = store_with("reference");
    let settings = ["--lease-duration-ms", "2000", "--lease-renew-ms", "250", "--finished-lease-retention-secs", "1"];
    let workers: Vec<Offerd> =
        ["w1", "w2", "w3"].iter().map(|id| worker(&k, &s, &table, id, store.path(), &settings, None)).collect();
    wait_for_leases(&db, &table, "both shards held by two workers", |l| {
        l.len() == 2 && held(l).len() == 2 && !held(l).contains_key("(none)")
    })
    .await;
    let (landed, [first, upper, second]) = rounds_around_split_and_merge(&k, &s.input).await;
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 108).await;
    // Once every child started, the finished parents' leases are removed.
    let after = wait_for_leases(&db, &table, "the three parents' leases removed", |l| {
        [&first, &upper, &second].iter().all(|p| !l.contains_key(p.as_str()))
    })
    .await;
    for w in workers {
        w.stop_with("TERM");
    }
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(after.len(), 2, "the lower child of the split and the merged child: {after:?}");
    assert_eq!(offers.len(), 108, "each record once");
    let readers: BTreeMap<&str, usize> = offers.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o["source"]["shard_id"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(readers.len(), 5, "parents, split children and the merged child: {readers:?}");
    for (user, rounds) in rounds_by_user(&offers, &landed) {
        assert_eq!(rounds, (0..9).collect::<Vec<_>>(), "{user}: outputs out of put order");
    }
}

/// A renewal that landed but whose answer was lost, then a checkpoint at
/// the counter the worker still believes: the read-back must find the
/// checkpoint itself, not only "mine, one higher", and the value must be
/// written (before, it was reported written and was not: with SHARD_END the
/// lease was released holding the old checkpoint and the children stalled).
/// Fencing still holds: once another worker took the lease, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_after_a_renewal_whose_answer_was_lost_is_written() {
    use offerd::stream::lease::{Lease, LeaseError, LeaseTable};

    let table = LeaseTable::open(dynamodb().await, &fresh_table()).await.unwrap();
    let lease = Lease {
        key: "shardId-000000000000".into(),
        owner: None,
        counter: 0,
        checkpoint: "TRIM_HORIZON".into(),
        sub_sequence: 0,
        owner_switches: 0,
        parents: Vec::new(),
        children: Vec::new(),
        hash_keys: None,
        start_timestamp_ms: None,
        handoff_to: None,
    };
    assert!(table.create(&lease).await.unwrap());
    let believed = table.take(&lease, "w1").await.unwrap().counter;
    // Applied; its answer lost, so the worker still believes `believed`.
    table.renew(&lease.key, "w1", believed).await.unwrap();
    let position = "49660000000000000000000000000000000000000000000000000001";
    let next = table.checkpoint(&lease.key, "w1", believed, position).await.unwrap();
    let stored = table.scan().await.unwrap().leases.into_iter().find(|l| l.key == lease.key).unwrap();
    assert_eq!((stored.checkpoint.as_str(), stored.counter), (position, next));

    table.take(&stored, "w2").await.unwrap();
    let stale =
        table.checkpoint(&lease.key, "w1", next, "49660000000000000000000000000000000000000000000000000002").await;
    assert!(matches!(stale, Err(LeaseError::Lost(_))), "{stale:?}");
    let stored = table.scan().await.unwrap().leases.into_iter().find(|l| l.key == lease.key).unwrap();
    assert_eq!((stored.checkpoint.as_str(), stored.owner.as_deref()), (position, Some("w2")));
}

/// A lease of a shard nobody holds, at the trim horizon.
fn unheld(key: String) -> offerd::stream::lease::Lease {
    offerd::stream::lease::Lease {
        key,
        owner: None,
        counter: 0,
        checkpoint: "TRIM_HORIZON".into(),
        sub_sequence: 0,
        owner_switches: 0,
        parents: Vec::new(),
        children: Vec::new(),
        hash_keys: None,
        start_timestamp_ms: None,
        handoff_to: None,
    }
}

/// How long a worker must keep every lease it took on a cold start.
const HOLD: Duration = Duration::from_secs(60);

/// One worker (the library's lease loop, offerd's defaults: 3 s leases
/// renewed every second, its SDK timeouts) takes 256 unheld leases through
/// a link that adds `delay` to every call, and then loses none of them for
/// [`HOLD`]. Before renewal ran apart from taking, the round that took them
/// (256 takes one after another) outlasted the lease duration and the worker
/// dropped them all.
async fn a_cold_start_on_256_leases_loses_none(delay: Duration) -> Duration {
    use offerd::stream::lease::{LeaseSettings, LeaseTable, Leases};

    let (duration, renew_every) = (Duration::from_secs(3), Duration::from_secs(1));
    let name = fresh_table();
    let direct = LeaseTable::open(dynamodb().await, &name).await.unwrap();
    let keys: Vec<String> = (0..256).map(|i| format!("shardId-{i:012}")).collect();
    for key in &keys {
        assert!(direct.create(&unheld(key.clone())).await.unwrap());
    }
    let proxy = Proxy::delaying(&dynamodb_endpoint(), delay).await;
    let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
        .operation_timeout(duration / 2)
        .operation_attempt_timeout(renew_every)
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(
        dynamodb_at(&proxy.endpoint).await.config().to_builder().timeout_config(timeouts).build(),
    );
    let settings = LeaseSettings {
        table: name.clone(),
        worker_id: "w".into(),
        duration,
        renew_every,
        finished_retention: Duration::from_secs(60),
    };
    let leases = Arc::new(Leases::new(
        LeaseTable::open(client, &name).await.unwrap(),
        &settings,
        Arc::new(offerd::metrics::Metrics::default()),
    ));
    let (_stopping, stopping) = tokio::sync::watch::channel(false);
    let (end, ending) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let maintaining = tokio::spawn(leases.clone().maintain(stopping, ending));
    let deadline = Instant::now() + DEADLINE;
    let epochs: Vec<u64> = loop {
        if let Some(epochs) = keys.iter().map(|k| leases.epoch(k)).collect::<Option<Vec<u64>>>() {
            break epochs;
        }
        let held = keys.iter().filter(|k| leases.epoch(k).is_some()).count();
        assert!(Instant::now() < deadline, "{held} of 256 leases taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    let holding = Instant::now();
    while holding.elapsed() < HOLD {
        for (key, epoch) in keys.iter().zip(&epochs) {
            assert_eq!(leases.epoch(key), Some(*epoch), "{key} lost {:?} after all were taken", holding.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    end.send_replace(true);
    maintaining.await.unwrap();
    let owners = direct.scan().await.unwrap().leases;
    assert!(owners.iter().all(|l| l.owner.as_deref() == Some("w")), "{owners:?}");
    took
}

/// 256 leases taken on a cold start, directly and with 20 ms added to
/// every DynamoDB call (side by side, to keep the suite's time): none is
/// lost over a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_on_256_leases_loses_none_even_with_20_ms_added_to_every_call() {
    let (direct, slow) = tokio::join!(
        a_cold_start_on_256_leases_loses_none(Duration::ZERO),
        a_cold_start_on_256_leases_loses_none(Duration::from_millis(20)),
    );
    eprintln!("256 leases taken in {direct:?} directly, {slow:?} with 20 ms per call");
}

/// Three workers under load lose the lease table for 30 s: renewals fail,
/// checkpoints wait, records already read are written once. When it returns
/// every worker still holds its own leases (no lease looks expired to a
/// worker that could not see it either), and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_s_lease_table_outage_under_load_moves_no_lease_and_loses_nothing() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 6).await;
    let store = store_with("reference");
    let proxy = Proxy::to(&dynamodb_endpoint()).await;
    let workers: Vec<Offerd> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| worker_at(&proxy.endpoint, &k, &s, &table, id, store.path(), &[], None))
        .collect();
    let mut inputs = k.put(&s.input, &round(0, 120)).await;
    let before = wait_for_leases(&db, &table, "3 workers with 2 leases each", |l| {
        l.len() == 6 && held(l).len() == 3 && held(l).values().all(|n| *n == 2)
    })
    .await;
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0, "balancing at start-up repeated records");

    let outage = Duration::from_secs(30);
    let feeding = {
        let (k, input) = (k.clone(), s.input.clone());
        tokio::spawn(async move {
            let mut landed = Vec::new();
            let until = Instant::now() + outage + Duration::from_secs(5);
            let mut r = 1;
            while Instant::now() < until {
                landed.extend(k.put(&input, &round(r, 12)).await);
                r += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            landed
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_cut(true);
    tokio::time::sleep(outage).await;
    proxy.set_cut(false);
    let restored = Instant::now();
    inputs.extend(feeding.await.unwrap());
    let repeats = duplicates_once_all_out(&k, &s, &inputs).await;
    let steady = restored.elapsed();
    let after = leases(&db, &table).await;
    let moved = before.iter().filter(|(shard, (owner, _))| after[*shard].0 != *owner).count();
    eprintln!(
        "after a {outage:?} outage: {moved} of 6 leases moved, {repeats} of {} records repeated, \
         every record out {steady:?} after the table returned",
        inputs.len()
    );
    assert_eq!(moved, 0, "leases moved: before {before:?}, after {after:?}");
    assert_eq!(repeats, 0, "records repeated with no lease moved");
    for w in workers {
        w.stop_with("TERM");
    }
}

/// A shard reader left over from an earlier acquisition of a lease (lost,
/// then taken again by the same worker) cannot checkpoint under the newer
/// one: every checkpoint carries the acquisition it was read under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_from_an_earlier_acquisition_of_the_lease_is_refused() {
    use offerd::stream::checkpoint::{Checkpoint, CheckpointStore};
    use offerd::stream::lease::{LeaseError, LeaseSettings, LeaseTable, Leases};

    let name = fresh_table();
    let direct = LeaseTable::open(dynamodb().await, &name).await.unwrap();
    let key = "shardId-000000000000".to_owned();
    assert!(direct.create(&unheld(key.clone())).await.unwrap());
    let settings = LeaseSettings {
        table: name.clone(),
        worker_id: "w1".into(),
        duration: Duration::from_secs(1),
        renew_every: Duration::from_millis(250),
        finished_retention: Duration::from_secs(60),
    };
    let metrics = Arc::new(offerd::metrics::Metrics::default());
    let leases = Arc::new(Leases::new(LeaseTable::open(dynamodb().await, &name).await.unwrap(), &settings, metrics));
    let (_stopping, stopping) = tokio::sync::watch::channel(false);
    let (end, ending) = tokio::sync::watch::channel(false);
    let maintaining = tokio::spawn(leases.clone().maintain(stopping, ending));
    let acquisition = |what: &str, done: &dyn Fn(Option<u64>) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let epoch = leases.epoch(&key);
            if done(epoch) {
                return epoch;
            }
            assert!(Instant::now() < deadline, "{what}: never happened");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = tokio::task::block_in_place(|| acquisition("taken", &|e| e.is_some())).unwrap();
    // Taken by w2, which then goes silent: w1 loses it, then takes it again once it expires.
    let stolen = direct.scan().await.unwrap().leases.into_iter().find(|l| l.key == key).unwrap();
    direct.take(&stolen, "w2").await.unwrap();
    let second =
        tokio::task::block_in_place(|| acquisition("taken again", &|e| e.is_some_and(|e| e != first))).unwrap();

    let write = |epoch: u64, at: &str| {
        let (leases, key, at) = (leases.clone(), key.clone(), Checkpoint::At(at.to_owned()));
        tokio::task::spawn_blocking(move || leases.set(&key, Some(epoch), &at))
    };
    let stale = write(first, "49660000000000000000000000000000000000000000000000000001").await.unwrap();
    let err = stale.expect_err("a checkpoint under the first acquisition was written");
    assert!(matches!(err.downcast_ref(), Some(LeaseError::Lost(_))), "{err:#}");
    let current = "49660000000000000000000000000000000000000000000000000002";
    write(second, current).await.unwrap().unwrap();
    end.send_replace(true);
    maintaining.await.unwrap();
    let stored = direct.scan().await.unwrap().leases.into_iter().find(|l| l.key == key).unwrap();
    assert_eq!(stored.checkpoint, current);
}

/// A lease at `LATEST` with no start time (a KCL table, or one written by
/// hand) gets the time it is first taken, and the reader of the worker that
/// took it starts there: not at a fresh `LATEST` later, which would skip
/// what arrived in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_lease_pinned_at_take_starts_its_reader_at_the_pinned_time() {
    use offerd::stream::checkpoint::CheckpointStore;
    use offerd::stream::feed::Position;
    use offerd::stream::lease::{LeaseSettings, LeaseTable, Leases};

    let name = fresh_table();
    let direct = LeaseTable::open(dynamodb().await, &name).await.unwrap();
    let key = "shardId-000000000000".to_owned();
    assert!(
        direct
            .create(&offerd::stream::lease::Lease { checkpoint: "LATEST".into(), ..unheld(key.clone()) })
            .await
            .unwrap()
    );
    let settings = LeaseSettings {
        table: name.clone(),
        worker_id: "w1".into(),
        // The first scan takes it; the next is 5 s later, long after the check.
        duration: Duration::from_secs(30),
        renew_every: Duration::from_secs(10),
        finished_retention: Duration::from_secs(60),
    };
    let metrics = Arc::new(offerd::metrics::Metrics::default());
    let leases = Arc::new(Leases::new(LeaseTable::open(dynamodb().await, &name).await.unwrap(), &settings, metrics));
    let (_stopping, stopping) = tokio::sync::watch::channel(false);
    let (end, ending) = tokio::sync::watch::channel(false);
    let maintaining = tokio::spawn(leases.clone().maintain(stopping, ending));
    let deadline = Instant::now() + DEADLINE;
    while leases.epoch(&key).is_none() {
        assert!(Instant::now() < deadline, "the lease was never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Asked at once, as the run loop does on a take: before any later scan.
    let start = leases.resume_at(&key);
    end.send_replace(true);
    maintaining.await.unwrap();
    let pinned = direct.scan().await.unwrap().leases.into_iter().find(|l| l.key == key).unwrap().start_timestamp_ms;
    let pinned = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(pinned.expect("no time pinned")).unwrap());
    assert_eq!(start, Some(Position::Timestamp(pinned)));
}

/// Lease items offerd cannot use (a counter stored as a string, a counter
/// out of range, a lease that was held but has no checkpoint) are taken by
/// nobody, counted in a metric, named in `/healthz` and in `offerd lease
/// list`; a good lease beside them is served. Before, the string counter
/// read as 0 (every take failing quietly) and the lease without a
/// checkpoint was read again from the trim horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_lease_items_are_reported_and_never_taken() {
    use offerd::stream::lease::{LeaseSettings, LeaseTable, Leases};

    let (db, name) = (dynamodb().await, fresh_table());
    let direct = LeaseTable::open(dynamodb().await, &name).await.unwrap();
    assert!(direct.create(&unheld("shardId-000000000000".into())).await.unwrap());
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());
    let items = [
        ("shardId-000000000001", vec![("leaseCounter", s("7")), ("checkpoint", s("TRIM_HORIZON"))]),
        ("shardId-000000000002", vec![("leaseCounter", n("99999999999999999999999")), ("checkpoint", s("LATEST"))]),
        ("shardId-000000000003", vec![("leaseCounter", n("12")), ("leaseOwner", s("gone"))]),
    ];
    for (key, attributes) in items {
        let mut put = db.put_item().table_name(&name).item("leaseKey", s(key));
        for (attribute, value) in attributes {
            put = put.item(attribute, value);
        }
        put.send().await.unwrap();
    }
    let settings = LeaseSettings {
        table: name.clone(),
        worker_id: "w1".into(),
        duration: Duration::from_secs(1),
        renew_every: Duration::from_millis(250),
        finished_retention: Duration::from_secs(60),
    };
    let metrics = Arc::new(offerd::metrics::Metrics::default());
    let leases =
        Arc::new(Leases::new(LeaseTable::open(dynamodb().await, &name).await.unwrap(), &settings, metrics.clone()));
    let (_stopping, stopping) = tokio::sync::watch::channel(false);
    let (end, ending) = tokio::sync::watch::channel(false);
    let maintaining = tokio::spawn(leases.clone().maintain(stopping, ending));
    let deadline = Instant::now() + DEADLINE;
    while leases.epoch("shardId-000000000000").is_none() || !metrics.encode().contains("offerd_lease_items_malformed 3")
    {
        assert!(Instant::now() < deadline, "never settled:\n{}", metrics.encode());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several rounds later, still nobody's.
    let round = Instant::now();
    while round.elapsed() < settings.duration * 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for key in ["shardId-000000000001", "shardId-000000000002", "shardId-000000000003"] {
        assert_eq!(leases.epoch(key), None, "{key} was taken");
    }
    end.send_replace(true);
    maintaining.await.unwrap();

    let listed = offerd_lease_list(&name, &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(text.contains("shardId-000000000001") && text.contains("leaseCounter is a string, not a number"), "{text}");
    assert!(text.contains("99999999999999999999999 is not a counter"), "{text}");
    assert!(text.contains("no checkpoint on a lease that was held"), "{text}");
}

/// A shard split and its halves merged back (0 → A, B → C), finished
/// leases kept for 1 s: once the leases of 0, A and B are gone, shard 0 is
/// still listed, and no remaining lease names it as a parent. It must never
/// be leased again (before, the next sync created its lease again and it was
/// read a second time): after two more syncs it has no lease, and every
/// record came out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_children_and_their_leases_are_gone_is_never_leased_again() {
    let (k, db, table) = (Kinesis::new().await, dynamodb().await, fresh_table());
    let s = streams(&k, 1).await;
    let store = store_with("reference");
    let settings = ["--lease-duration-ms", "2000", "--lease-renew-ms", "250", "--finished-lease-retention-secs", "1"];
    let w = worker(&k, &s, &table, "w1", store.path(), &settings, None);
    wait_for_leases(&db, &table, "the shard held", |l| held(l).get("w1") == Some(&1)).await;
    let mut inputs = k.put(&s.input, &round(0, 12)).await;
    let (first, ..) = super::stream::split_first_shard(&k, &s.input).await;
    inputs.extend(k.put(&s.input, &round(1, 12)).await);
    let listed = k.client.list_shards().stream_name(&s.input).send().await.unwrap();
    let mut halves: Vec<(u128, String)> = listed
        .shards()
        .iter()
        .filter(|shard| shard.parent_shard_id() == Some(first.as_str()))
        .map(|shard| {
            (shard.hash_key_range().unwrap().starting_hash_key().parse().unwrap(), shard.shard_id().to_owned())
        })
        .collect();
    halves.sort();
    let [(_, lower), (_, upper)] = <[_; 2]>::try_from(halves).unwrap();
    k.client
        .merge_shards()
        .stream_name(&s.input)
        .shard_to_merge(&lower)
        .adjacent_shard_to_merge(&upper)
        .send()
        .await
        .unwrap();
    k.wait_active(&s.input).await;
    inputs.extend(k.put(&s.input, &round(2, 12)).await);
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0);
    wait_for_leases(&db, &table, "the leases of the shard and its halves removed", |l| {
        l.len() == 1 && ![&first, &lower, &upper].iter().any(|p| l.contains_key(p.as_str()))
    })
    .await;
    // Nothing to wait for but time: two listings of the shards (every 10 s)
    // that must not lease the first shard again.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let after = leases(&db, &table).await;
    assert!(!after.contains_key(&first), "{first} leased again: {after:?}");
    assert_eq!(duplicates_once_all_out(&k, &s, &inputs).await, 0, "a finished shard was read again");
    w.stop_with("TERM");
}
