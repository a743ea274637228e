//! `cargo xtask demo --workers N`: several `offerd run` workers share one
//! local stream through a lease table (dynalite). Once a second it shows how
//! many shards each worker holds and its rate; half-way it stops one with
//! SIGTERM, at three quarters it kills another with -9, and at the end it
//! checks every sign-up came out: shards move, totals stay complete.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::chaos::{Source, drain, produce};
use crate::demo::{Progress, Streams, client, create_stream, spawn_offerd, stop};
use xtask::dynalite;
use xtask::kinesis_local::{self, npm_ci};

const SHARDS: i32 = 8;

pub struct Options {
    pub workers: usize,
    pub signups: usize,
    pub rate: usize,
}

/// One worker: its process (gone once stopped or killed), metrics address,
/// and what its metrics said last.
struct Worker {
    name: String,
    process: Option<Child>,
    metrics: String,
    last: Progress,
    leases: u64,
    fate: &'static str,
}

pub fn run(options: &Options) -> Result<()> {
    if options.workers < 3 {
        bail!("--workers must be at least 3: one is stopped with SIGTERM and one killed with -9 on the way");
    }
    let root = xtask::workspace_root();
    let modules = root.join("target/demo-workers/modules");
    std::fs::create_dir_all(&modules)?;
    xtask::ensure_guest_target()?;
    println!("building the reference rules module and offerd…");
    std::fs::write(modules.join("default.wasm"), xtask::build_component("offer-rules")?)?;
    crate::demo::build_offerd(false)?;
    if !root.join("node_modules/dynalite/cli.js").is_file()
        || !root.join("node_modules/kinesis-local/main.js").is_file()
    {
        npm_ci(&root)?;
    }
    let kinesis = kinesis_local::start(&root)?;
    let dynamodb = dynalite::start(&root)?;
    println!("kinesis-local on {}, dynalite on {}", kinesis.endpoint, dynamodb.endpoint);
    let aws_env = crate::demo::local_aws_env(&kinesis.endpoint, Some(&dynamodb.endpoint));
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let streams = Streams {
        input: format!("demo-{run_id}-signups"),
        output: format!("demo-{run_id}-offers"),
        dead_letters: format!("demo-{run_id}-dead-letters"),
    };
    let table = format!("demo-{run_id}-leases");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        for (name, shards) in [(&streams.input, SHARDS), (&streams.output, 2), (&streams.dead_letters, 1)] {
            create_stream(&client, name, shards).await?;
        }
        println!("stream {} ({SHARDS} shards), lease table {table}, {} workers", streams.input, options.workers);
        let mut workers = Vec::new();
        for n in 1..=options.workers {
            let name = format!("worker-{n}");
            let metrics = crate::demo::free_addr()?;
            let extra = ["--lease-table", &table, "--worker-id", &name, "--batch-size", "100"];
            let process = spawn_offerd(&root, &streams, &modules, None, &metrics, &aws_env, &extra)?;
            workers.push(Worker {
                name,
                process: Some(process),
                metrics,
                last: Progress::default(),
                leases: 0,
                fate: "running",
            });
        }
        let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 2027)?;
        let signups = generator.batch(options.signups, Some(50));
        println!(
            "writing {} sign-ups at {}/s; once a second, per worker: shards held, records/s",
            signups.len(),
            options.rate
        );
        let producer = tokio::spawn(produce(client.clone(), streams.input.clone(), signups, options.rate));
        let seconds = options.signups / options.rate.max(1);
        let result = progress(&mut workers, seconds).await;
        let sources: Vec<Source> = producer.await.context("the producer panicked")??;
        let outcome = match result {
            Ok(()) => drain(&client, &streams, &sources).await,
            Err(e) => Err(e),
        };
        for worker in &mut workers {
            if let Some(process) = worker.process.take() {
                stop(process)?;
            }
        }
        let (covered, outputs) = outcome?;
        let lost = sources.len() - covered;
        println!(
            "{} sign-ups in: {covered} came out ({} outputs: {} repeated by the kill -9), {lost} lost",
            sources.len(),
            outputs,
            outputs - covered
        );
        if lost > 0 {
            bail!("{lost} sign-ups lost");
        }
        Ok(())
    })
}

/// Prints each worker's leases and rate once a second for `seconds`, and a
/// while longer to show the end; SIGTERM to the first worker half-way,
/// SIGKILL to the second at three quarters.
async fn progress(workers: &mut [Worker], seconds: usize) -> Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let total = seconds + 8;
    for second in 0..total {
        tick.tick().await;
        if second == seconds / 2 {
            let w = &mut workers[0];
            println!("  → SIGTERM to {}: it finishes its batches, checkpoints and hands its leases back", w.name);
            if let Some(process) = w.process.take() {
                stop_with_term(process)?;
            }
            w.fate = "stopped (SIGTERM)";
        }
        if second == seconds * 3 / 4 {
            let w = &mut workers[1];
            println!("  → kill -9 {}: its leases expire, the others take them", w.name);
            if let Some(mut process) = w.process.take() {
                process.kill()?;
                process.wait()?;
            }
            w.fate = "killed (-9)";
        }
        let mut cells = Vec::new();
        for w in workers.iter_mut() {
            if w.process.is_none() {
                w.leases = 0;
                cells.push(format!("{}: {:<18}", w.name, w.fate));
                continue;
            }
            let Ok(now) = Progress::scrape(&w.metrics) else {
                cells.push(format!("{}: starting…          ", w.name));
                continue;
            };
            w.leases = scrape_leases(&w.metrics).unwrap_or(0);
            let rate = now.read.saturating_sub(w.last.read);
            cells.push(format!("{}: {} shards {:>4}/s", w.name, w.leases, rate));
            w.last = now;
        }
        let done: u64 = workers.iter().map(|w| w.last.offers() + w.last.dead_letters).sum();
        println!("  {:>3.0}s  {}  | processed {done:>6}", started.elapsed().as_secs_f64(), cells.join("  "));
    }
    let held: BTreeMap<&str, u64> = workers.iter().map(|w| (w.name.as_str(), w.leases)).collect();
    if held.values().sum::<u64>() < SHARDS as u64 {
        println!("  (not every shard held at the end: {held:?})");
    }
    Ok(())
}

fn stop_with_term(mut process: Child) -> Result<()> {
    std::process::Command::new("kill").args(["-TERM", &process.id().to_string()]).status()?;
    let status = process.wait()?;
    if !status.success() {
        bail!("the worker exited with {status} after SIGTERM");
    }
    Ok(())
}

/// `offerd_leases_held` from a worker's metrics.
fn scrape_leases(addr: &str) -> Result<u64> {
    Ok(crate::demo::metric(addr, "offerd_leases_held")? as u64)
}
