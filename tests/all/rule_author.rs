//! A rule author's whole loop, run from `docs/writing-rules.md` itself: every
//! `sh` block of the guide, in order, in a directory outside the workspace,
//! with a cargo target directory of its own and `offerd` on the PATH. Then
//! what each step left behind is checked: JUnit XML, coverage, the diff,
//! signatures, the offer records, the live publication and the rollback.
//!
//! The guide's conventions: one command per line; `cd DIR` moves the
//! following commands; `# exits N` is the exit status a step must have
//! (0 otherwise); a line ending in `&` runs in the background until the
//! test ends, and the guide goes on once its `--admin-addr` accepts
//! connections. The guide's admin address is replaced by a free one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stream::{DEADLINE, Kinesis, free_addr, streams};

/// The admin address the guide uses; each run gets a free one instead.
const GUIDE_ADMIN_ADDR: &str = "127.0.0.1:9101";

/// One step of the guide.
#[derive(Debug)]
struct Step {
    line: String,
    exits: i32,
    background: bool,
}

/// The guide's commands, in order.
fn steps(guide: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut in_sh = false;
    for raw in guide.lines() {
        let line = raw.trim();
        if line.starts_with("```") {
            in_sh = !in_sh && line == "```sh";
            continue;
        }
        if !in_sh || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, exits) = match line.rsplit_once("# exits ") {
            Some((command, code)) => (command.trim(), code.trim().parse().expect("`# exits N` takes a number")),
            None => (line, 0),
        };
        let background = command.ends_with('&');
        let command = command.trim_end_matches('&').trim().to_owned();
        steps.push(Step { line: command, exits, background });
    }
    steps
}

/// What a finished step printed.
struct Ran {
    line: String,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Background processes, killed when the test ends.
struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn the_output_of<'a>(ran: &'a [Ran], starts_with: &str) -> &'a Ran {
    ran.iter().rev().find(|r| r.line.starts_with(starts_with)).unwrap_or_else(|| panic!("no step {starts_with:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_authors_guide_runs_as_written() {
    let k = Kinesis::new().await;
    let s = streams(&k, 1).await;
    assert_eq!((s.input.as_str(), s.output.as_str(), s.dlq.as_str()), ("signups", "offers", "dead-letters"));

    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_offerd-cli"), bin.join("offerd")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // A target directory of the scaffold's own (kept between runs, so only
    // the first run builds wit-bindgen), never the workspace's.
    let target_dir = offerd_tests::repo("target/rule-author");
    let guide_file = offerd_tests::repo("docs/writing-rules.md");
    let guide = std::fs::read_to_string(&guide_file).unwrap();
    assert!(guide.contains(GUIDE_ADMIN_ADDR));
    let steps = steps(&guide.replace(GUIDE_ADMIN_ADDR, &free_addr()));
    assert!(steps.len() > 20, "{steps:?}");

    let mut cwd: PathBuf = work.path().to_owned();
    let mut background = Background(Vec::new());
    let mut ran: Vec<Ran> = Vec::new();
    let started = Instant::now();
    for step in &steps {
        if let Some(dir) = step.line.strip_prefix("cd ") {
            cwd = cwd.join(dir.trim());
            continue;
        }
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(if step.background { format!("exec {}", step.line) } else { step.line.clone() })
            .current_dir(&cwd)
            .env("PATH", &path)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("OFFERD_LOG", "warn")
            .envs(k.env());
        // Flags of the outer (test) build must not reach the guide's builds.
        xtask::without_outer_build_flags(&mut command);
        if step.background {
            background.0.push(command.stdout(Stdio::null()).spawn().unwrap());
            let child = background.0.last_mut().unwrap();
            let addr = step.line.split("--admin-addr ").nth(1).and_then(|rest| rest.split_whitespace().next());
            let addr = addr.expect("a background step names its --admin-addr");
            let deadline = Instant::now() + DEADLINE;
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(child.try_wait().unwrap().is_none(), "`{}` exited", step.line);
                assert!(Instant::now() < deadline, "nothing listens on {addr} after `{}`", step.line);
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        let start = Instant::now();
        let out = command.output().unwrap();
        let took = start.elapsed();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(step.exits), "`{}` in {}:\n{stdout}\n{stderr}", step.line, cwd.display());
        eprintln!("{:>7.2} s  {}", took.as_secs_f64(), step.line);
        ran.push(Ran { line: step.line.clone(), stdout: stdout.into_owned(), stderr: stderr.into_owned(), took });
    }
    let tool_time: Duration = ran.iter().map(|r| r.took).sum();
    eprintln!(
        "guide: {} steps, {:.1} s of tool time, {:.1} s in all",
        ran.len(),
        tool_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let crate_dir = work.path().join("my-rules");

    // Build: the component was gated on every stock region.
    let build = the_output_of(&ran, "offerd build --release -o rules.wasm");
    assert!(build.stdout.contains("my-rules 0.1.0, sha256:"), "{}", build.stdout);
    assert_eq!(build.stdout.matches(": gate passed (8 golden cases)").count(), 5, "{}", build.stdout);

    // Test: coverage listed; the first JUnit report was overwritten by the
    // failing run of section 5, which must carry the rank-by-rank diff.
    let first_test = ran.iter().find(|r| r.line.starts_with("offerd test --module rules.wasm")).unwrap();
    assert!(first_test.stdout.contains("40 passed, 0 failed"), "{}", first_test.stdout);
    for what in ["plans", "promos", "metros"] {
        let line = format!("coverage europe: {what} no case reaches (");
        assert!(first_test.stdout.contains(&line), "{}", first_test.stdout);
    }
    // The starting rule never offers a promo.
    assert!(first_test.stdout.contains("coverage europe: promos no case reaches (3 of 3)"), "{}", first_test.stdout);
    assert!(first_test.stdout.contains("of 200 ms)"), "{}", first_test.stdout);
    let failing = the_output_of(&ran, "offerd test --module rules-v2.wasm --catalogs catalogs cases/*.json --junit");
    assert!(failing.stdout.contains("FAIL ") && failing.stdout.contains("≠ -"), "{}", failing.stdout);
    let junit = std::fs::read_to_string(crate_dir.join("junit.xml")).unwrap();
    let xml = roxmltree::Document::parse(&junit).unwrap_or_else(|e| panic!("{e}:\n{junit}"));
    let cases: Vec<_> = xml.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), 40);
    let failures: Vec<_> = xml.descendants().filter(|n| n.has_tag_name("failure")).collect();
    assert!(!failures.is_empty() && failures.len() < 40, "{junit}");
    assert!(failures.iter().all(|f| f.attribute("message").unwrap().contains("≠ -")), "{junit}");
    assert_eq!(xml.root_element().attribute("failures"), Some(failures.len().to_string().as_str()));

    // The gate refused v2 before its cases were updated, and passed after.
    let refused_build = ran.iter().find(|r| r.line == "offerd build --release -o rules-v2.wasm").unwrap();
    assert!(refused_build.stdout.contains("REFUSED: golden cases failed"), "{}", refused_build.stdout);
    assert!(the_output_of(&ran, "offerd build --release -o rules-v2.wasm").stdout.contains("my-rules 0.2.0"));

    // Diff: offers removed (the third), on sample traffic.
    let diff = the_output_of(&ran, "offerd diff");
    assert!(diff.stdout.contains("removed"), "{}", diff.stdout);
    let update = the_output_of(&ran, "offerd test --module rules-v2.wasm --catalogs catalogs cases/*.json --update");
    assert!(update.stdout.contains("updated ") && !update.stdout.contains("updated 0 "), "{}", update.stdout);

    // Signatures: unsigned refused with the trusted key named; records name the signer.
    let keys: Vec<PathBuf> = std::fs::read_dir(work.path().join("keys")).unwrap().map(|e| e.unwrap().path()).collect();
    let key = keys.iter().find(|p| p.extension().is_some_and(|e| e == "key")).unwrap();
    let key_id = key.file_stem().unwrap().to_str().unwrap().to_owned();
    let unsigned = ran.iter().find(|r| r.line.starts_with("offerd publish --region europe")).unwrap();
    assert!(
        unsigned.stderr.contains("module is not signed") && unsigned.stderr.contains(&key_id),
        "{}",
        unsigned.stderr
    );
    let offers = std::fs::read_to_string(crate_dir.join("offers.jsonl")).unwrap();
    let offers: Vec<Value> = offers.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(offers.len() >= 150, "{}", offers.len());
    for o in &offers {
        assert_eq!(o["region"], "europe");
        assert_eq!(o["rule"]["name"], "my-rules");
        assert_eq!(o["rule"]["signed_by"], key_id.as_str());
        assert!(o["offers"].as_array().unwrap().len() <= 3);
    }

    // Live: v2 served after the publication (the answer names it), v1 after the rollback.
    let published = the_output_of(&ran, "offerd publish --region europe --catalogs catalogs --cases");
    let answer: Value = serde_json::from_str(published.stdout.trim()).unwrap();
    assert_eq!((answer["version"].as_str(), answer["signed_by"].as_str()), (Some("0.2.0"), Some(key_id.as_str())));
    let rolled_back: Value = serde_json::from_str(the_output_of(&ran, "offerd rollback").stdout.trim()).unwrap();
    assert_eq!(rolled_back["version"], "0.1.0");
    let signups: Vec<(String, String)> = (0..10)
        .map(|i| {
            let user = format!("berlin-{i}");
            (
                user.clone(),
                format!(r#"{{"user_id": "{user}", "location": {{"country": "DE", "lat": 52.52, "lon": 13.405}}}}"#),
            )
        })
        .collect();
    k.put(&s.input, &signups).await;
    let (live, dead) = k.wait_for(&s.output, &s.dlq, 10).await;
    assert!(dead.is_empty(), "{dead:?}");
    for o in &live {
        assert_eq!(
            (o["rule"]["version"].as_str(), o["rule"]["signed_by"].as_str()),
            (Some("0.1.0"), Some(key_id.as_str()))
        );
        assert_eq!(o["offers"].as_array().unwrap().len(), 3, "{o}");
    }

    // A module signed by another key is refused with that key's id.
    let other_keys = work.path().join("other-keys");
    let keygen = super::offerd(&["keygen", "--out", other_keys.to_str().unwrap()], b"");
    assert!(keygen.status.success());
    let other = std::fs::read_dir(&other_keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "key"))
        .unwrap();
    let other_id = other.file_stem().unwrap().to_str().unwrap();
    let foreign = work.path().join("foreign.wasm");
    let sign = super::offerd(
        &[
            "sign",
            "--key",
            other.to_str().unwrap(),
            crate_dir.join("rules-v2.wasm").to_str().unwrap(),
            "-o",
            foreign.to_str().unwrap(),
        ],
        b"",
    );
    assert!(sign.status.success(), "{}", String::from_utf8_lossy(&sign.stderr));
    let store = work.path().join("store");
    let refused = super::offerd(
        &[
            "publish",
            "--region",
            "europe",
            "--catalogs",
            crate_dir.join("catalogs").to_str().unwrap(),
            "--trusted-keys",
            work.path().join("trusted").to_str().unwrap(),
            "--to",
            store.to_str().unwrap(),
            foreign.to_str().unwrap(),
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("signed by key {other_id}, which is not in --trusted-keys")), "{stderr}");
    drop(background);
}

/// The example in `examples/promo-first`, built from the scaffold, passes
/// its own unit tests and golden cases through the publication gate, and
/// ranks promos first.
#[test]
fn the_promo_first_example_builds_and_passes_its_gate() {
    let example = offerd_tests::repo("examples/promo-first");
    let target_dir = offerd_tests::repo("target/rule-author");
    let out = tempfile::tempdir().unwrap();
    let module = out.path().join("promo-first.wasm");
    let run = |program: &str, args: &[&str]| {
        let mut command = Command::new(program);
        command.args(args).current_dir(&example).env("CARGO_TARGET_DIR", &target_dir);
        xtask::without_outer_build_flags(&mut command);
        let out = command.output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{program} {args:?}:\n{stdout}\n{stderr}");
        stdout.into_owned()
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(&cargo, &["test", "--quiet"]);
    let built = run(env!("CARGO_BIN_EXE_offerd-cli"), &["build", "--release", "-o", module.to_str().unwrap()]);
    assert!(built.contains("promo-first 0.1.0"), "{built}");
    assert_eq!(built.matches(": gate passed (8 golden cases)").count(), 5, "{built}");

    // Promos first, at their price, on a sign-up in Berlin.
    let signup = r#"{"user_id": "u", "location": {"country": "DE", "lat": 52.52, "lon": 13.405}, "signed_up_at": "2026-11-25T12:00:00Z"}"#;
    let store = out.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(&module, store.join("europe.wasm")).unwrap();
    let enriched = super::offerd(
        &["enrich", "--modules", store.to_str().unwrap(), "--catalogs", super::catalogs().to_str().unwrap()],
        signup.as_bytes(),
    );
    let record: Value = serde_json::from_slice(&enriched.stdout).unwrap();
    let offers = record["offers"].as_array().unwrap();
    assert!(offers.len() > 3, "{record}");
    let with_promo = offers.iter().take_while(|o| !o["promo"].is_null()).count();
    assert!(with_promo > 0 && offers[with_promo..].iter().all(|o| o["promo"].is_null()), "{record}");
}
