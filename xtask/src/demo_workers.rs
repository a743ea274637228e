//! `cargo xtask demo --workers N`: several `offerd run` workers share one
//! local stream through a lease table (dynalite) and follow one module
//! registry (dynalite and moto, a local S3). Once a second it shows how many
//! shards each worker holds, its rate and the rules version it serves for
//! europe; a third of the way it publishes europe's rules v0.2.0 through the
//! registry with `offerd publish --wait`, and every worker switches; later
//! it stops one worker with SIGTERM and kills another with -9, and at the end
//! it checks every sign-up came out: shards move, totals stay complete.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::chaos::{Source, drain, produce};
use crate::demo::{Progress, Streams, V2, client, create_stream, spawn_offerd, stop};
use xtask::kinesis_local::{self, npm_ci};
use xtask::{dynalite, moto};

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
    /// The rules version it serves for europe.
    europe: String,
    fate: &'static str,
}

/// Where the demo's registry is, as `offerd` flags.
struct Registry {
    args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    if options.workers < 3 {
        bail!("--workers must be at least 3: one is stopped with SIGTERM and one killed with -9 on the way");
    }
    let root = xtask::workspace_root();
    let work = root.join("target/demo-workers");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    xtask::ensure_guest_target()?;
    println!("building the reference rules (v0.1.0 and v{V2}) and offerd…");
    let (v1, v2) = (work.join("rules-v1.wasm"), work.join("rules-v2.wasm"));
    std::fs::write(&v1, xtask::build_component("offer-rules")?)?;
    std::fs::write(&v2, xtask::build_component_as("offer-rules", Some(V2))?)?;
    crate::demo::build_offerd(false)?;
    if !root.join("node_modules/dynalite/cli.js").is_file()
        || !root.join("node_modules/kinesis-local/main.js").is_file()
    {
        npm_ci(&root)?;
    }
    moto::install(&root)?;
    let kinesis = kinesis_local::start(&root)?;
    let dynamodb = dynalite::start(&root)?;
    let s3 = moto::start(&root)?;
    println!("kinesis-local on {}, dynalite on {}, moto (S3) on {}", kinesis.endpoint, dynamodb.endpoint, s3.endpoint);
    let mut aws_env = crate::demo::local_aws_env(&kinesis.endpoint, Some(&dynamodb.endpoint));
    aws_env.push(("AWS_ENDPOINT_URL_S3", s3.endpoint.clone()));
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let streams = Streams {
        input: format!("demo-{run_id}-signups"),
        output: format!("demo-{run_id}-offers"),
        dead_letters: format!("demo-{run_id}-dead-letters"),
    };
    let table = format!("demo-{run_id}-leases");
    let bucket = format!("demo-{run_id}-registry");
    moto::create_bucket(&s3.endpoint, &bucket)?;
    let registry = Registry {
        args: ["--registry-table", &format!("demo-{run_id}-registry"), "--registry-bucket", &bucket]
            .map(str::to_owned)
            .to_vec(),
    };
    println!("publishing rules v0.1.0 for every region into the registry…");
    for region in ["europe", "north-america", "south-america", "asia-pacific", "middle-east-africa"] {
        publish(&root, &registry, &aws_env, region, &v1, &[])?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        for (name, shards) in [(&streams.input, SHARDS), (&streams.output, 2), (&streams.dead_letters, 1)] {
            create_stream(&client, name, shards).await?;
        }
        println!(
            "stream {} ({SHARDS} shards), lease table {table}, registry {}, {} workers",
            streams.input, registry.args[1], options.workers
        );
        let mut workers = Vec::new();
        for n in 1..=options.workers {
            let name = format!("worker-{n}");
            let metrics = crate::demo::free_addr()?;
            let state = work.join(format!("state-{n}"));
            let mut extra: Vec<&str> = vec!["--lease-table", &table, "--worker-id", &name, "--batch-size", "100"];
            extra.extend(registry.args.iter().map(String::as_str));
            extra.extend(["--registry-state", state.to_str().context("UTF-8 path")?]);
            let process = spawn_offerd(&root, &streams, None, None, &metrics, &aws_env, &extra)?;
            workers.push(Worker {
                name,
                process: Some(process),
                metrics,
                last: Progress::default(),
                leases: 0,
                europe: "-".into(),
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
        let publication = Publication { root: &root, registry: &registry, aws_env: &aws_env, module: &v2 };
        let result = progress(&mut workers, seconds, &publication).await;
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

/// The mid-run publication of europe's v0.2.0 through the registry.
struct Publication<'a> {
    root: &'a Path,
    registry: &'a Registry,
    aws_env: &'a [(&'static str, String)],
    module: &'a Path,
}

/// `offerd publish` of `module` for `region` into the registry; fails unless it exits 0.
fn publish(
    root: &Path,
    registry: &Registry,
    aws_env: &[(&str, String)],
    region: &str,
    module: &Path,
    extra: &[&str],
) -> Result<()> {
    let mut command = crate::demo::offerd_cli();
    command
        .args(["publish", "--region", region])
        .arg(module)
        .arg("--catalogs")
        .arg(root.join("catalogs"))
        .args(&registry.args)
        .args(["--publisher", "demo"])
        .args(extra)
        .env("OFFERD_LOG", "warn");
    for (key, value) in aws_env {
        command.env(key, value);
    }
    let status = command.status().context("running offerd publish")?;
    if !status.success() {
        bail!("offerd publish of {} for {region} failed ({status})", module.display());
    }
    Ok(())
}

/// Prints each worker's leases, rate and europe's rules version once a
/// second for `seconds`, and a while longer to show the end; publishes
/// europe's v0.2.0 a third of the way (on its own thread: `--wait` returns
/// when every worker serves it), SIGTERM to the first worker at two thirds,
/// SIGKILL to the second at five sixths.
async fn progress(workers: &mut [Worker], seconds: usize, publication: &Publication<'_>) -> Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let total = seconds + 8;
    let mut publishing = None;
    for second in 0..total {
        tick.tick().await;
        if second == seconds / 3 {
            println!("  → offerd publish --region europe rules-v{V2}.wasm --registry-… --wait");
            let (root, registry, aws_env, module) = (
                publication.root.to_owned(),
                Registry { args: publication.registry.args.clone() },
                publication.aws_env.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>(),
                publication.module.to_owned(),
            );
            let started = Instant::now();
            publishing = Some(std::thread::spawn(move || {
                publish(&root, &registry, &aws_env, "europe", &module, &["--wait"]).map(|()| started.elapsed())
            }));
        }
        if publishing.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            let took = publishing.take().expect("checked").join().expect("the publishing thread panicked")?;
            println!(
                "  → every live worker serves europe v{V2} ({:.1} s after the publish command started)",
                took.as_secs_f64()
            );
        }
        if second == seconds * 2 / 3 {
            let w = &mut workers[0];
            println!("  → SIGTERM to {}: it finishes its batches, checkpoints and hands its leases back", w.name);
            if let Some(process) = w.process.take() {
                stop_with_term(process)?;
            }
            w.fate = "stopped (SIGTERM)";
        }
        if second == seconds * 5 / 6 {
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
                cells.push(format!("{}: {:<27}", w.name, w.fate));
                continue;
            }
            let Ok(now) = Progress::scrape(&w.metrics) else {
                cells.push(format!("{}: starting…                  ", w.name));
                continue;
            };
            w.leases = scrape_leases(&w.metrics).unwrap_or(0);
            if let Ok(version) = europe_version(&w.metrics) {
                w.europe = version;
            }
            let rate = now.read.saturating_sub(w.last.read);
            cells.push(format!("{}: {} shards {:>4}/s europe v{}", w.name, w.leases, rate, w.europe));
            w.last = now;
        }
        let done: u64 = workers.iter().map(|w| w.last.offers() + w.last.dead_letters).sum();
        println!("  {:>3.0}s  {}  | processed {done:>6}", started.elapsed().as_secs_f64(), cells.join("  "));
    }
    if let Some(publishing) = publishing {
        publishing.join().expect("the publishing thread panicked")?;
    }
    let held: BTreeMap<&str, u64> = workers.iter().map(|w| (w.name.as_str(), w.leases)).collect();
    if held.values().sum::<u64>() < SHARDS as u64 {
        println!("  (not every shard held at the end: {held:?})");
    }
    Ok(())
}

/// The version of europe's active module, from a worker's metrics.
fn europe_version(addr: &str) -> Result<String> {
    let text = crate::demo::metrics_text(addr)?;
    text.lines()
        .filter(|l| l.starts_with("offerd_active_module{") && l.ends_with(" 1") && l.contains("region=\"europe\""))
        .find_map(|l| l.split("version=\"").nth(1)?.split('"').next().map(str::to_owned))
        .context("no active module for europe")
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
