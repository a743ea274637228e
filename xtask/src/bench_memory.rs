//! `cargo xtask bench-memory`: resident memory of `offerd run` as regions
//! and shards grow, through kinesalite.
//!
//! The 50 regions are the five stock ones with their countries dealt into
//! ten groups each; each keeps its parent's plans (those sold in its
//! countries), promos and metro areas (those in its countries). Each row is
//! a fresh offerd, measured from `/proc` once every shard's backlog is
//! enriched: VmRSS now, and VmHWM (the peak).
//!
//! 1. 5 regions, 1 shard: the baseline.
//! 2. 50 regions sharing one module (`default.wasm`): per region, a catalog
//!    and primed instances.
//! 3. 50 regions with a module each (50 digests): compiled code per region
//!    too, the worst case.
//! 4. the same with 16 shards: per shard, its reader, buffers and the extra
//!    instances that shards enriching at once need.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::{Progress, Streams, client, create_stream, free_addr, offerd_command, stop};
use xtask::kinesalite;
use xtask::kinesis_local::npm_ci;

/// Regions each stock region is split into.
const SPLIT: usize = 10;
/// Sign-ups put on every input shard before offerd starts.
const PER_SHARD: usize = 1_000;

struct Row {
    label: &'static str,
    regions: usize,
    distinct_modules: bool,
    shards: i32,
}

const ROWS: &[Row] = &[
    Row { label: "stock catalogs", regions: 5, distinct_modules: false, shards: 1 },
    Row { label: "one module shared", regions: 50, distinct_modules: false, shards: 1 },
    Row { label: "a module per region", regions: 50, distinct_modules: true, shards: 1 },
    Row { label: "a module per region", regions: 50, distinct_modules: true, shards: 16 },
];

pub fn run() -> Result<()> {
    let root = xtask::workspace_root();
    let work = root.join("target/bench-memory");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let split_catalogs = work.join("catalogs-50");
    let region_names = split(&root.join("catalogs"), &split_catalogs)?;
    xtask::ensure_guest_target()?;
    let component = xtask::build_component("offer-rules")?;
    let shared = work.join("modules-shared");
    std::fs::create_dir_all(&shared)?;
    std::fs::write(shared.join("default.wasm"), &component)?;
    let distinct = work.join("modules-distinct");
    std::fs::create_dir_all(&distinct)?;
    for (i, region) in region_names.iter().enumerate() {
        std::fs::write(
            distinct.join(format!("{region}.wasm")),
            xtask::component_edits::with_custom_section(&component, i),
        )?;
    }
    crate::demo::build_offerd(true)?;
    if !root.join("node_modules/kinesalite/index.js").is_file() {
        npm_ci(&root)?;
    }
    let server = kinesalite::start(&root)?;
    let aws_env = crate::demo::local_aws_env(&server.endpoint, None);
    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 3)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        println!("offerd run (release build) through kinesalite, {PER_SHARD} sign-ups per shard, batches of 500:");
        println!("{:>8} {:>8} {:>22} {:>12} {:>12}", "regions", "shards", "modules", "VmRSS MB", "VmHWM MB");
        let mut measured = Vec::new();
        for (i, row) in ROWS.iter().enumerate() {
            let streams = Streams {
                input: format!("memory-{i}-signups"),
                output: format!("memory-{i}-offers"),
                dead_letters: format!("memory-{i}-dead"),
            };
            for (stream, n) in [(&streams.input, row.shards), (&streams.output, 4), (&streams.dead_letters, 1)] {
                create_stream(&client, stream, n).await?;
            }
            let backlog = PER_SHARD * row.shards as usize;
            for chunk in generator.batch(backlog, None).chunks(500) {
                crate::demo::put(&client, &streams.input, chunk).await?;
            }
            let (catalogs, modules) = match (row.regions, row.distinct_modules) {
                (5, _) => (root.join("catalogs"), &shared),
                (_, false) => (split_catalogs.clone(), &shared),
                (_, true) => (split_catalogs.clone(), &distinct),
            };
            let metrics = free_addr()?;
            let mut command = offerd_command(&streams, Some(modules), &metrics, &aws_env);
            command.arg("--catalogs").arg(&catalogs).args(["--batch-size", "500"]);
            command.arg("--checkpoints").arg(work.join(format!("checkpoints-{i}.json")));
            let offerd = command.spawn().context("starting offerd")?;
            let (rss, hwm) = drained(&offerd, &metrics, backlog).await;
            stop(offerd)?;
            let (rss, hwm) = (rss?, hwm?);
            let modules = if row.distinct_modules { format!("{} distinct", row.regions) } else { "1".into() };
            println!("{:>8} {:>8} {:>22} {:>12.1} {:>12.1}", row.regions, row.shards, modules, mb(rss), mb(hwm));
            measured.push((row, rss));
        }
        let rss = |i: usize| mb(measured[i].1);
        println!(
            "\nper region beyond the first 5: {:.2} MB sharing one module, {:.2} MB with its own module; \
             per shard beyond the first: {:.2} MB",
            (rss(1) - rss(0)) / 45.0,
            (rss(2) - rss(0)) / 45.0,
            (rss(3) - rss(2)) / 15.0,
        );
        println!("({} regions: {})", measured[1].0.label, region_names.len());
        Ok(())
    })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Waits until `backlog` records came out, then reads (VmRSS, VmHWM).
async fn drained(offerd: &Child, metrics: &str, backlog: usize) -> (Result<u64>, Result<u64>) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = Progress::scrape(metrics).map(|p| p.offers() + p.dead_letters).unwrap_or(0);
        if done >= backlog as u64 {
            break;
        }
        if Instant::now() > deadline {
            let e = || anyhow::anyhow!("offerd enriched {done} of {backlog} in 5 minutes");
            return (Err(e()), Err(e()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (status_kb(offerd.id(), "VmRSS:"), status_kb(offerd.id(), "VmHWM:"))
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in status"))?;
    let kb: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse()?;
    Ok(kb * 1024)
}

/// Writes `SPLIT` regions per stock region into `out`; returns their names.
fn split(stock: &Path, out: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(out)?;
    let routing: toml::Table = toml::from_str(&std::fs::read_to_string(stock.join("regions.toml"))?)?;
    let regions = routing["regions"].as_table().context("regions.toml has [regions]")?;
    let mut routes = toml::Table::new();
    let mut names = Vec::new();
    for (parent, entry) in regions {
        let countries: Vec<&str> =
            entry["countries"].as_array().context("countries")?.iter().filter_map(|c| c.as_str()).collect();
        let file = stock.join(format!("{parent}.toml"));
        let catalog: toml::Table = toml::from_str(&std::fs::read_to_string(&file)?)?;
        // Dealt like cards, so every group has neighbours and far-off countries.
        for g in 0..SPLIT {
            let group: Vec<&str> = countries.iter().skip(g).step_by(SPLIT).copied().collect();
            let name = format!("{parent}-{g}");
            let mut part = catalog.clone();
            part.insert("region".into(), name.clone().into());
            let in_group = |v: &toml::Value| v.as_str().is_some_and(|c| group.contains(&c));
            if let Some(metros) = part.get_mut("metros").and_then(toml::Value::as_array_mut) {
                metros.retain(|m| m.get("country").is_some_and(in_group));
            }
            let plans = part.get_mut("plans").and_then(toml::Value::as_array_mut).context("plans")?;
            plans.retain_mut(|p| {
                let Some(sold_in) = p.get_mut("countries").and_then(toml::Value::as_array_mut) else { return true };
                if sold_in.is_empty() {
                    return true;
                }
                sold_in.retain(in_group);
                !sold_in.is_empty()
            });
            std::fs::write(out.join(format!("{name}.toml")), toml::to_string(&part)?)?;
            let entry = toml::Table::from_iter([("countries".to_owned(), toml::Value::from(group))]);
            routes.insert(name.clone(), entry.into());
            names.push(name);
        }
    }
    if names.len() != 50 {
        bail!("splitting gave {} regions, not 50", names.len());
    }
    let routing = toml::Table::from_iter([("regions".to_owned(), toml::Value::from(routes))]);
    std::fs::write(out.join("regions.toml"), toml::to_string(&routing)?)?;
    Ok(names)
}
