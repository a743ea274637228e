//! `offerd test`: the guest's own golden cases pass under the production
//! engine; a wrong expectation fails with a readable diff and exit 1.

use super::offerd;
use offerd_tests::{component, repo};

fn run(cases: &[&str]) -> std::process::Output {
    let module = component("reference");
    let catalog = repo("catalogs/europe.toml");
    let mut args = vec!["test", "--module", module.to_str().unwrap(), "--catalog", catalog.to_str().unwrap()];
    args.extend_from_slice(cases);
    offerd(&args, b"")
}

#[test]
fn the_guests_golden_cases_pass_in_every_region() {
    for region in ["europe", "north-america", "south-america", "asia-pacific", "middle-east-africa"] {
        let module = component("reference");
        let catalog = repo(&format!("catalogs/{region}.toml"));
        let cases = repo(&format!("guest/cases/{region}.json"));
        let out = offerd(
            &[
                "test",
                "--module",
                module.to_str().unwrap(),
                "--catalog",
                catalog.to_str().unwrap(),
                cases.to_str().unwrap(),
            ],
            b"",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{region}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let last = stdout.lines().last().unwrap();
        assert!(last.ends_with(" passed, 0 failed") && !last.starts_with("0 "), "{region}: {last}");
    }
}

#[test]
fn a_wrong_expectation_prints_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("wrong.json");
    std::fs::write(
        &cases,
        r#"[
          {"name": "right", "signup": {"user_id": "a", "location": {"country": "FI", "lat": 68.5, "lon": 27.0}},
           "expect": {"offers": ["eu-sat-250", "eu-sat-100"]}},
          {"name": "wrong order", "signup": {"user_id": "b", "location": {"country": "FI", "lat": 68.5, "lon": 27.0}},
           "expect": {"offers": ["eu-sat-100", "eu-sat-250"]}},
          {"name": "wrong rejection", "signup": {"user_id": "c", "location": {"country": "US"}},
           "expect": {"rejected": "no-coverage"}}
        ]"#,
    )
    .unwrap();
    let out = run(&[cases.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok   ") && stdout.contains("FAIL ") && stdout.contains("wrong order"), "{stdout}");
    assert!(stdout.contains("≠ eu-sat-250"), "{stdout}");
    assert!(stdout.contains("expected rejection \"no-coverage\""), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("1 passed, 2 failed"));
}

/// `--watch` re-runs when a case file is replaced by a rename (as editors,
/// `--update` and `offerd build -o` write), not only on the first change.
#[test]
fn watch_reruns_on_every_change_of_a_case_file() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    let case = |expect: &str| {
        format!(
            r#"{{"name": "lapland", "signup": {{"user_id": "a", "location": {{"country": "FI", "lat": 68.5, "lon": 27.0}}}},
                "expect": {{"offers": [{expect}]}}}}"#
        )
    };
    let replace = |text: String| {
        let tmp = dir.path().join("cases.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &cases).unwrap();
    };
    replace(case(r#""eu-sat-250", "eu-sat-100""#));
    let module = component("reference");
    let catalog = repo("catalogs/europe.toml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_offerd-cli"))
        .args(["test", "--watch", "--module", module.to_str().unwrap(), "--catalog", catalog.to_str().unwrap()])
        .arg(&cases)
        .env("OFFERD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread, so a watch that never re-runs fails at the deadline
    // instead of blocking the test.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut summaries = Vec::new();
    let next_summary = || loop {
        let line = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("offerd test --watch did not re-run");
        if line.ends_with(" failed") {
            return line;
        }
    };
    summaries.push(next_summary());
    replace(case(r#""eu-sat-100", "eu-sat-250""#));
    summaries.push(next_summary());
    replace(case(r#""eu-sat-250", "eu-sat-100""#));
    summaries.push(next_summary());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(summaries, ["1 passed, 0 failed", "0 passed, 1 failed", "1 passed, 0 failed"]);
}
