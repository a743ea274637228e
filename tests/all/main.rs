//! Integration tests, one binary: modules built from source by build.rs,
//! the real catalogs, and the real `offerd` process.

mod cli_diff;
mod cli_enrich;
mod cli_test;
mod cli_wit;
mod engine;
mod fleet;
mod leases;
mod proxy;
mod registry;
mod rollout;
mod rule_author;
mod servers;
mod stream;

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `offerd` with `args` and `stdin`, to completion.
fn offerd(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_offerd-cli"))
        .args(args)
        .env("OFFERD_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning offerd");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Written from a thread so a large input cannot deadlock on a full pipe.
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().expect("waiting for offerd");
    writer.join().unwrap().unwrap();
    output
}

/// A module store holding `component` as `default.wasm`.
fn store_with(component: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(offerd_tests::component(component), dir.path().join("default.wasm")).unwrap();
    dir
}

fn catalogs() -> PathBuf {
    offerd_tests::repo("catalogs")
}

fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
