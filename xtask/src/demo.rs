//! `cargo xtask demo`: the main job on local defaults, end to end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

pub fn run(count: usize) -> Result<()> {
    let root = xtask::workspace_root();
    let work = root.join("target/demo");
    let modules = work.join("modules");
    std::fs::create_dir_all(&modules)?;
    xtask::ensure_guest_target()?;
    println!("building the reference rules module…");
    std::fs::write(modules.join("default.wasm"), xtask::build_component("offer-rules")?)?;

    // One in fifty is malformed on purpose, to show the dead letters.
    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 2026)?;
    let mut input = String::new();
    for line in generator.batch(count, Some(50)) {
        writeln!(input, "{line}")?;
    }
    let (signups, offers, dead) =
        (work.join("signups.jsonl"), work.join("offers.jsonl"), work.join("dead-letters.jsonl"));
    std::fs::write(&signups, input)?;

    println!("enriching {count} sign-ups…");
    let path = |p: &std::path::Path| p.to_str().expect("the checkout path is UTF-8").to_owned();
    xtask::cargo(&[
        "run",
        "--quiet",
        "--package",
        "offerd",
        "--",
        "enrich",
        "--modules",
        &path(&modules),
        "--catalogs",
        &path(&root.join("catalogs")),
        "--input",
        &path(&signups),
        "--output",
        &path(&offers),
        "--dead-letters",
        &path(&dead),
    ])?;

    let read = |p: &std::path::Path| -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        text.lines().map(|l| serde_json::from_str(l).context("offerd wrote a line that is not JSON")).collect()
    };
    let (offers_out, dead_out) = (read(&offers)?, read(&dead)?);
    let mut by_region: BTreeMap<String, usize> = BTreeMap::new();
    for o in &offers_out {
        *by_region.entry(o["region"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead_out {
        *by_reason.entry(d["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    println!("\n{count} sign-ups in → {} offer records + {} dead letters", offers_out.len(), dead_out.len());
    println!("offer records by region: {by_region:?}");
    println!("dead letters by reason:  {by_reason:?}");
    println!("\na few offers:");
    for o in offers_out.iter().step_by(offers_out.len().max(3) / 3).take(3) {
        let first = &o["offers"][0];
        println!(
            "  {} in {} ({}): {} for {} {} (rule {} {})",
            o["user_id"].as_str().unwrap_or("?"),
            o["country"].as_str().unwrap_or("?"),
            o["region"].as_str().unwrap_or("?"),
            first["name"],
            first["monthly_price"]["amount_minor"].as_u64().unwrap_or(0) as f64 / 100.0,
            first["monthly_price"]["currency"].as_str().unwrap_or("?"),
            o["rule"]["version"].as_str().unwrap_or("?"),
            o["rule"]["digest"].as_str().unwrap_or("?").get(..19).unwrap_or("?"),
        );
    }
    if let Some(d) = dead_out.first() {
        println!("\na dead letter:\n  {d}");
    }
    println!("\nfiles: {}", work.display());
    Ok(())
}
