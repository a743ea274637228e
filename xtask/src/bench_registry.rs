//! `cargo xtask bench-registry`: a fleet following one registry (dynalite,
//! moto, kinesalite): how long a publication takes to serve on every worker
//! (p50, p99 over N publications with 3 workers, at the default poll), the
//! registry requests each worker makes per second when nothing changes, and
//! idle CPU per worker with the registry on beside one without it.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::{Streams, client, create_stream, free_addr, metric, metrics_text, spawn_offerd, stop};
use xtask::{dynalite, kinesalite, moto};

pub struct Options {
    pub publications: usize,
    /// Seconds the idle phase measures.
    pub idle_secs: u64,
}

const REGIONS: [&str; 5] = ["europe", "north-america", "south-america", "asia-pacific", "middle-east-africa"];
const WORKERS: usize = 3;

pub fn run(options: &Options) -> Result<()> {
    let root = xtask::workspace_root();
    let work = root.join("target/bench-registry");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("modules"))?;
    xtask::ensure_guest_target()?;
    let reference = xtask::build_component("offer-rules")?;
    let v1 = work.join("rules-v1.wasm");
    std::fs::write(&v1, &reference)?;
    std::fs::write(work.join("modules/default.wasm"), &reference)?;
    crate::demo::build_offerd(true)?;
    moto::install(&root)?;
    let kinesis = kinesalite::start(&root)?;
    let dynamodb = dynalite::start(&root)?;
    let s3 = moto::start(&root)?;
    let mut aws_env = crate::demo::local_aws_env(&kinesis.endpoint, Some(&dynamodb.endpoint));
    aws_env.push(("AWS_ENDPOINT_URL_S3", s3.endpoint.clone()));
    moto::create_bucket(&s3.endpoint, "bench-registry")?;
    let registry: Vec<String> =
        ["--registry-table", "bench-registry", "--registry-bucket", "bench-registry"].map(str::to_owned).to_vec();
    for region in REGIONS {
        publish(&root, &registry, &aws_env, region, &v1, false)?;
    }
    let streams = Streams { input: "signups".into(), output: "offers".into(), dead_letters: "dead-letters".into() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (workers, control) = runtime.block_on(async {
        let client = client(&aws_env).await;
        for (name, shards) in [(&streams.input, 4), (&streams.output, 1), (&streams.dead_letters, 1)] {
            create_stream(&client, name, shards).await?;
        }
        let mut workers: Vec<(Child, String)> = Vec::new();
        for n in 0..WORKERS {
            let metrics = free_addr()?;
            let state = work.join(format!("state-{n}"));
            let checkpoints = work.join(format!("checkpoints-{n}.json"));
            let id = format!("w{n}");
            let mut extra: Vec<&str> = registry.iter().map(String::as_str).collect();
            extra.extend(["--worker-id", &id, "--registry-state", state.to_str().context("UTF-8 path")?]);
            workers
                .push((spawn_offerd(&root, &streams, None, Some(&checkpoints), &metrics, &aws_env, &extra)?, metrics));
        }
        let metrics = free_addr()?;
        let checkpoints = work.join("checkpoints-control.json");
        let control = (
            spawn_offerd(&root, &streams, Some(&work.join("modules")), Some(&checkpoints), &metrics, &aws_env, &[])?,
            metrics,
        );
        anyhow::Ok((workers, control))
    })?;
    let result = measure(&root, &registry, &aws_env, &work, &workers, &control, options);
    for (child, _) in workers.into_iter().chain([control]) {
        stop(child)?;
    }
    result
}

fn measure(
    root: &Path,
    registry: &[String],
    aws_env: &[(&'static str, String)],
    work: &Path,
    workers: &[(Child, String)],
    control: &(Child, String),
    options: &Options,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while workers.iter().chain([control]).any(|(_, m)| metrics_text(m).is_err()) {
        if Instant::now() > deadline {
            bail!("the workers' metrics never answered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settled: every first report written, start-up compiles done.
    std::thread::sleep(Duration::from_secs(2));
    let counts = |m: &str| -> Result<f64> {
        Ok(metric(m, r#"offerd_registry_polls_total{result="ok"}"#)? + metric(m, "offerd_registry_reports_total")?)
    };
    let cpu = |pid: u32| crate::bench_stream::cpu_time(pid);
    let before: Vec<(f64, Duration)> =
        workers.iter().map(|(c, m)| Ok((counts(m)?, cpu(c.id())?))).collect::<Result<_>>()?;
    let control_before = cpu(control.0.id())?;
    let idle = Duration::from_secs(options.idle_secs);
    std::thread::sleep(idle);
    let mut requests = Vec::new();
    let mut idle_cpu = Vec::new();
    for ((child, metrics), (count, cpu_from)) in workers.iter().zip(&before) {
        requests.push((counts(metrics)? - count) / idle.as_secs_f64());
        idle_cpu.push((cpu(child.id())? - *cpu_from).as_secs_f64() * 1000.0 / idle.as_secs_f64());
    }
    let control_cpu = (cpu(control.0.id())? - control_before).as_secs_f64() * 1000.0 / idle.as_secs_f64();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;

    // Publications: each a new build of the rules (a custom section), so
    // every worker fetches, compiles and gates it.
    let reference = std::fs::read(work.join("rules-v1.wasm"))?;
    let mut reached = Vec::new();
    let mut commands = Vec::new();
    for n in 0..options.publications {
        let file = work.join(format!("publication-{n}.wasm"));
        std::fs::write(&file, xtask::component_edits::with_custom_section(&reference, n + 1))?;
        let started = Instant::now();
        publish(root, registry, aws_env, "europe", &file, true)?;
        commands.push(started.elapsed().as_secs_f64());
        reached.push(reached_all_after_ms(registry, aws_env)? as f64 / 1000.0);
    }
    reached.sort_by(f64::total_cmp);
    commands.sort_by(f64::total_cmp);
    let quantile = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];

    println!(
        "\nregistry with {WORKERS} workers, polling every 1 s (release build; kinesalite, dynalite, moto on loopback):"
    );
    println!(
        "  publication → every worker serving, over {} publications: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        reached.len(),
        quantile(&reached, 0.5),
        quantile(&reached, 0.99),
        reached.last().copied().unwrap_or_default()
    );
    println!(
        "  `offerd publish --wait` wall time (local gate + upload + wait): p50 {:.2} s, p99 {:.2} s",
        quantile(&commands, 0.5),
        quantile(&commands, 0.99)
    );
    println!(
        "  idle, {} s: registry requests per worker per second {:.2} (reads and reports; per worker: {})",
        options.idle_secs,
        mean(&requests),
        requests.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  idle CPU per worker: {:.1} ms/s following the registry, {:.1} ms/s for one on a module directory ({:.2}x)",
        mean(&idle_cpu),
        control_cpu,
        mean(&idle_cpu) / control_cpu.max(0.01)
    );
    Ok(())
}

/// `offerd publish` of `module` for `region`, with `--wait` if asked.
fn publish(
    root: &Path,
    registry: &[String],
    aws_env: &[(&'static str, String)],
    region: &str,
    module: &Path,
    wait: bool,
) -> Result<()> {
    let mut command = crate::demo::offerd_cli();
    command.args(["publish", "--region", region]).arg(module).arg("--catalogs").arg(root.join("catalogs"));
    command.args(registry).args(["--publisher", "bench"]).env("OFFERD_LOG", "warn");
    if wait {
        command.args(["--wait", "--wait-timeout-secs", "60"]);
    }
    command.envs(aws_env.iter().map(|(k, v)| (*k, v.as_str())));
    let out = command.output().context("running offerd publish")?;
    if !out.status.success() {
        bail!("offerd publish for {region} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// europe's `reached_all_after_ms` from `offerd fleet status --json`.
fn reached_all_after_ms(registry: &[String], aws_env: &[(&'static str, String)]) -> Result<u64> {
    let out = crate::demo::offerd_cli()
        .args(["fleet", "status", "--json"])
        .args(registry)
        .envs(aws_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("OFFERD_LOG", "warn")
        .output()
        .context("running offerd fleet status")?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).context("fleet status is not JSON")?;
    let europe = status["regions"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["region"] == "europe"))
        .context("no europe in the fleet status")?;
    europe["reached_all_after_ms"].as_u64().with_context(|| format!("europe has not reached every worker: {europe}"))
}
