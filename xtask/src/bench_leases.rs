//! `cargo xtask bench-leases`: several workers on one stream, measured
//! against kinesis-local and dynalite (default lease settings: 3 s lease,
//! renewal every second).
//!
//! 1. Failover: two workers share a 4-shard stream under a steady trickle of
//!    sign-ups; one is killed with -9; the time until a record put after the
//!    kill on each of its shards comes out of the other worker. p50 and p99
//!    over the trials.
//! 2. Lease-table requests per worker per second, idle and under load, with
//!    8 and 64 shards (from each worker's `offerd_lease_table_requests_total`).
//! 3. Host CPU per record with full batches, 1 and 3 workers, through
//!    kinesalite (kinesis-local serves a few hundred records/s, so batches
//!    stay small there): a backlog of sign-ups on 4 shards, batches of 500.

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use serde_json::Value;

use crate::demo::{Streams, client, create_stream, free_addr, metric as scrape, metrics_text, spawn_offerd, stop};
use xtask::dynalite;
use xtask::kinesalite;
use xtask::kinesis_local::{self, npm_ci};

pub struct Options {
    pub trials: usize,
    /// Sign-ups in the CPU phase's backlog.
    pub backlog: usize,
}

/// (length, digits): sequence numbers ordered as numbers.
type Seq = (usize, String);

fn seq(text: &str) -> Seq {
    (text.len(), text.to_owned())
}

pub fn run(options: &Options) -> Result<()> {
    let root = xtask::workspace_root();
    let modules = root.join("target/bench-leases/modules");
    std::fs::create_dir_all(&modules)?;
    xtask::ensure_guest_target()?;
    std::fs::write(modules.join("default.wasm"), xtask::build_component("offer-rules")?)?;
    crate::demo::build_offerd(true)?;
    if !root.join("node_modules/kinesalite/index.js").is_file() {
        npm_ci(&root)?;
    }
    let kinesis = kinesis_local::start(&root)?;
    let dynamodb = dynalite::start(&root)?;
    let aws_env = crate::demo::local_aws_env(&kinesis.endpoint, Some(&dynamodb.endpoint));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        let spawn = |streams: &Streams, table: &str, id: &str, metrics: &str| {
            let extra = ["--lease-table", table, "--worker-id", id, "--start-at", "latest", "--batch-size", "100"];
            spawn_offerd(&root, streams, Some(&modules), None, metrics, &aws_env, &extra)
        };

        println!("failover after kill -9 ({} trials; 2 workers, 4 shards, lease 3 s, renewal 1 s):", options.trials);
        let failover_streams = streams(&client, "failover", 4).await?;
        let mut times = Vec::new();
        for trial in 0..options.trials {
            let table = format!("failover-leases-{trial}");
            let (ma, mb) = (free_addr()?, free_addr()?);
            let a = spawn(&failover_streams, &table, &format!("a{trial}"), &ma)?;
            let b = spawn(&failover_streams, &table, &format!("b{trial}"), &mb)?;
            let time = failover(&client, &failover_streams, a, &ma, &mb).await?;
            stop(b)?;
            println!("  trial {:>2}: {time:.2?}", trial + 1);
            times.push(time);
        }
        times.sort();
        if let Some(max) = times.last() {
            let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            println!("failover p50 {:.2?}, p99 {:.2?}, max {max:.2?}", p(0.5), p(0.99));
        }

        println!("\nlease-table requests per worker per second (10 s each):");
        println!("{:>7} {:>8} {:>14} {:>14} {:>14}", "shards", "workers", "state", "writes/s", "scans/s");
        for shards in [8, 64] {
            let streams = streams(&client, &format!("requests-{shards}"), shards).await?;
            for workers in [1, 4] {
                let table = format!("requests-{shards}-{workers}");
                let mut running: Vec<(Child, String)> = Vec::new();
                for w in 0..workers {
                    let metrics = free_addr()?;
                    running.push((spawn(&streams, &table, &format!("w{w}"), &metrics)?, metrics));
                }
                // Settled: every shard held.
                let deadline = Instant::now() + Duration::from_secs(120);
                while running.iter().map(|(_, m)| scrape(m, "offerd_leases_held").unwrap_or(0.0)).sum::<f64>()
                    < f64::from(shards)
                {
                    if Instant::now() > deadline {
                        bail!("{workers} workers never held all {shards} shards");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                for (state, load) in [("idle", false), ("100 rec/s", true)] {
                    let feeding = load.then(|| tokio::spawn(trickle(client.clone(), streams.input.clone(), 10)));
                    let before = requests(&running);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let after = requests(&running);
                    if let Some(feeding) = feeding {
                        feeding.abort();
                    }
                    let per = |i: usize| (after[i] - before[i]) / 10.0 / workers as f64;
                    println!("{shards:>7} {workers:>8} {state:>14} {:>14.1} {:>14.1}", per(0), per(1));
                }
                for (child, _) in running {
                    stop(child)?;
                }
            }
        }
        Ok(())
    })?;
    cpu_per_record(&root, &modules, &dynamodb, options.backlog)
}

/// Phase 3, against kinesalite.
fn cpu_per_record(
    root: &std::path::Path,
    modules: &std::path::Path,
    dynamodb: &xtask::local_server::LocalServer,
    backlog: usize,
) -> Result<()> {
    let server = kinesalite::start(root)?;
    let aws_env = crate::demo::local_aws_env(&server.endpoint, Some(&dynamodb.endpoint));
    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 5)?;
    let signups = generator.batch(backlog, None);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        println!(
            "\nhost CPU per record through kinesalite (a backlog of {backlog} sign-ups on 4 shards, batches of 500):"
        );
        println!("{:>8} {:>12} {:>12} {:>16} {:>18}", "workers", "wall", "records/s", "CPU µs/record", "idle CPU ms/s");
        for workers in [1usize, 3] {
            let streams = streams(&client, &format!("cpu-{workers}"), 4).await?;
            // The backlog first, so that every read returns a full batch.
            for chunk in signups.chunks(500) {
                crate::demo::put(&client, &streams.input, chunk).await?;
            }
            let table = format!("cpu-{workers}-leases");
            let mut running: Vec<(Child, String)> = Vec::new();
            for w in 0..workers {
                let metrics = free_addr()?;
                let extra = ["--lease-table", &table, "--worker-id", &format!("w{w}"), "--batch-size", "500"];
                running.push((spawn_offerd(root, &streams, Some(modules), None, &metrics, &aws_env, &extra)?, metrics));
            }
            // Metrics answer once start-up (module compiles) is done: CPU from there.
            let deadline = Instant::now() + Duration::from_secs(120);
            while running.iter().any(|(_, m)| metrics_text(m).is_err()) {
                if Instant::now() > deadline {
                    bail!("the workers' metrics never answered");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let started = Instant::now();
            let cpu_from = cpu(&running)?;
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let done: f64 = running
                    .iter()
                    .map(|(_, m)| {
                        crate::demo::Progress::scrape(m).map(|p| (p.offers() + p.dead_letters) as f64).unwrap_or(0.0)
                    })
                    .sum();
                if done >= backlog as f64 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{workers} workers processed {done} of {backlog} in 5 minutes");
                }
                // Every scrape is an HTTP request that offerd's CPU pays for:
                // at 20 ms they were a sixth of the CPU measured per record.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let wall = started.elapsed();
            let used = cpu(&running)? - cpu_from;
            // Idle: polling 4 empty shards and renewing leases.
            let idle_from = cpu(&running)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let idle = (cpu(&running)? - idle_from).as_secs_f64() * 1000.0 / 5.0;
            println!(
                "{workers:>8} {:>12.2?} {:>12.0} {:>16.1} {:>18.1}",
                wall,
                backlog as f64 / wall.as_secs_f64(),
                used.as_secs_f64() * 1e6 / backlog as f64,
                idle,
            );
            for (child, _) in running {
                stop(child)?;
            }
        }
        println!(
            "(CPU of the offerd processes only, user + system, from /proc; idle: 4 shards polled, leases renewed)"
        );
        Ok(())
    })
}

/// User + system CPU time of the workers so far.
fn cpu(workers: &[(Child, String)]) -> Result<Duration> {
    workers.iter().map(|(child, _)| crate::bench_stream::cpu_time(child.id())).sum()
}

async fn streams(client: &Client, name: &str, shards: i32) -> Result<Streams> {
    let streams = Streams {
        input: format!("bench-{name}-signups"),
        output: format!("bench-{name}-offers"),
        dead_letters: format!("bench-{name}-dead"),
    };
    for (stream, n) in [(&streams.input, shards), (&streams.output, 1), (&streams.dead_letters, 1)] {
        create_stream(client, stream, n).await?;
    }
    Ok(streams)
}

/// Kills `a` once both workers hold two leases each, and measures until a
/// record put after the kill on each of `a`'s shards comes out.
async fn failover(client: &Client, streams: &Streams, mut a: Child, ma: &str, mb: &str) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape(ma, "offerd_leases_held").unwrap_or(0.0) < 2.0 || scrape(mb, "offerd_leases_held").unwrap_or(0.0) < 2.0
    {
        if Instant::now() > deadline {
            bail!("the two workers never held two leases each");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_put: Arc<Mutex<HashMap<String, Seq>>> = Arc::default();
    let feeding = tokio::spawn(feed_every_shard(client.clone(), streams.input.clone(), last_put.clone()));
    // a's shards: the two it has read records from.
    let orphaned = loop {
        let read = shards_read(ma)?;
        if read.len() == 2 {
            break read;
        }
        if Instant::now() > deadline {
            feeding.abort();
            bail!("a never read from two shards: {read:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tail = client
        .get_shard_iterator()
        .stream_name(&streams.output)
        .shard_id("shardId-000000000000")
        .shard_iterator_type(ShardIteratorType::Latest)
        .send()
        .await?;
    a.kill()?;
    let killed = Instant::now();
    a.wait()?;
    let before_kill = last_put.lock().expect("never poisoned").clone();
    let mut iterator = tail.shard_iterator().map(str::to_owned);
    let mut pending = orphaned.clone();
    while !pending.is_empty() {
        if killed.elapsed() > Duration::from_secs(60) {
            feeding.abort();
            bail!("no record of {pending:?} came out within 60 s of the kill");
        }
        let out =
            client.get_records().shard_iterator(iterator.clone().context("the output shard closed")?).send().await?;
        for record in out.records() {
            let Ok(v) = serde_json::from_slice::<Value>(record.data().as_ref()) else { continue };
            let shard = v["source"]["shard_id"].as_str().unwrap_or_default();
            let at = seq(v["source"]["sequence_number"].as_str().unwrap_or_default());
            if before_kill.get(shard).is_some_and(|last| at > *last) {
                pending.remove(shard);
            }
        }
        iterator = out.next_shard_iterator().map(str::to_owned);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    feeding.abort();
    Ok(killed.elapsed())
}

/// One sign-up to every shard every 50 ms (explicit hash keys); the last
/// sequence number put on each shard.
async fn feed_every_shard(client: Client, stream: String, last: Arc<Mutex<HashMap<String, Seq>>>) -> Result<()> {
    let shards = client.list_shards().stream_name(&stream).send().await?;
    let starts: Vec<String> =
        shards.shards().iter().filter_map(|s| s.hash_key_range().map(|r| r.starting_hash_key().to_owned())).collect();
    let mut n = 0u64;
    loop {
        let entries: Vec<PutRecordsRequestEntry> = starts
            .iter()
            .map(|start| {
                n += 1;
                let line =
                    format!(r#"{{"user_id": "f{n}", "location": {{"country": "DE", "lat": 52.5, "lon": 13.4}}}}"#);
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("f{n}"))
                    .explicit_hash_key(start)
                    .data(Blob::new(line))
                    .build()
                    .expect("key and data are set")
            })
            .collect();
        let out = client.put_records().stream_name(&stream).set_records(Some(entries)).send().await?;
        for r in out.records() {
            if let (Some(shard), Some(at)) = (r.shard_id(), r.sequence_number()) {
                last.lock().expect("never poisoned").insert(shard.to_owned(), seq(at));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ten sign-ups every 100 ms until aborted.
async fn trickle(client: Client, stream: String, per_tick: usize) -> Result<()> {
    let mut n = 0u64;
    loop {
        let entries: Vec<PutRecordsRequestEntry> = (0..per_tick)
            .map(|_| {
                n += 1;
                let line =
                    format!(r#"{{"user_id": "t{n}", "location": {{"country": "DE", "lat": 52.5, "lon": 13.4}}}}"#);
                PutRecordsRequestEntry::builder().partition_key(format!("t{n}")).data(Blob::new(line)).build()
            })
            .collect::<Result<_, _>>()?;
        client.put_records().stream_name(&stream).set_records(Some(entries)).send().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per worker summed: (writes, scans) so far.
fn requests(workers: &[(Child, String)]) -> [f64; 2] {
    let mut sum = [0.0, 0.0];
    for (_, metrics) in workers {
        sum[0] += scrape(metrics, "offerd_lease_table_requests_total{kind=\"write\"}").unwrap_or(0.0);
        sum[1] += scrape(metrics, "offerd_lease_table_requests_total{kind=\"scan\"}").unwrap_or(0.0);
    }
    sum
}

/// Shards a worker has read from (its `offerd_records_read_total` series).
fn shards_read(addr: &str) -> Result<HashSet<String>> {
    let text = metrics_text(addr)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let shard = series.strip_prefix("offerd_records_read_total{shard_id=\"")?.split('"').next()?;
            (value.parse::<f64>().ok()? > 0.0).then(|| shard.to_owned())
        })
        .collect())
}
