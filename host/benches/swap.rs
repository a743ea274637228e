//! Hot swap, measured in one run on the production engine:
//! - publish → live: from `Rollout::publish` (compile, gate, swap) until a
//!   batch first runs on the new module, over repeated publishes of freshly
//!   built bytes (nothing cached), and the same for a rollback (the previous
//!   version is still compiled: the cached path);
//! - the longest gap between two finished batches on the swapped region and
//!   on another region: without publishes, with publishes for a third region
//!   (the compile's CPU use alone), with publishes for the region itself, and
//!   with publishes of a module slow to compile (one huge function).
//!
//! `cargo bench -p offerd --bench swap`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use offerd::catalog::Catalogs;
use offerd::engine::{Engine, Limits};
use offerd::enricher::{Enricher, Outcome};
use offerd::metrics::Metrics;
use offerd::module_store::ModuleStore;
use offerd::rollout::{Origin, Rollout};
use xtask::component_edits::with_custom_section;

const PUBLISHES: usize = 20;
const PHASE: Duration = Duration::from_secs(5);
const BATCH: usize = 100;

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let catalogs_dir = root.join("catalogs");
    let catalogs = Arc::new(Catalogs::load(&catalogs_dir)?);
    let engine = Engine::new(Limits::default())?;
    let store = tempfile::tempdir()?;
    let v1 = xtask::build_component("offer-rules")?;
    std::fs::write(store.path().join("default.wasm"), &v1)?;
    let (enricher, rollout) = Rollout::start(
        engine,
        ModuleStore::open(store.path())?,
        &catalogs_dir,
        catalogs.clone(),
        Arc::new(Metrics::default()),
        false,
    )?;

    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 11)?;
    let europe: Vec<String> = sign_ups_in(&mut generator, &catalogs, "europe");
    let asia: Vec<String> = sign_ups_in(&mut generator, &catalogs, "asia-pacific");
    println!("module {} KiB; batches of {BATCH}; {PUBLISHES} publishes per figure", v1.len() / 1024);

    // publish → live, nothing cached: each publish is new bytes (a distinct
    // custom section), so it compiles from scratch.
    let large = xtask::build_component_unoptimised("offer-rules")?;
    let mut fresh = Vec::new();
    let mut cached = Vec::new();
    let mut fresh_large = Vec::new();
    for i in 0..PUBLISHES {
        let started = Instant::now();
        let active = rollout
            .publish("europe", with_custom_section(&v1, i), Origin::ModuleStore)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        fresh.push(until_served(&enricher, &europe, &active.rules.module().info().digest, started));
        let started = Instant::now();
        let active = rollout
            .publish("europe", with_custom_section(&large, i), Origin::ModuleStore)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        fresh_large.push(until_served(&enricher, &europe, &active.rules.module().info().digest, started));
        // Back to the optimised module, which is still compiled and warm.
        let started = Instant::now();
        let active = rollout.rollback("europe").map_err(|e| anyhow::anyhow!("{e}"))?;
        cached.push(until_served(&enricher, &europe, &active.rules.module().info().digest, started));
    }
    println!("{:<34} {:>10} {:>10} {:>10}", "publish → first batch served", "p50", "p99", "max");
    let large_label = format!("new {} KiB unoptimised module", large.len() / 1024);
    let rows = [
        ("new module (compile + gate)", fresh),
        (large_label.as_str(), fresh_large),
        ("rollback (already compiled)", cached),
    ];
    for (name, mut times) in rows {
        times.sort();
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!("{name:<34} {:>10.1?} {:>10.1?} {:>10.1?}", p(0.5), p(0.99), times[times.len() - 1]);
    }

    // Gaps between finished batches, without and with publishes.
    println!("\nlongest gap between two finished batches ({PHASE:?} per phase):");
    println!("{:<28} {:>20} {:>20}", "publishing", "europe", "asia-pacific");
    println!("{:<28} {:>20} {:>20}", "", "longest gap / median", "longest gap / median");
    // The second phase compiles and swaps a module for another region: what
    // the swapped region sees from the compile's CPU use alone. The last
    // publishes a module slow to compile (one function of 6 MiB) back to back.
    let huge = xtask::component_edits::with_huge_function(&v1, 2_000_000);
    let phases = [
        (None, "no publishes".to_owned()),
        (Some(("north-america", &v1)), "north-america every 250 ms".to_owned()),
        (Some(("europe", &v1)), "europe every 250 ms".to_owned()),
        (Some(("europe", &huge)), format!("europe, {} MiB one-function", huge.len() >> 20)),
    ];
    for (publish_to, label) in phases {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = [europe.clone(), asia.clone()]
            .into_iter()
            .map(|inputs| {
                let (enricher, stop) = (enricher.clone(), stop.clone());
                std::thread::spawn(move || longest_gap(&enricher, &inputs, &stop))
            })
            .collect();
        let end = Instant::now() + PHASE;
        let mut i = 1000;
        let mut publishes = Vec::new();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(250));
            if let Some((region, module)) = publish_to {
                i += 1;
                let started = Instant::now();
                rollout
                    .publish(region, with_custom_section(module, i), Origin::ModuleStore)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                publishes.push(started.elapsed());
            }
        }
        stop.store(true, Ordering::Relaxed);
        let gaps: Vec<Gaps> = workers.into_iter().map(|w| w.join().expect("worker panicked")).collect();
        let cell = |g: &Gaps| format!("{:.2?} / {:.2?}", g.longest, g.median_batch);
        println!("{label:<28} {:>20} {:>20}", cell(&gaps[0]), cell(&gaps[1]));
        if !publishes.is_empty() {
            publishes.sort();
            println!("{:<28} each publication (compile + gate): median {:.2?}", "", publishes[publishes.len() / 2]);
        }
        if let Some(mut first) = Some(gaps[0].first_on_new.clone()).filter(|f| !f.is_empty()) {
            first.sort();
            println!(
                "{:<28} first batch on each new europe module: median {:.2?}, max {:.2?} ({} swaps)",
                "",
                first[first.len() / 2],
                first[first.len() - 1],
                first.len()
            );
        }
    }
    println!("(2 cores: during a publish the compile competes with both workers for CPU)");
    Ok(())
}

/// `BATCH` sign-ups routed to `region`.
fn sign_ups_in(generator: &mut xtask::signups::Generator, catalogs: &Catalogs, region: &str) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < BATCH {
        for line in generator.batch(500, None) {
            let v: serde_json::Value = serde_json::from_str(&line).expect("the generator writes JSON");
            let country = v["location"]["country"].as_str().unwrap_or_default();
            if catalogs.route(country) == Some(region) && out.len() < BATCH {
                out.push(line);
            }
        }
    }
    out
}

/// Runs batches until one comes out from `digest`; the time since `started`.
fn until_served(enricher: &Enricher, inputs: &[String], digest: &str, started: Instant) -> Duration {
    let refs: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();
    let needle = format!("\"digest\":\"{digest}\"");
    loop {
        let outcomes = enricher.enrich(&refs).outcomes;
        let served = outcomes.iter().any(|o| match o {
            Outcome::Offer { line, .. } => String::from_utf8_lossy(line).contains(&needle),
            Outcome::DeadLetter { .. } => false,
        });
        if served {
            return started.elapsed();
        }
    }
}

/// What a worker saw.
struct Gaps {
    longest: Duration,
    median_batch: Duration,
    /// Durations of the first batch on each new module.
    first_on_new: Vec<Duration>,
}

/// Enriches `inputs` as one batch until `stop`: the longest time between
/// two finished batches, and how long batches took, the first batch on each
/// newly swapped-in module apart.
fn longest_gap(enricher: &Enricher, inputs: &[String], stop: &AtomicBool) -> Gaps {
    let refs: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut durations = Vec::new();
    let mut first_on_new = Vec::new();
    let mut digest = String::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcomes = enricher.enrich(&refs).outcomes;
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        durations.push(now - started);
        if let Some(Outcome::Offer { line, .. }) = outcomes.iter().find(|o| matches!(o, Outcome::Offer { .. })) {
            let line = String::from_utf8_lossy(line);
            let current = line.split("\"digest\":\"").nth(1).and_then(|d| d.split('"').next()).unwrap_or_default();
            if current != digest {
                if !digest.is_empty() {
                    first_on_new.push(now - started);
                }
                digest = current.to_owned();
            }
        }
    }
    durations.sort();
    Gaps { longest, median_batch: durations[durations.len() / 2], first_on_new }
}
