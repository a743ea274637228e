//! `cargo xtask bench-stream`: `offerd run` end to end against kinesis-local.
//!
//! Two phases on one offerd process:
//! 1. steady load: sign-ups written at a fixed rate; a tailer reads the
//!    output stream as fast as the server answers and reports put-acknowledged
//!    → output-visible latency (p50, p99);
//! 2. backlog: a burst written at once; records/s until all are out.
//!
//! For both, offerd's own CPU time (user + system, from /proc) per record:
//! the local server is the bottleneck, so CPU per record is the figure that
//! speaks for the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;
use serde_json::Value;

use crate::demo::{self, Progress, Streams};
use xtask::kinesis_local::{self, npm_ci};

pub struct Options {
    /// Sign-ups per second in the steady phase.
    pub rate: usize,
    pub seconds: u64,
    /// Sign-ups in the backlog phase.
    pub burst: usize,
    /// offerd's `--batch-window-ms`.
    pub batch_window_ms: u64,
}

pub fn run(options: &Options) -> Result<()> {
    let root = xtask::workspace_root();
    let work = root.join("target/bench-stream");
    let modules = work.join("modules");
    std::fs::create_dir_all(&modules)?;
    xtask::ensure_guest_target()?;
    std::fs::write(modules.join("default.wasm"), xtask::build_component("offer-rules")?)?;
    crate::demo::build_offerd(true)?;
    if !root.join("node_modules/kinesis-local/main.js").is_file() {
        npm_ci(&root)?;
    }
    let server = kinesis_local::start(&root)?;
    let aws_env = crate::demo::local_aws_env(&server.endpoint, None);
    let streams =
        Streams { input: "bench-signups".into(), output: "bench-offers".into(), dead_letters: "bench-dead".into() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = demo::client(&aws_env).await;
        for (name, shards) in [(&streams.input, 2), (&streams.output, 2), (&streams.dead_letters, 1)] {
            demo::create_stream(&client, name, shards).await?;
        }
        let metrics = demo::free_addr()?;
        let checkpoints = work.join("checkpoints.json");
        let _ = std::fs::remove_file(&checkpoints);
        let window = options.batch_window_ms.to_string();
        let offerd = demo::spawn_offerd(
            &root,
            &streams,
            Some(&modules),
            Some(&checkpoints),
            &metrics,
            &aws_env,
            &["--batch-window-ms", &window],
        )?;
        let pid = offerd.id();
        let result = phases(&client, &streams, &root, options, &metrics, pid).await;
        demo::stop(offerd)?;
        result
    })
}

async fn phases(
    client: &Client,
    streams: &Streams,
    root: &std::path::Path,
    o: &Options,
    metrics: &str,
    pid: u32,
) -> Result<()> {
    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 99)?;
    wait_ready(metrics).await?;

    // Idle: what offerd spends with nothing to read (polling, timers).
    let idle_for = Duration::from_secs(5);
    let cpu_before = cpu_time(pid)?;
    tokio::time::sleep(idle_for).await;
    let idle_per_sec = (cpu_time(pid)? - cpu_before).as_secs_f64() / idle_for.as_secs_f64();
    println!("idle: offerd CPU {:.1} ms per second (2 shards polled, timers)", idle_per_sec * 1e3);
    let marginal = |cpu: Duration, wall: Duration, records: usize| {
        (cpu.as_secs_f64() - idle_per_sec * wall.as_secs_f64()).max(0.0) * 1e6 / records as f64
    };

    // Phase 1: steady load, latency.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let tailers = tail(client, &streams.output, seen.clone()).await?;
    let total = o.rate * o.seconds as usize;
    let signups = generator.batch(total, None);
    let mut acked: HashMap<String, Instant> = HashMap::with_capacity(total);
    let cpu_before = cpu_time(pid)?;
    let started = Instant::now();
    let per_tick = (o.rate / 20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for chunk in signups.chunks(per_tick) {
        tick.tick().await;
        demo::put(client, &streams.input, chunk).await?;
        let now = Instant::now();
        for line in chunk {
            acked.insert(user_id(line), now);
        }
    }
    wait_processed(metrics, total as u64).await?;
    let cpu = cpu_time(pid)? - cpu_before;
    let wall = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("no panics while locked").len() < total {
        if Instant::now() > deadline {
            bail!("the tailer saw {} of {total} outputs", seen.lock().expect("no panics").len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tailers {
        t.abort();
    }
    let mut latencies: Vec<Duration> = {
        let seen = seen.lock().expect("no panics while locked");
        acked.iter().filter_map(|(user, put)| seen.get(user).map(|s| s.saturating_duration_since(*put))).collect()
    };
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!("steady: {total} sign-ups at {}/s over {:.1} s", o.rate, wall.as_secs_f64());
    println!(
        "  put acknowledged → output visible: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3
    );
    println!(
        "  offerd CPU: {:.1} µs per record all in, {:.1} µs above idle",
        cpu.as_secs_f64() * 1e6 / total as f64,
        marginal(cpu, wall, total)
    );

    // Phase 2: backlog.
    let burst = generator.batch(o.burst, Some(50));
    for chunk in burst.chunks(500) {
        demo::put(client, &streams.input, chunk).await?;
    }
    let cpu_before = cpu_time(pid)?;
    let started = Instant::now();
    wait_processed(metrics, (total + o.burst) as u64).await?;
    let (wall, cpu) = (started.elapsed(), cpu_time(pid)? - cpu_before);
    println!("backlog: {} sign-ups (2 % malformed) written first, then drained", o.burst);
    println!(
        "  {:.0} records/s through kinesis-local; offerd CPU: {:.1} µs per record all in, {:.1} µs above idle",
        o.burst as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / o.burst as f64,
        marginal(cpu, wall, o.burst)
    );
    Ok(())
}

fn user_id(line: &str) -> String {
    serde_json::from_str::<Value>(line).ok().and_then(|v| v["user_id"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// User + system CPU time of a process so far, from /proc/<pid>/stat.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc (Linux only)")?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').context("odd /proc stat")?.1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Ok(Duration::from_millis(ticks * 10))
}

async fn wait_ready(metrics: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Progress::scrape(metrics).is_err() {
        if Instant::now() > deadline {
            bail!("offerd's metrics never answered on {metrics}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_processed(metrics: &str, want: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let p = Progress::scrape(metrics)?;
        if p.offers() + p.dead_letters >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("offerd processed {} of {want}", p.offers() + p.dead_letters);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One task per output shard, reading from the tip without pause, noting
/// when each user's offer first became visible.
async fn tail(
    client: &Client,
    stream: &str,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let shards = client.list_shards().stream_name(stream).send().await?;
    let mut tasks = Vec::new();
    for shard in shards.shards() {
        let it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::Latest)
            .send()
            .await?;
        let mut iterator = it.shard_iterator().context("no iterator")?.to_owned();
        let (client, seen) = (client.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(out) = client.get_records().shard_iterator(&iterator).send().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let now = Instant::now();
                {
                    let mut seen = seen.lock().expect("no panics while locked");
                    for r in out.records() {
                        if let Ok(v) = serde_json::from_slice::<Value>(r.data().as_ref())
                            && let Some(user) = v["user_id"].as_str()
                        {
                            seen.entry(user.to_owned()).or_insert(now);
                        }
                    }
                }
                match out.next_shard_iterator() {
                    Some(next) => iterator = next.to_owned(),
                    None => return,
                }
                if out.records().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    Ok(tasks)
}
