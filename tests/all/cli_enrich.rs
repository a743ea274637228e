//! `offerd enrich` as a user runs it: every input line ends as exactly one
//! offer record or one dead letter with a specific reason; only an unusable
//! set-up stops it.

use serde_json::Value;

use super::{catalogs, lines, offerd, store_with};

fn signup(user: &str, country: &str, extra: &str) -> String {
    format!(
        r#"{{"user_id": "{user}", "location": {{"country": "{country}"{extra}}}, "signed_up_at": "2026-11-25T17:00:00Z"}}"#
    )
}

/// Good records from several regions, and one of every kind of bad input.
fn mixed_input() -> (Vec<u8>, Vec<&'static str>) {
    let mut expected = Vec::new();
    let mut input: Vec<Vec<u8>> = Vec::new();
    let mut add = |line: Vec<u8>, outcome: &'static str| {
        expected.push(outcome);
        input.push(line);
    };
    add(signup("berlin", "DE", r#", "postal_code": "10115", "lat": 52.52, "lon": 13.405"#).into(), "offer");
    add(signup("nyc", "US", r#", "lat": 40.71, "lon": -74.0"#).into(), "offer");
    add(signup("saopaulo", "BR", r#", "lat": -23.55, "lon": -46.63"#).into(), "offer");
    add(signup("tokyo", "JP", r#", "lat": 35.68, "lon": 139.69"#).into(), "offer");
    add(signup("lagos", "NG", "").into(), "offer");
    add(b"this is not json".to_vec(), "invalid-record");
    add(b"[1, 2, 3]".to_vec(), "invalid-record");
    add(br#"{"location": {"country": "DE"}}"#.to_vec(), "invalid-record");
    add(signup("", "DE", "").into(), "invalid-record");
    add(signup("latonly", "DE", r#", "lat": 52.5"#).into(), "invalid-record");
    add(signup("faraway", "DE", r#", "lat": 52.5, "lon": 200.0"#).into(), "invalid-record");
    add(signup("huge", "DE", &format!(r#", "city": "{}""#, "x".repeat(1 << 20))).into(), "invalid-record");
    add(b"{\"user_id\": \"\xff\xfe\", \"location\": {\"country\": \"DE\"}}".to_vec(), "invalid-record");
    add(Vec::new(), "invalid-record");
    add(signup("nowhere", "XX", "").into(), "unknown-region");
    add(br#"{"user_id": "moon", "location": {"country": "DE"}, "region": "moon"}"#.to_vec(), "unknown-region");
    add(br#"{"user_id": "wrongregion", "location": {"country": "US"}, "region": "europe"}"#.to_vec(), "rule-rejected");
    add(signup("oddpostal", "FR", r#", "postal_code": "75<001>""#).into(), "rule-rejected");
    let mut bytes = Vec::new();
    for line in &input {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    (bytes, expected)
}

#[test]
fn every_line_becomes_one_offer_or_one_dead_letter_with_its_reason() {
    let store = store_with("reference");
    let dir = tempfile::tempdir().unwrap();
    let (input, expected) = mixed_input();
    let input_path = dir.path().join("in.jsonl");
    std::fs::write(&input_path, &input).unwrap();
    let (out, dead) = (dir.path().join("out.jsonl"), dir.path().join("dead.jsonl"));
    let run = offerd(
        &[
            "enrich",
            "--modules",
            store.path().to_str().unwrap(),
            "--catalogs",
            catalogs().to_str().unwrap(),
            "--input",
            input_path.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--dead-letters",
            dead.to_str().unwrap(),
            "--batch-size",
            "4",
        ],
        b"",
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let offers = lines(&std::fs::read(&out).unwrap());
    let dead = lines(&std::fs::read(&dead).unwrap());
    assert_eq!(offers.len() + dead.len(), expected.len());

    let digest = format!("sha256:{}", sha256_hex(&std::fs::read(offerd_tests::component("reference")).unwrap()));
    let users: Vec<&str> = offers.iter().map(|o| o["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["berlin", "nyc", "saopaulo", "tokyo", "lagos"], "outputs keep input order");
    let regions: Vec<&str> = offers.iter().map(|o| o["region"].as_str().unwrap()).collect();
    assert_eq!(regions, ["europe", "north-america", "south-america", "asia-pacific", "middle-east-africa"]);
    for o in &offers {
        assert_eq!(o["rule"]["digest"], Value::from(digest.clone()));
        assert_eq!(o["rule"]["name"], "reference-offer-rules");
        assert!(!o["offers"].as_array().unwrap().is_empty(), "{o}");
    }
    let berlin = &offers[0]["offers"][0];
    assert_eq!(berlin["plan_id"], "eu-de-city-fiber", "postal 10115 is inner Berlin: {berlin}");
    assert_eq!(berlin["monthly_price"]["currency"], "EUR");
    assert_eq!(berlin["promo"]["id"], "fiber-launch-2026");
    assert_eq!(offers[1]["offers"][0]["monthly_price"]["currency"], "USD");

    let bad: Vec<&str> = expected.iter().copied().filter(|o| *o != "offer").collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, bad);
    for d in &dead {
        assert!(!d["detail"].as_str().unwrap().is_empty(), "{d}");
    }
    let not_utf8 =
        dead.iter().find(|d| d["input_encoding"] == "base64").expect("the invalid UTF-8 line is kept as base64");
    assert!(not_utf8["detail"].as_str().unwrap().contains("UTF-8"));
    let huge = dead.iter().find(|d| d["input"].as_str().is_some_and(|i| i.contains("\"huge\""))).unwrap();
    assert!(huge["detail"].as_str().unwrap().contains("limit is 65536"), "{}", huge["detail"]);
    let rejected = dead.iter().find(|d| d["reason"] == "rule-rejected").unwrap();
    assert_eq!(rejected["rule"]["digest"], Value::from(digest));
    assert!(rejected["detail"].as_str().unwrap().starts_with("country-not-served"), "{rejected}");
}

#[test]
fn module_faults_become_dead_letters_and_the_run_goes_on() {
    let store = store_with("misbehave");
    let input: String = ["ok", "trap", "loop", "alloc", "ok"]
        .iter()
        .enumerate()
        .map(|(i, cmd)| format!("{}\n", signup(&format!("u{i}"), "DE", &format!(r#", "postal_code": "{cmd}""#))))
        .collect();
    let run = offerd(
        &[
            "enrich",
            "--modules",
            store.path().to_str().unwrap(),
            "--catalogs",
            catalogs().to_str().unwrap(),
            "--call-timeout-ms",
            "50",
        ],
        input.as_bytes(),
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let users: Vec<Value> = lines(&run.stdout).iter().map(|o| o["user_id"].clone()).collect();
    assert_eq!(users, ["u0", "u4"]);
    // Dead letters go to stderr by default, beside (non-JSON) warnings.
    let stderr = String::from_utf8_lossy(&run.stderr);
    let reasons: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["module-trap", "module-timeout", "module-memory"]);
    let dead_users: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|d| d["user_id"].as_str().unwrap_or("<none>").to_owned())
        .collect();
    assert_eq!(dead_users, ["u1", "u2", "u3"]);
    // One log line for the batch: the first failing record's user, where
    // the guest trapped, and how many more failed with it.
    let logged: Vec<&str> = stderr.lines().filter(|l| l.contains("module failed on a record")).collect();
    assert_eq!(logged.len(), 1, "{stderr}");
    assert!(logged[0].contains("user_id=\"u1\"") && logged[0].contains("reason=\"module-trap\""), "{}", logged[0]);
    // misbehave panics in its export itself: that is the guest function named.
    assert!(
        logged[0].contains("in offers:rules/rules@1.0.0#enrich") && logged[0].contains("more_in_batch=2"),
        "{}",
        logged[0]
    );
}

#[test]
fn an_unusable_setup_stops_with_a_message_that_says_what_and_where() {
    let cat = catalogs();
    let cat = cat.to_str().unwrap();
    let run = offerd(&["enrich", "--modules", "/no/such/dir", "--catalogs", cat], b"");
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("/no/such/dir is not a directory"));

    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(garbage.path().join("default.wasm"), b"garbage").unwrap();
    let run = offerd(&["enrich", "--modules", garbage.path().to_str().unwrap(), "--catalogs", cat], b"");
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("no module loads") && stderr.contains("default.wasm: not a WebAssembly component"),
        "{stderr}"
    );

    let store = store_with("reference");
    let bad = tempfile::tempdir().unwrap();
    for f in [
        "regions.toml",
        "europe.toml",
        "north-america.toml",
        "south-america.toml",
        "asia-pacific.toml",
        "middle-east-africa.toml",
    ] {
        std::fs::copy(catalogs().join(f), bad.path().join(f)).unwrap();
    }
    let broken =
        std::fs::read_to_string(bad.path().join("europe.toml")).unwrap().replacen("up_mbps = 100", "up_mbps = -1", 1);
    std::fs::write(bad.path().join("europe.toml"), broken).unwrap();
    let run = offerd(
        &["enrich", "--modules", store.path().to_str().unwrap(), "--catalogs", bad.path().to_str().unwrap()],
        b"",
    );
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("europe.toml: plans[0].up_mbps: invalid value"), "{stderr}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The digest is checked against an independent implementation: sha256sum.
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}
