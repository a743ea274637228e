//! A fleet of `offerd run` workers following one registry (DynamoDB on
//! dynalite, S3 on moto, Kinesis on kinesis-local, all started by `cargo
//! xtask test`): a publication with `--wait` reaches every worker with one
//! switch point per shard and nothing lost or repeated, a roll-back the same
//! way; a worker that joins later serves the registry's revision with an
//! empty state; a worker whose trusted keys lack the signer refuses, keeps
//! serving and is named by `--wait` and `fleet status`. And the registry's
//! AWS implementation against the real APIs: digests, caps, conditions,
//! malformed items.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use super::catalogs;
use super::proxy::Proxy;
use super::rollout::{digest_runs, round};
use super::stream::{DEADLINE, Kinesis, Offerd, Seq, Streams, seq, streams};

const TOKEN: &str = "fleet-admin-token";

fn endpoint(variable: &str, server: &str) -> String {
    std::env::var(variable)
        .unwrap_or_else(|_| panic!("{variable} is unset: run the suite with `cargo xtask test`, which starts {server}"))
}

fn dynamodb_endpoint() -> String {
    endpoint("OFFERD_TEST_DYNAMODB_ENDPOINT", "dynalite")
}

fn s3_endpoint() -> String {
    endpoint("OFFERD_TEST_S3_ENDPOINT", "moto")
}

/// A registry no other test uses: its table and bucket names, the bucket
/// created.
struct Place {
    table: String,
    bucket: String,
}

async fn sdk() -> aws_config::SdkConfig {
    let creds = aws_sdk_s3::config::Credentials::new("test", "secret", None, None, "test");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .load()
        .await
}

async fn s3() -> aws_sdk_s3::Client {
    let config =
        aws_sdk_s3::config::Builder::from(&sdk().await).endpoint_url(s3_endpoint()).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn dynamodb() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk().await).endpoint_url(dynamodb_endpoint()).build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

async fn fresh_place() -> Place {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let place = Place {
        table: format!("registry-{}-{n}", std::process::id()),
        bucket: format!("offerd-{}-{n}", std::process::id()),
    };
    s3().await.create_bucket().bucket(&place.bucket).send().await.unwrap();
    place
}

impl Place {
    fn args(&self) -> Vec<String> {
        ["--registry-table", &self.table, "--registry-bucket", &self.bucket, "--registry-prefix", "fleet"]
            .map(str::to_owned)
            .to_vec()
    }

    async fn open(&self) -> offerd::registry::aws::AwsRegistry {
        let location = offerd::registry::aws::Location {
            table: self.table.clone(),
            bucket: self.bucket.clone(),
            prefix: "fleet".into(),
        };
        let sdk = sdk().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .endpoint_url(s3_endpoint())
                .force_path_style(true)
                .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
                .build(),
        );
        offerd::registry::aws::AwsRegistry::open(location, dynamodb().await, s3).await.unwrap()
    }
}

/// The environment of an `offerd` process: Kinesis of `k`'s account, the
/// local DynamoDB and S3.
fn env(k: &Kinesis) -> Vec<(&'static str, String)> {
    let mut env = k.env().to_vec();
    env.push(("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint()));
    env.push(("AWS_ENDPOINT_URL_S3", s3_endpoint()));
    env
}

fn offerd_cli(k: &Kinesis, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offerd-cli")).args(args).envs(env(k)).env("OFFERD_LOG", "warn").output().unwrap()
}

/// `offerd run` on `s` following the registry at `place` (polled every
/// 200 ms) with its state in `state`, without checkpoint settings.
fn follower_command(k: &Kinesis, s: &Streams, place: &Place, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_offerd-cli"));
    command
        .args(["run", "--input-stream", &s.input, "--output-stream", &s.output, "--dead-letter-stream", &s.dlq])
        .arg("--catalogs")
        .arg(catalogs())
        .args(place.args())
        .args(["--registry-poll-ms", "200", "--batch-size", "20", "--registry-state"])
        .arg(state)
        .envs(env(k))
        .env("OFFERD_LOG", std::env::var("OFFERD_TEST_LOG").as_deref().unwrap_or("warn"))
        .stdout(Stdio::null());
    command
}

/// A worker following the registry at `place`, sharing `s` through the
/// lease table `leases`.
fn worker(k: &Kinesis, s: &Streams, place: &Place, leases: &str, id: &str, state: &Path, extra: &[&str]) -> Offerd {
    let mut command = follower_command(k, s, place, state);
    command
        .args(["--lease-table", leases, "--worker-id", id])
        .args(["--lease-duration-ms", "2000", "--lease-renew-ms", "250"])
        .args(extra);
    Offerd(Some(command.spawn().unwrap()))
}

fn fleet_status(k: &Kinesis, place: &Place) -> Value {
    let args: Vec<String> = ["fleet", "status", "--json"].map(str::to_owned).into_iter().chain(place.args()).collect();
    let out = offerd_cli(k, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `fleet status` until `done` holds of it.
fn wait_for_fleet(k: &Kinesis, place: &Place, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = fleet_status(k, place);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: never happened; fleet {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn region<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["regions"].as_array().unwrap().iter().find(|r| r["region"] == name).unwrap()
}

fn digest_of(bytes: &[u8]) -> String {
    offerd::engine::digest(bytes)
}

/// Where an output came from: (shard, sequence number).
fn source(o: &Value) -> (String, Seq) {
    (o["source"]["shard_id"].as_str().unwrap().to_owned(), seq(o))
}

/// Every landed record came out exactly once.
fn assert_each_once(offers: &[Value], landed: &[(String, Seq)]) {
    let mut seen: HashMap<(String, Seq), usize> = HashMap::new();
    for o in offers {
        *seen.entry(source(o)).or_default() += 1;
    }
    assert_eq!(seen.len(), landed.len(), "every record came out");
    assert!(seen.values().all(|n| *n == 1), "no record twice");
}

/// europe's outputs of the records in `inputs`.
fn europe_outputs_of<'a>(offers: &'a [Value], inputs: &HashSet<(String, Seq)>) -> Vec<&'a Value> {
    offers.iter().filter(|o| o["region"] == "europe" && inputs.contains(&source(o))).collect()
}

/// Every region at revision 1 with `module`, published through the CLI.
fn publish_everywhere(k: &Kinesis, place: &Place, module: &Path) {
    for region in ["europe", "north-america", "south-america", "asia-pacific", "middle-east-africa"] {
        let out = publish(k, place, region, module, &[]);
        assert!(out.status.success(), "{region}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn publish(k: &Kinesis, place: &Place, region: &str, module: &Path, extra: &[&str]) -> Output {
    let catalogs = catalogs();
    let mut args =
        vec!["publish", "--region", region, module.to_str().unwrap(), "--catalogs", catalogs.to_str().unwrap()];
    let place_args = place.args();
    args.extend(place_args.iter().map(String::as_str));
    args.extend(extra);
    offerd_cli(k, &args)
}

fn rollback(k: &Kinesis, place: &Place, region: &str, extra: &[&str]) -> Output {
    let mut args = vec!["rollback", "--region", region];
    let place_args = place.args();
    args.extend(place_args.iter().map(String::as_str));
    args.extend(extra);
    offerd_cli(k, &args)
}

/// Three workers with leases on six shards under load: `offerd publish
/// --wait` of europe v2 returns once all three serve it; every shard
/// switches once (v1 before, v2 after), nothing is lost or repeated; `offerd
/// rollback --wait` brings v1 back the same way. A fourth worker started
/// later with an empty state serves the registry's revision; it trusts only
/// v1's signer, so it refuses v3, keeps serving, and `--wait` and `fleet
/// status` name it. A publication on a stale revision is refused, naming
/// the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_publications_and_rollbacks_through_one_registry() {
    let k = Kinesis::new().await;
    let s = streams(&k, 6).await;
    let place = fresh_place().await;
    let dir = tempfile::tempdir().unwrap();
    let leases = format!("fleet-leases-{}", std::process::id());

    // v1 signed by a key the late worker trusts; v3 by one it does not.
    let keys = dir.path().join("keys");
    let trusted_id = offerd::signing::keygen(&keys.join("trusted")).unwrap();
    let other_id = offerd::signing::keygen(&keys.join("other")).unwrap();
    let sign = |module: &str, key: &Path| {
        offerd::signing::sign(key, &std::fs::read(offerd_tests::component(module)).unwrap()).unwrap().0
    };
    let v1 = sign("reference", &keys.join("trusted").join(format!("{trusted_id}.key")));
    let v2 = std::fs::read(offerd_tests::component("misbehave")).unwrap();
    let v3 = sign("misbehave", &keys.join("other").join(format!("{other_id}.key")));
    let files: Vec<std::path::PathBuf> = [("v1", &v1), ("v2", &v2), ("v3", &v3)]
        .iter()
        .map(|(name, bytes)| {
            let path = dir.path().join(format!("{name}.wasm"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let (d1, d2, d3) = (digest_of(&v1), digest_of(&v2), digest_of(&v3));
    publish_everywhere(&k, &place, &files[0]);

    // w1 serves the admin API: in registry mode it writes to the registry.
    let admin = super::stream::free_addr();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let admin_args = ["--admin-addr", admin.as_str(), "--admin-token-file", token_file.to_str().unwrap()];
    let workers: Vec<Offerd> = (1..=3)
        .map(|n| {
            let extra: &[&str] = if n == 1 { &admin_args } else { &[] };
            worker(&k, &s, &place, &leases, &format!("w{n}"), &dir.path().join(format!("state-{n}")), extra)
        })
        .collect();
    wait_for_fleet(&k, &place, "three workers serve revision 1", |f| {
        region(f, "europe")["serving"].as_array().is_some_and(|w| w.len() == 3)
    });
    // Load until ten rounds after the publication returned, so the switch
    // falls mid-stream however slow the machine.
    let published = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (k, input, published) = (k.clone(), s.input.clone(), published.clone());
        tokio::spawn(async move {
            let (mut landed, mut after) = (Vec::new(), 0);
            for n in 0..1000 {
                landed.extend(k.put(&input, &round(n)).await);
                after += usize::from(published.load(Ordering::SeqCst));
                if after >= 10 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            landed
        })
    };
    k.wait_for(&s.output, &s.dlq, 40).await;

    let out = publish(&k, &place, "europe", &files[1], &["--wait", "--publisher", "team-europe"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("serves on all 3 live workers"), "{stderr}");
    published.store(true, Ordering::SeqCst);
    let status = fleet_status(&k, &place);
    let europe = region(&status, "europe");
    assert_eq!((europe["revision"].as_u64(), europe["module"].as_str()), (Some(2), Some(d2.as_str())));
    assert_eq!(europe["publisher"], "team-europe");
    assert!(europe["reached_all_after_ms"].is_u64(), "{europe}");
    assert_eq!(region(&status, "north-america")["revision"], 1, "other regions untouched");

    // The admin API: the fleet as the registry sees it; a refused module
    // changes nothing anywhere.
    let (code, body) = super::stream::http(&admin, "GET", "/v1/fleet", Some(TOKEN), b"");
    assert_eq!(code, 200, "{body}");
    let fleet: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(region(&fleet, "europe")["revision"], 2);
    let (code, body) = super::stream::http(&admin, "PUT", "/v1/regions/europe/module", Some(TOKEN), b"\0asm junk");
    assert_eq!(code, 422, "{body}");
    assert_eq!(region(&fleet_status(&k, &place), "europe")["revision"], 2);

    // Stale: a pipeline that saw revision 1 is refused and told who won.
    let out = publish(&k, &place, "europe", &files[0], &["--expect-revision", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("revision 2") && stderr.contains("team-europe"), "{stderr}");

    let landed: Vec<(String, Seq)> = producer.await.unwrap();
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, landed.len()).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_each_once(&offers, &landed);
    let runs = digest_runs(&offers, "europe");
    for (shard, runs) in &runs {
        let allowed = [vec![d1.clone(), d2.clone()], vec![d1.clone()], vec![d2.clone()]];
        assert!(allowed.contains(runs), "{shard}: {runs:?}");
    }
    assert!(runs.values().any(|r| r.len() == 2), "the switch happened mid-stream: {runs:?}");
    for (shard, runs) in digest_runs(&offers, "north-america") {
        assert_eq!(runs, vec![d1.clone()], "{shard}: another region was touched");
    }

    // Roll-back, fleet-wide, and the newest europe outputs are v1 again.
    let out = rollback(&k, &place, "europe", &["--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = k.read_all(&s.output).await.len();
    let after_rollback: HashSet<(String, Seq)> = k.put(&s.input, &round(99)).await.into_iter().collect();
    let (offers, _) = k.wait_for(&s.output, &s.dlq, before + after_rollback.len()).await;
    let newest = europe_outputs_of(&offers, &after_rollback);
    assert_eq!(newest.len(), 4, "the round's four europe sign-ups");
    assert!(newest.iter().all(|o| o["rule"]["digest"] == d1), "served by v1 after the roll-back");
    // Per shard: v1, then v2, then v1 again at most; never back and forth.
    for (shard, runs) in digest_runs(&offers, "europe") {
        let full = [d1.clone(), d2.clone(), d1.clone()];
        assert!((0..3).any(|start| full[start..].starts_with(&runs)), "{shard}: {runs:?}");
    }

    // A late worker with an empty state, trusting v1's signer only.
    let trusted = dir.path().join("trusted-public");
    std::fs::create_dir(&trusted).unwrap();
    let public = format!("{trusted_id}.pub");
    std::fs::copy(keys.join("trusted").join(&public), trusted.join(&public)).unwrap();
    let late = worker(
        &k,
        &s,
        &place,
        &leases,
        "w4",
        &dir.path().join("state-4"),
        &["--trusted-keys", trusted.to_str().unwrap()],
    );
    wait_for_fleet(&k, &place, "the late worker serves revision 3 (v1 again)", |f| {
        region(f, "europe")["serving"].as_array().is_some_and(|w| w.iter().any(|w| w == "w4"))
    });
    let out = publish(&k, &place, "europe", &files[2], &["--wait", "--wait-timeout-secs", "60"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("w4 refused revision 4 of europe") && stderr.contains(&other_id), "{stderr}");
    let status = wait_for_fleet(&k, &place, "the other workers serve v3", |f| {
        region(f, "europe")["serving"].as_array().is_some_and(|w| w.len() == 3)
    });
    let europe = region(&status, "europe");
    assert_eq!(europe["module"], d3);
    assert!(europe["refused"]["w4"].as_str().unwrap().contains(&other_id), "{europe}");

    let history = offerd_cli(
        &k,
        &[
            &["registry", "history", "--region", "europe", "--json"][..],
            &place.args().iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    let revisions: Vec<u64> = std::iter::once(&history["current"])
        .chain(history["history"].as_array().unwrap())
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, [4, 3, 2, 1]);
    assert_eq!(history["history"][0]["action"]["kind"], "rollback");

    late.stop();
    for w in workers {
        w.stop();
    }
    // Stopped cleanly: out of the fleet.
    assert_eq!(fleet_status(&k, &place)["live"], serde_json::json!([]));
}

/// The registry on the real APIs: an object changed under its digest, one
/// over the cap and one missing are refused; a stale write is refused with
/// the winner; a malformed item is skipped while the others read; a
/// missing bucket stops opening, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_registry_checks_digests_caps_conditions_and_items() {
    use offerd::registry::{ObjectKind, Registry, RegistryError};

    let place = fresh_place().await;
    let registry = place.open().await;
    let module = std::fs::read(offerd_tests::component("reference")).unwrap();
    let digest = registry.put_object(ObjectKind::Module, &module).await.unwrap();
    assert_eq!(digest, digest_of(&module));
    assert_eq!(registry.object(ObjectKind::Module, &digest, 64 << 20).await.unwrap(), module);
    let small = registry.object(ObjectKind::Module, &digest, 1000).await.unwrap_err();
    assert!(matches!(&small, RegistryError::BadObject { reason, .. } if reason.contains("cap")), "{small}");
    let missing = registry.object(ObjectKind::Module, &format!("sha256:{}", "0".repeat(64)), 1000).await.unwrap_err();
    assert!(matches!(&missing, RegistryError::BadObject { reason, .. } if reason == "missing"), "{missing}");

    // Changed in the bucket under its digest.
    let key = format!("fleet/{}", ObjectKind::Module.key(&digest).unwrap());
    s3().await
        .put_object()
        .bucket(&place.bucket)
        .key(&key)
        .body(b"\0asm tampered".to_vec().into())
        .send()
        .await
        .unwrap();
    let tampered = registry.object(ObjectKind::Module, &digest, 64 << 20).await.unwrap_err();
    assert!(tampered.to_string().contains(&format!("not {digest}")), "{tampered}");

    // Conditions, and a malformed item among good ones.
    let state = |revision: u64, publisher: &str| {
        offerd::registry::RegionState::advanced(
            None,
            "europe",
            offerd::registry::Revision {
                revision,
                module: digest.clone(),
                catalog: digest.clone(),
                rule_name: "reference".into(),
                rule_version: "0.1.0".into(),
                signed_by: None,
                publisher: publisher.into(),
                published_at_ms: 0,
                action: offerd::registry::Action::Publish,
            },
        )
    };
    registry.advance(&state(1, "alice"), None).await.unwrap();
    let conflict = registry.advance(&state(1, "bob"), None).await.unwrap_err();
    assert!(
        matches!(&conflict, RegistryError::Conflict { winner: Some(w), .. } if w.current.publisher == "alice"),
        "{conflict}"
    );
    registry.advance(&state(2, "bob"), Some(1)).await.unwrap();
    // A retry of a write that landed (its answer lost) is a success, not a
    // conflict with itself; a write on a stale revision is a conflict.
    registry.advance(&state(2, "bob"), Some(1)).await.unwrap();
    let stale = registry.advance(&state(3, "carol"), Some(1)).await.unwrap_err();
    assert!(
        matches!(&stale, RegistryError::Conflict { winner: Some(w), .. } if w.current.publisher == "bob"),
        "{stale}"
    );
    dynamodb()
        .await
        .put_item()
        .table_name(&place.table)
        .item("pk", AttributeValue::S("region".into()))
        .item("sk", AttributeValue::S("asia-pacific".into()))
        .item("revision", AttributeValue::N("3".into()))
        .item("state", AttributeValue::S("{ written by hand".into()))
        .send()
        .await
        .unwrap();
    let items = registry.regions().await.unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().any(|i| matches!(i, Ok(s) if s.current.publisher == "bob")));
    assert!(
        items.iter().any(|i| matches!(i, Err(RegistryError::Malformed { region, .. }) if region == "asia-pacific"))
    );

    let location = offerd::registry::aws::Location {
        table: place.table.clone(),
        bucket: "no-such-bucket".into(),
        prefix: String::new(),
    };
    let s3 = s3().await;
    let err = offerd::registry::aws::AwsRegistry::open(location, dynamodb().await, s3).await.err().unwrap();
    assert!(err.to_string().contains("\"no-such-bucket\" does not exist"), "{err}");
}

/// `/healthz`'s body, once something listens.
fn health(metrics: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = super::stream::http_get(metrics, "/healthz");
    assert_eq!(status, 200, "{body}");
    body
}

fn wait_for_health(metrics: &str, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = health(metrics);
        if done(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: /healthz still says {body:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// DynamoDB and S3 cut off from a worker for 20 s under load: records keep
/// flowing on what serves (none lost or repeated), `/healthz` says degraded,
/// a publication made meanwhile reaches the worker once they are back.
/// Restarted while they are cut off, the worker serves what it served last;
/// one with no local state refuses to start, naming the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_stops_nothing_and_a_restart_during_one_serves_what_served() {
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let place = fresh_place().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = offerd_tests::component("reference");
    let v2 = offerd_tests::component("misbehave");
    let d2 = digest_of(&std::fs::read(&v2).unwrap());
    for region in ["europe", "north-america"] {
        let out = publish(&k, &place, region, &v1, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (dynamodb, s3) = (Proxy::to(&dynamodb_endpoint()).await, Proxy::to(&s3_endpoint()).await);
    let state = dir.path().join("state");
    let checkpoints = dir.path().join("checkpoints.json");
    let metrics = super::stream::free_addr();
    let start = |state: &Path| {
        let mut command = follower_command(&k, &s, &place, state);
        command
            .args(["--metrics-addr", &metrics])
            .arg("--checkpoints")
            .arg(&checkpoints)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &dynamodb.endpoint)
            .env("AWS_ENDPOINT_URL_S3", &s3.endpoint)
            .stderr(Stdio::piped());
        command
    };
    let worker = Offerd(Some(start(&state).stderr(Stdio::null()).spawn().unwrap()));
    super::stream::wait_for_metric(&metrics, r#"offerd_registry_revision{region="europe"} 1"#);
    assert_eq!(health(&metrics), "ok\n");

    let producer = {
        let (k, input) = (k.clone(), s.input.clone());
        tokio::spawn(async move {
            let mut landed = Vec::new();
            for n in 0..100 {
                landed.extend(k.put(&input, &round(n)).await);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            landed
        })
    };
    let outage = Instant::now();
    dynamodb.set_cut(true);
    s3.set_cut(true);
    wait_for_health(&metrics, "degraded while cut off", |b| b.contains("degraded: the registry is unreachable since"));
    // Published meanwhile, by a publisher that still reaches the registry.
    let out = publish(&k, &place, "europe", &v2, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = k.read_all(&s.output).await.len();
    k.wait_for(&s.output, &s.dlq, before + 40).await;
    assert_eq!(super::stream::metric_value(&metrics, r#"offerd_registry_revision{region="europe"}"#), 1.0);
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    dynamodb.set_cut(false);
    s3.set_cut(false);
    let serving_v2 =
        format!(r#"offerd_active_module{{region="europe",module="misbehave",version="0.0.1",digest="{d2}"}} 1"#);
    super::stream::wait_for_metric(&metrics, &serving_v2);
    wait_for_health(&metrics, "healthy again", |b| b == "ok\n");

    let landed: Vec<(String, Seq)> = producer.await.unwrap();
    let (offers, dead) = k.wait_for(&s.output, &s.dlq, landed.len()).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_each_once(&offers, &landed);
    // Put after the swap: v2's.
    let after: HashSet<(String, Seq)> = k.put(&s.input, &round(150)).await.into_iter().collect();
    let (offers, _) = k.wait_for(&s.output, &s.dlq, landed.len() + after.len()).await;
    let europe = europe_outputs_of(&offers, &after);
    assert_eq!(europe.len(), 4);
    assert!(europe.iter().all(|o| o["rule"]["digest"] == d2), "v2 serves after the outage");
    worker.stop();

    // Restarted while cut off: v2 serves, from the local state, degraded.
    dynamodb.set_cut(true);
    s3.set_cut(true);
    let worker = Offerd(Some(start(&state).stderr(Stdio::null()).spawn().unwrap()));
    wait_for_health(&metrics, "degraded after a restart", |b| b.contains("degraded"));
    let last_round: HashSet<(String, Seq)> = k.put(&s.input, &round(100)).await.into_iter().collect();
    let (offers, _) = k.wait_for(&s.output, &s.dlq, landed.len() + after.len() + last_round.len()).await;
    let europe = europe_outputs_of(&offers, &last_round);
    assert_eq!(europe.len(), 4);
    assert!(europe.iter().all(|o| o["rule"]["digest"] == d2), "the revision served before the restart");
    worker.stop();

    // No local state and no registry: start-up fails, naming the registry.
    let out = start(&dir.path().join("empty-state")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&place.table) && stderr.contains("holds no revision served before"), "{stderr}");
}
