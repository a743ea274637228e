//! What a large catalog costs: records/s of the reference rules as the plans
//! and metro areas of one region grow, through the WebAssembly module
//! (production limits on) and natively, side by side in one run, with the
//! time `init` takes to prime an instance with the catalog.
//!
//! The region is asia-pacific, the only one with more than 10,000 GeoNames
//! cities of 15,000+ inhabitants. Its metro areas are its N most populous
//! cities; its plans are the stock catalog's 23, then faster and dearer
//! variants of them (none dominates another, so all stay in the running).
//!
//! `cargo bench -p offerd --bench catalog_size`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offerd::catalog::{Catalogs, Metro, Plan, RegionCatalog};
use offerd::engine::{Engine, Limits, RegionRules, RuleModule};
use offerd::enricher::{Enricher, Outcome};
use offerd::module_store::LoadedRules;
use offerd::signup::SignUp;
use xtask::signups::City;

mod native;
use native::Native;

const REGION: &str = "asia-pacific";
const RECORDS: usize = 10_000;
const BATCH: usize = 500;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let catalogs = Arc::new(Catalogs::load(&root.join("catalogs"))?);
    let base = catalogs.region(REGION).expect("the stock catalogs have asia-pacific").clone();
    let cities_csv = root.join("catalogs/geonames/cities15000.csv");
    let mut cities = xtask::signups::cities(&cities_csv)?;
    cities.retain(|c| catalogs.route(&c.country) == Some(REGION));
    cities.sort_by_key(|c| std::cmp::Reverse(c.population));

    let engine = Engine::new(Limits::default())?;
    let module = Arc::new(RuleModule::load(&engine, &xtask::build_component("offer-rules")?)?);

    // The region's own sign-ups, as the generator draws them (by population).
    let mut generator = xtask::signups::Generator::new(&cities_csv, 11)?;
    let mut inputs = Vec::with_capacity(RECORDS);
    while inputs.len() < RECORDS {
        inputs.extend(
            generator
                .batch(1_000, None)
                .into_iter()
                .filter(|s| SignUp::decode(s.as_bytes()).is_ok_and(|s| catalogs.route(&s.country) == Some(REGION))),
        );
    }
    inputs.truncate(RECORDS);
    let refs: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();

    println!("{RECORDS} {REGION} sign-ups, batch {BATCH}, median of {ROUNDS} rounds; limits: {:?}", Limits::default());
    println!(
        "{:>6}  {:>7}  {:>12}  {:>14}  {:>14}  {:>13}  {:>12}  {:>8}",
        "plans", "metros", "wasm/native", "wasm rec/s", "native rec/s", "wasm init ms", "offers/rec", "refused"
    );
    for plans in [10, 100, 1_000] {
        for metros in [100, 1_000, 10_000] {
            let catalog = Arc::new(scaled(&base, plans, &cities[..metros.min(cities.len())]));
            let start = Instant::now();
            let rules = Arc::new(RegionRules::new(module.clone(), catalog.clone())?);
            let init = start.elapsed();
            let wasm = Enricher::new(
                catalogs.clone(),
                LoadedRules { rules: HashMap::from([(REGION.to_owned(), rules)]), unserved: Default::default() },
            );
            let native = Native::new(&catalogs, std::iter::once(&*catalog), module.info());
            let (mut w, mut n) = (Vec::new(), Vec::new());
            let mut tally = (0, 0);
            for _ in 0..ROUNDS {
                let start = Instant::now();
                for chunk in refs.chunks(BATCH) {
                    tally = count(&wasm.enrich(chunk).outcomes);
                }
                w.push(start.elapsed());
                let start = Instant::now();
                for chunk in refs.chunks(BATCH) {
                    std::hint::black_box(native.enrich(chunk));
                }
                n.push(start.elapsed());
            }
            let (offered, refused) = tally;
            let (w, n) = (median(w), median(n));
            let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
            println!(
                "{plans:>6}  {:>7}  {:>11.2}x  {:>14.0}  {:>14.0}  {:>13.1}  {:>12.2}  {refused:>8}",
                catalog.metros.len(),
                n.as_secs_f64() / w.as_secs_f64(),
                rate(w),
                rate(n),
                init.as_secs_f64() * 1e3,
                offered as f64 / BATCH as f64,
            );
        }
    }
    Ok(())
}

/// `plans` plans and the given cities as metro areas, on `base`'s terms.
fn scaled(base: &RegionCatalog, plans: usize, cities: &[City]) -> RegionCatalog {
    // The fallbacks (deliverable anywhere) first, so that 10 plans still
    // have one, as the reference rules require.
    let mut order: Vec<&Plan> = base.plans.iter().collect();
    order.sort_by_key(|p| p.coverage.is_some() || !p.countries.is_empty() || !p.postal_prefixes.is_empty());
    let plans = (0..plans)
        .map(|k| {
            let (p, level) = (order[k % order.len()], (k / order.len()) as u32);
            Plan {
                id: if level == 0 { p.id.clone() } else { format!("{}-{level}", p.id) },
                // 2 % faster and 3 % dearer per level: no variant dominates another.
                down_mbps: p.down_mbps + p.down_mbps * level / 50,
                up_mbps: p.up_mbps + p.up_mbps * level / 50,
                monthly_price_minor: p.monthly_price_minor + p.monthly_price_minor * u64::from(level) * 3 / 100,
                ..p.clone()
            }
        })
        .collect();
    let metros = cities
        .iter()
        .map(|c| Metro {
            name: c.name.clone(),
            country: c.country.clone(),
            lat: c.lat,
            lon: c.lon,
            population: c.population,
        })
        .collect();
    RegionCatalog { plans, metros, ..base.clone() }
}

/// Offers given and sign-ups refused in the last batch.
fn count(outcomes: &[Outcome]) -> (usize, usize) {
    let mut tally = (0, 0);
    for o in outcomes {
        match o {
            Outcome::Offer { line, .. } => tally.0 += line.windows(9).filter(|w| w == b"\"plan_id\"").count(),
            _ => tally.1 += 1,
        }
    }
    tally
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
