//! offerd's HTTP servers (metrics and health, the admin API) bound their
//! clients: a flood of half-sent requests costs a bounded number of
//! descriptors, is closed by the header timeout, and never stops the stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use super::stream::{DEADLINE, Kinesis, Offerd, Seq, free_addr, http_get, streams};
use super::{catalogs, store_with};

/// Half-sent requests held open, over both servers.
const HALF_OPEN: usize = 2_000;
/// offerd's soft limit of open descriptors when it starts, below the
/// connections held: it must raise it, and must not need to.
const STARTING_LIMIT: u64 = 1_024;

fn sign_ups(round: usize) -> Vec<(String, String)> {
    (0..50).map(|u| (format!("u{u}"), super::stream::signup(&format!("u{u}"), round))).collect()
}

/// 1,000 connections to each server, each with a request cut off in its
/// headers, held while sign-ups flow: every record comes out and is
/// checkpointed, offerd holds at most its connection caps' worth of them,
/// and the header timeout closes the ones it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_connections_leave_the_stream_checkpointing() {
    let k = Kinesis::new().await;
    let s = streams(&k, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with("reference");
    let checkpoints = dir.path().join("checkpoints.json");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "a-token-long-enough-for-the-admin-api-0123456789\n").unwrap();
    let (metrics, admin) = (free_addr(), free_addr());
    let mut command = k.offerd_command(&s, store.path(), &catalogs());
    command
        .args(["--checkpoints", checkpoints.to_str().unwrap(), "--metrics-addr", &metrics, "--admin-addr", &admin])
        .args(["--admin-token-file", token_file.to_str().unwrap()]);
    // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
            limit.rlim_cur = STARTING_LIMIT.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
            Ok(())
        });
    }
    let child = Offerd(Some(command.spawn().unwrap()));
    let pid = child.0.as_ref().unwrap().id();
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(&metrics).is_err() || TcpStream::connect(&admin).is_err() {
        assert!(Instant::now() < deadline, "offerd never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut inputs = k.put(&s.input, &sign_ups(0)).await;
    k.wait_for(&s.output, &s.dlq, inputs.len()).await;

    let mut held: Vec<TcpStream> = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        let addr = if i % 2 == 0 { &metrics } else { &admin };
        let mut conn = TcpStream::connect(addr).unwrap();
        // A closed connection (over the cap) may refuse the write: fine.
        let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: offerd\r\nX-Half: ");
        held.push(conn);
    }
    inputs.extend(k.put(&s.input, &sign_ups(1)).await);
    k.wait_for(&s.output, &s.dlq, inputs.len()).await;
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(descriptors < 2 * 128 + 200, "offerd holds {descriptors} descriptors with {HALF_OPEN} clients");
    let last: std::collections::BTreeMap<&str, &Seq> =
        inputs.iter().map(|(shard, seq)| (shard.as_str(), seq)).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&checkpoints).unwrap_or_default()).unwrap_or_default();
        if last
            .iter()
            .all(|(shard, seq)| written["shards"][shard].as_str().is_some_and(|at| (at.len(), at) >= (seq.0, &seq.1)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoints stopped at {written}, want {last:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The connections offerd took are closed once their headers are late.
    let mut first = held.swap_remove(0);
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let closed = first.read_to_end(&mut answer);
    assert!(
        closed.is_ok() || closed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?}"
    );
    drop(held);
    let (status, _) = http_get(&metrics, "/healthz");
    assert_eq!(status, 200);
    child.stop();
}
