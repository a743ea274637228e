//! Hot swap of rule modules and catalogs in a running `offerd run`, under
//! load from kinesis-local: publication through the admin API, `offerd
//! publish`, the watched module store and catalog directory; refusals;
//! rollback; authorisation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stream::{DEADLINE, Kinesis, Seq, free_addr, http, metric_value, seq, streams, wait_for_metric};
use super::{catalogs, store_with};

const TOKEN: &str = "s3cret-admin-token";

fn signup_at(user: &str, n: usize, country: &str, lat: f64, lon: f64) -> String {
    format!(r#"{{"user_id": "{user}", "location": {{"country": "{country}", "lat": {lat}, "lon": {lon}}}, "n": {n}}}"#)
}

/// Berlin and New York: one europe and one north-america sign-up per user pair.
pub(super) fn round(n: usize) -> Vec<(String, String)> {
    (0..4)
        .flat_map(|u| {
            [
                (format!("de{u}"), signup_at(&format!("de{u}"), n, "DE", 52.52, 13.405)),
                (format!("us{u}"), signup_at(&format!("us{u}"), n, "US", 40.71, -74.0)),
            ]
        })
        .collect()
}

fn region_status(admin: &str, region: &str) -> Value {
    let (status, body) = http(admin, "GET", "/v1/regions", Some(TOKEN), b"");
    assert_eq!(status, 200, "{body}");
    let all: Vec<Value> = serde_json::from_str(&body).unwrap();
    all.into_iter().find(|r| r["region"] == region).unwrap_or_else(|| panic!("no {region} in {body}"))
}

fn digest_of(file: &Path) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(std::fs::read(file).unwrap()))
}

fn offerd_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_offerd-cli")).args(args).env("OFFERD_LOG", "warn").output().unwrap()
}

/// Waits until the admin API is up.
fn wait_for_admin(admin: &str) {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {admin}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Per shard, the digests of one region's outputs in input order, collapsed
/// to runs: `[v1, v2]` is a single switch point.
pub(super) fn digest_runs(offers: &[Value], region: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_shard: BTreeMap<String, Vec<(Seq, String)>> = BTreeMap::new();
    for o in offers.iter().filter(|o| o["region"] == region) {
        let shard = o["source"]["shard_id"].as_str().unwrap().to_owned();
        by_shard.entry(shard).or_default().push((seq(o), o["rule"]["digest"].as_str().unwrap().to_owned()));
    }
    by_shard
        .into_iter()
        .map(|(shard, mut outs)| {
            outs.sort();
            let mut runs: Vec<String> = Vec::new();
            for (_, digest) in outs {
                if runs.last() != Some(&digest) {
                    runs.push(digest);
                }
            }
            (shard, runs)
        })
        .collect()
}

/// Under continuous load, v2 of europe's module is published through `offerd
/// publish --admin-url`: nothing is lost or repeated, every europe output is
/// from v1 or v2 with one switch point per shard, north-america stays on v1.
/// Broken publications are refused and visible; calls without the token are
/// refused and change nothing; rollback restores v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_under_load_switches_once_per_shard_and_refuses_broken_modules() {
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let (admin, metrics) = (free_addr(), free_addr());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_arg = token_file.to_str().unwrap();
    let admin_url = format!("http://{admin}");
    let admin_args = ["--admin-url", admin_url.as_str(), "--admin-token-file", token_arg];
    let child = k.offerd_with(
        &s,
        &dir.path().join("checkpoints.json"),
        store.path(),
        &catalogs(),
        &["--batch-size", "4", "--admin-addr", &admin, "--admin-token-file", token_arg, "--metrics-addr", &metrics],
    );
    let v1 = digest_of(&offerd_tests::component("reference"));
    let v2_file = offerd_tests::component("misbehave");
    let v2 = digest_of(&v2_file);
    wait_for_admin(&admin);
    assert_eq!(region_status(&admin, "europe")["active"]["digest"], v1);

    // Load runs on its own task while modules are published.
    let producer = {
        let (client, input) = (k.clone(), s.input.clone());
        tokio::spawn(async move {
            for n in 0..30 {
                client.put(&input, &round(n)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    k.wait_for(&s.output, &s.dlq, 40).await;

    // Unauthorised: no token, a wrong token. Nothing changes.
    let garbage = b"\0asm not really a component".to_vec();
    assert_eq!(http(&admin, "GET", "/v1/regions", None, b"").0, 401);
    let v2_bytes = std::fs::read(&v2_file).unwrap();
    assert_eq!(http(&admin, "PUT", "/v1/regions/europe/module", Some("wrong"), &v2_bytes).0, 401);
    assert_eq!(http(&admin, "POST", "/v1/regions/europe/rollback", None, b"").0, 401);
    assert_eq!(region_status(&admin, "europe")["active"]["digest"], v1);

    // Broken modules: refused with the reason, v1 keeps serving.
    let (status, body) = http(&admin, "PUT", "/v1/regions/europe/module", Some(TOKEN), &garbage);
    assert_eq!(status, 422, "{body}");
    let europe = region_status(&admin, "europe");
    assert_eq!(europe["active"]["digest"], v1);
    assert_eq!(europe["last_refusal"]["origin"], "admin-api");
    assert!(europe["last_refusal"]["reason"].as_str().unwrap().contains("not a WebAssembly component"), "{europe}");
    let other_world = std::fs::read(offerd_tests::component("other-world")).unwrap();
    let (status, body) = http(&admin, "PUT", "/v1/regions/europe/module", Some(TOKEN), &other_world);
    assert_eq!(status, 422, "{body}");
    assert!(region_status(&admin, "europe")["last_refusal"]["reason"].as_str().unwrap().contains("offers:rules"));
    assert_eq!(http(&admin, "PUT", "/v1/regions/atlantis/module", Some(TOKEN), &v2_bytes).0, 404);

    // v2 through the CLI: validated locally, then uploaded.
    let catalog_dir = catalogs();
    let publish =
        ["publish", "--region", "europe", v2_file.to_str().unwrap(), "--catalogs", catalog_dir.to_str().unwrap()];
    let out = offerd_cli(&[&publish[..], &admin_args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(region_status(&admin, "europe")["active"]["digest"], v2);
    assert_eq!(region_status(&admin, "europe")["previous"]["digest"], v1);
    assert_eq!(region_status(&admin, "north-america")["active"]["digest"], v1);
    assert_eq!(digest_of(&store.path().join("europe.wasm")), v2, "installed for restarts too");
    producer.await.unwrap();

    let (offers, dead) = k.wait_for(&s.output, &s.dlq, 240).await;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(offers.len(), 240, "every record once");
    let mut seen: HashMap<(String, Seq), usize> = HashMap::new();
    for o in &offers {
        *seen.entry((o["source"]["shard_id"].as_str().unwrap().to_owned(), seq(o))).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "no record twice");
    let europe_runs = digest_runs(&offers, "europe");
    assert!(!europe_runs.is_empty());
    for (shard, runs) in &europe_runs {
        let allowed = [vec![v1.clone(), v2.clone()], vec![v1.clone()], vec![v2.clone()]];
        assert!(allowed.contains(runs), "{shard}: {runs:?}");
    }
    assert!(europe_runs.values().any(|r| r.len() == 2), "the switch happened mid-stream: {europe_runs:?}");
    for (shard, runs) in digest_runs(&offers, "north-america") {
        assert_eq!(runs, vec![v1.clone()], "{shard}: another region was touched");
    }
    for o in offers.iter().filter(|o| o["rule"]["digest"] == v2) {
        assert_eq!(o["rule"]["version"], "0.0.1");
    }
    wait_for_metric(&metrics, "offerd_reloads_total{region=\"europe\",result=\"refused\"} 2");
    assert_eq!(metric_value(&metrics, "offerd_reloads_total{region=\"europe\",result=\"ok\"}"), 1.0);

    // Rollback: one step back to v1, in the store too.
    let out = offerd_cli(&[&["rollback", "--region", "europe"][..], &admin_args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(region_status(&admin, "europe")["active"]["digest"], v1);
    assert_eq!(digest_of(&store.path().join("europe.wasm")), v1);
    k.put(&s.input, &round(99)).await;
    let (offers, _) = k.wait_for(&s.output, &s.dlq, 248).await;
    let newest_europe = offers.iter().filter(|o| o["region"] == "europe").max_by_key(|o| seq(o)).unwrap();
    assert_eq!(newest_europe["rule"]["digest"], v1, "served by v1 again after the rollback");

    // A gate that takes seconds (20 golden cases that each run into the call
    // timeout) blocks neither status, nor rollback, nor metrics.
    let looping: Vec<Value> = (0..20)
        .map(|i| {
            serde_json::json!({"name": format!("loop {i}"), "expect": {"offers": ["x"]},
                "signup": {"user_id": "t", "location": {"country": "DE", "postal_code": "loop"}}})
        })
        .collect();
    std::fs::write(store.path().join("europe.cases.json"), serde_json::to_vec(&looping).unwrap()).unwrap();
    // New bytes (v2 with a custom section): were they v2's own, a rollback to
    // v2 landing before the upload would make the upload a no-op.
    let gated_bytes = xtask::component_edits::with_custom_section(&v2_bytes, 1);
    let gating = {
        let (admin, bytes) = (admin.clone(), gated_bytes);
        std::thread::spawn(move || http(&admin, "PUT", "/v1/regions/europe/module", Some(TOKEN), &bytes))
    };
    let deadline = Instant::now() + DEADLINE;
    while !http(&admin, "GET", "/v1/publishing", Some(TOKEN), b"").1.contains("europe") {
        assert!(Instant::now() < deadline && !gating.is_finished(), "the publication never showed as in progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut answered_while_gating = 0;
    while !gating.is_finished() {
        let started = Instant::now();
        let (status, _) = http(&admin, "GET", "/v1/regions", Some(TOKEN), b"");
        let (metrics_status, _) = http(&metrics, "GET", "/metrics", None, b"");
        assert_eq!((status, metrics_status), (200, 200));
        assert!(started.elapsed() < Duration::from_secs(1), "status took {:?} during a gate", started.elapsed());
        if answered_while_gating == 0 {
            // v1 → v2 (the previous version), while the gate runs.
            let (status, body) = http(&admin, "POST", "/v1/regions/europe/rollback", Some(TOKEN), b"");
            assert_eq!(status, 200, "{body}");
            // A second publication is answered at once, naming the first.
            let started = Instant::now();
            let (status, body) = http(&admin, "PUT", "/v1/regions/north-america/module", Some(TOKEN), &v2_bytes);
            assert_eq!(status, 409, "{body}");
            assert!(body.contains("another publication is being gated: europe"), "{body}");
            assert!(started.elapsed() < Duration::from_secs(1), "answered after {:?}", started.elapsed());
        }
        answered_while_gating += 1;
    }
    let (status, body) = gating.join().unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("golden cases failed"), "{body}");
    assert!(answered_while_gating >= 3, "the gate ended before it could be observed");
    assert_eq!(region_status(&admin, "europe")["active"]["digest"], v2, "the rollback made during the gate holds");
    child.stop();
}

/// The watched store and catalog directory: a module whose golden cases fail
/// is refused (v1 keeps serving), as is one whose init traps (through the
/// API); a catalog change re-gates and applies to its region only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_store_refuses_failing_cases_and_applies_a_catalog_change_to_its_region() {
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let catalog_dir = dir.path().join("catalogs");
    std::fs::create_dir(&catalog_dir).unwrap();
    for entry in std::fs::read_dir(catalogs()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, catalog_dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    // South America renamed `poisoned`: the misbehaving module's init traps there.
    let rename = |file: &str, from: &str, to: &str| {
        let text = std::fs::read_to_string(catalog_dir.join(file)).unwrap();
        assert!(text.contains(from));
        std::fs::write(catalog_dir.join(file), text.replace(from, to)).unwrap();
    };
    rename("regions.toml", "[regions.south-america]", "[regions.poisoned]");
    rename("south-america.toml", "region = \"south-america\"", "region = \"poisoned\"");
    std::fs::rename(catalog_dir.join("south-america.toml"), catalog_dir.join("poisoned.toml")).unwrap();
    let (admin, metrics) = (free_addr(), free_addr());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let child = k.offerd_with(
        &s,
        &dir.path().join("checkpoints.json"),
        store.path(),
        &catalog_dir,
        &["--admin-addr", &admin, "--admin-token-file", token_file.to_str().unwrap(), "--metrics-addr", &metrics],
    );
    let v1 = digest_of(&offerd_tests::component("reference"));
    wait_for_admin(&admin);
    k.put(&s.input, &round(0)).await;
    let (before, _) = k.wait_for(&s.output, &s.dlq, 8).await;

    // A module failing europe's golden cases, written by rename into the store.
    std::fs::copy(offerd_tests::repo("guest/cases/europe.json"), store.path().join("europe.cases.json")).unwrap();
    let staged = store.path().join(".europe.wasm.tmp");
    std::fs::copy(offerd_tests::component("misbehave"), &staged).unwrap();
    std::fs::rename(&staged, store.path().join("europe.wasm")).unwrap();
    wait_for_metric(&metrics, "offerd_reloads_total{region=\"europe\",result=\"refused\"} 1");
    let europe = region_status(&admin, "europe");
    assert_eq!(europe["active"]["digest"], v1, "v1 keeps serving");
    assert_eq!(europe["last_refusal"]["origin"], "module-store");
    assert!(europe["last_refusal"]["reason"].as_str().unwrap().contains("golden cases failed"), "{europe}");

    // A module whose init traps on the region's catalog, through the API.
    let misbehave = std::fs::read(offerd_tests::component("misbehave")).unwrap();
    let (status, body) = http(&admin, "PUT", "/v1/regions/poisoned/module", Some(TOKEN), &misbehave);
    assert_eq!(status, 422, "{body}");
    let poisoned = region_status(&admin, "poisoned");
    assert_eq!(poisoned["active"]["digest"], v1, "v1 keeps serving");
    assert!(poisoned["last_refusal"]["reason"].as_str().unwrap().contains("failed in init"), "{poisoned}");

    // north-america now offers one plan at most; europe is untouched.
    let file = catalog_dir.join("north-america.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace("max_offers = 5", "max_offers = 1");
    let staged = catalog_dir.join(".north-america.toml.tmp");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    wait_for_metric(&metrics, "offerd_reloads_total{region=\"north-america\",result=\"ok\"} 1");
    assert_eq!(metric_value(&metrics, "offerd_reloads_total{region=\"europe\",result=\"ok\"}"), 0.0);
    k.put(&s.input, &round(1)).await;
    let (after, dead) = k.wait_for(&s.output, &s.dlq, 16).await;
    child.stop();
    assert!(dead.is_empty(), "{dead:?}");
    let offers_of = |outs: &[Value], region: &str, n: u64| -> Vec<usize> {
        outs.iter()
            .filter(|o| o["region"] == region && o["source"]["sequence_number"].is_string())
            .filter(|o| before.iter().any(|b| b["source"] == o["source"]) == (n == 0))
            .map(|o| o["offers"].as_array().unwrap().len())
            .collect()
    };
    let (us_before, us_after) = (offers_of(&before, "north-america", 0), offers_of(&after, "north-america", 1));
    let (de_before, de_after) = (offers_of(&before, "europe", 0), offers_of(&after, "europe", 1));
    assert!(us_before.iter().all(|n| *n > 1), "{us_before:?}");
    assert!(us_after.len() == 4 && us_after.iter().all(|n| *n == 1), "{us_after:?}");
    assert_eq!(de_before, de_after, "europe's offers did not change");
}

/// A restart serves what was serving: v2, published through the API, keeps
/// serving europe after a restart although a module that fails the gate was
/// left on disk as `europe.wasm`; the refusal is visible, and rollback to v1
/// still works after the restart. The restarted admin API serves TLS, which
/// `offerd rollback` speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_what_was_serving_and_can_still_roll_back() {
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let admin = free_addr();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let checkpoints = dir.path().join("checkpoints.json");
    let token_arg = token_file.to_str().unwrap();
    let args = ["--admin-addr", admin.as_str(), "--admin-token-file", token_arg];
    let (v1, v2) = (digest_of(&offerd_tests::component("reference")), digest_of(&offerd_tests::component("misbehave")));

    let child = k.offerd_with(&s, &checkpoints, store.path(), &catalogs(), &args);
    wait_for_admin(&admin);
    let v2_bytes = std::fs::read(offerd_tests::component("misbehave")).unwrap();
    let (status, body) = http(&admin, "PUT", "/v1/regions/europe/module", Some(TOKEN), &v2_bytes);
    assert_eq!(status, 200, "{body}");
    child.stop();

    // Left on disk: a module that cannot pass the gate.
    std::fs::write(store.path().join("europe.wasm"), b"\0asm broken").unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let tls = ["--admin-tls-cert", cert_file.to_str().unwrap(), "--admin-tls-key", key_file.to_str().unwrap()];
    let child = k.offerd_with(&s, &checkpoints, store.path(), &catalogs(), &[&args[..], &tls].concat());
    wait_for_admin(&admin);
    let https = reqwest::Client::builder()
        .use_preconfigured_tls(offerd::tls::client_config(Some(&cert_file)).unwrap())
        .build()
        .unwrap();
    let url = format!("https://{admin}");
    let status_of = async |region: &str| -> Value {
        let body =
            https.get(format!("{url}/v1/regions")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
        let all: Vec<Value> = serde_json::from_str(&body).unwrap();
        all.into_iter().find(|r| r["region"] == region).unwrap()
    };
    let europe = status_of("europe").await;
    assert_eq!(europe["active"]["digest"], v2, "{europe}");
    assert_eq!(europe["previous"]["digest"], v1, "{europe}");
    assert_eq!(europe["last_refusal"]["origin"], "start-up", "{europe}");
    k.put(&s.input, &round(0)).await;
    let (offers, _) = k.wait_for(&s.output, &s.dlq, 8).await;
    assert!(offers.iter().filter(|o| o["region"] == "europe").all(|o| o["rule"]["digest"] == v2));

    let ca = cert_file.to_str().unwrap();
    let rollback = ["rollback", "--region", "europe", "--admin-url", &url, "--admin-token-file", token_arg];
    let out = offerd_cli(&[&rollback[..], &["--admin-ca", ca]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status_of("europe").await["active"]["digest"], v1);
    assert_eq!(digest_of(&store.path().join("europe.wasm")), v1, "installed for the next restart");
    // Without the certificate trusted, the client refuses the server.
    let out = offerd_cli(&rollback);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("calling https://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.stop();
}

/// A module that is slow to compile (one huge function) is compiled beside
/// the record path, not in its way: batches of the region being published
/// keep finishing on the old module while the new one compiles, with no gap
/// anywhere near the compile's length, then switch to the new module.
#[test]
fn a_module_slow_to_compile_does_not_hold_up_the_record_path() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use offerd::catalog::Catalogs;
    use offerd::engine::{Engine, Limits};
    use offerd::enricher::Outcome;
    use offerd::metrics::Metrics;
    use offerd::module_store::ModuleStore;
    use offerd::rollout::{Origin, Rollout};

    let store = store_with("reference");
    let catalogs = Arc::new(Catalogs::load(&super::catalogs()).unwrap());
    let (enricher, rollout) = Rollout::start(
        Engine::new(Limits::default()).unwrap(),
        ModuleStore::open(store.path()).unwrap(),
        &super::catalogs(),
        catalogs,
        Arc::new(Metrics::default()),
        false,
    )
    .unwrap();
    let inputs: Vec<String> = (0..20).map(|n| signup_at(&format!("u{n}"), n, "DE", 52.5, 13.4)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Each finished batch: when, and which module served it.
    let finished: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let worker = std::thread::spawn({
        let (enricher, stop, finished) = (enricher.clone(), stop.clone(), finished.clone());
        move || {
            let refs: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();
            while !stop.load(Ordering::Relaxed) {
                let digests: Vec<String> = enricher
                    .enrich(&refs)
                    .outcomes
                    .iter()
                    .map(|o| match o {
                        Outcome::Offer { line, .. } => {
                            let v: Value = serde_json::from_slice(line).unwrap();
                            v["rule"]["digest"].as_str().unwrap().to_owned()
                        }
                        Outcome::DeadLetter { .. } => panic!("a dead letter: {o:?}"),
                    })
                    .collect();
                assert!(digests.windows(2).all(|w| w[0] == w[1]), "one batch, one module: {digests:?}");
                finished.lock().unwrap().push((Instant::now(), digests[0].clone()));
            }
        }
    });

    let digest_of = |active: &offerd::enricher::Active| active.rules.module().info().digest.clone();
    let old = digest_of(&enricher.active("europe").unwrap());
    let slow = std::fs::read(offerd_tests::component("slow-to-compile")).unwrap();
    let started = Instant::now();
    let new = digest_of(&rollout.publish("europe", slow, Origin::ModuleStore).unwrap());
    let published = Instant::now();
    let deadline = published + DEADLINE;
    while finished.lock().unwrap().last().is_none_or(|(_, d)| *d != new) {
        assert!(Instant::now() < deadline, "no batch on the new module");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();

    let finished = finished.lock().unwrap();
    // Old module until the swap, the new one from then on.
    let switch = finished.iter().position(|(_, d)| *d == new).unwrap();
    assert!(finished[..switch].iter().all(|(_, d)| *d == old) && finished[switch..].iter().all(|(_, d)| *d == new));
    let compile = published - started;
    let during = finished[..switch].iter().filter(|(t, _)| *t >= started).count();
    assert!(during >= 10, "{during} batches finished on the old module during a {compile:?} publication");
    let longest_gap = finished.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!(longest_gap * 4 < compile, "longest gap between batches {longest_gap:?} during a {compile:?} compile");
    eprintln!("compile {compile:?}, {during} batches during it, longest gap {longest_gap:?}");
}
