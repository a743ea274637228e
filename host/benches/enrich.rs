//! Full-path throughput: JSON line → decode → rules → JSON line, through the
//! WebAssembly module (production limits on) and through the same rule logic
//! compiled natively into the host, side by side in one run.
//!
//! The last column runs the stream processor's per-batch work without the
//! network (`offerd::stream::prepare`): the host's own ceiling.
//!
//! `cargo bench -p offerd --bench enrich`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::Record;
use offerd::catalog::{self, Catalogs, RegionCatalog};
use offerd::engine::{Engine, Limits, Offer, RegionRules, RuleModule};
use offerd::enricher::{Enricher, Outcome};
use offerd::module_store::LoadedRules;
use offerd::record::{self, OfferEncoder, Reason};
use offerd::signup::SignUp;

const RECORDS: usize = 20_000;
const ROUNDS: usize = 7;

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let catalogs = Arc::new(Catalogs::load(&root.join("catalogs"))?);
    let engine = Engine::new(Limits::default())?;
    let module = Arc::new(RuleModule::load(&engine, &xtask::build_component("offer-rules")?)?);
    let wasm = enricher(&catalogs, &module)?;
    let native = Native::new(&catalogs, module.info());
    // The test suite's module answers every sign-up with plan 0 at once: what
    // remains is the host, the boundary and the instance, without rule work.
    let floor =
        enricher(&catalogs, &Arc::new(RuleModule::load(&engine, &xtask::build_component("misbehave-rules")?)?))?;

    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 7)?;
    let inputs: Vec<String> = generator.batch(RECORDS, None);
    let avg = inputs.iter().map(String::len).sum::<usize>() / inputs.len();
    println!(
        "{RECORDS} sign-ups of {avg} bytes on average; limits: {:?}; median of {ROUNDS} rounds",
        Limits::default()
    );
    // The same sign-ups as Kinesis records, for the stream path's own work.
    let records: Vec<Record> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Record::builder()
                .sequence_number(format!("4968059517180980410647560472685384362946382431251123{i:04}"))
                .partition_key(format!("u-{i}"))
                .data(Blob::new(s.as_bytes()))
                .build()
                .expect("every required field is set")
        })
        .collect();
    println!(
        "{:>6}  {:>14}  {:>14}  {:>12}  {:>22}  {:>24}  {:>18}",
        "batch",
        "wasm rec/s",
        "native rec/s",
        "wasm/native",
        "no-op module rec/s",
        "stream prepare rec/s",
        "wasm faults/1k rec"
    );
    for batch in [1, 100, 500] {
        let (mut w, mut n, mut f, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Page faults of the wasm path alone: allocator churn shows here.
        let mut faults = 0;
        for _ in 0..ROUNDS {
            let before = minor_faults();
            w.push(run(&inputs, batch, |chunk| wasm.enrich(chunk).outcomes));
            faults += minor_faults() - before;
            n.push(run(&inputs, batch, |chunk| native.enrich(chunk)));
            f.push(run(&inputs, batch, |chunk| floor.enrich(chunk).outcomes));
            p.push(prepare_all(&records, batch, &wasm));
        }
        let faults = faults as f64 * 1000.0 / (ROUNDS * RECORDS) as f64;
        let (w, n, f, p) = (median(w), median(n), median(f), median(p));
        let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
        println!(
            "{batch:>6}  {:>14.0}  {:>14.0}  {:>11.2}x  {:>22.0}  {:>24.0}  {faults:>18.1}",
            rate(w),
            rate(n),
            n.as_secs_f64() / w.as_secs_f64(),
            rate(f),
            rate(p)
        );
    }
    Ok(())
}

/// Every region served by `module`, as `offerd` would load it.
fn enricher(catalogs: &Arc<Catalogs>, module: &Arc<RuleModule>) -> anyhow::Result<Enricher> {
    let mut rules = HashMap::new();
    for c in catalogs.regions() {
        rules.insert(c.region.clone(), Arc::new(RegionRules::new(module.clone(), Arc::new(c.clone()))?));
    }
    Ok(Enricher::new(catalogs.clone(), LoadedRules { rules, unserved: Default::default() }))
}

fn run(inputs: &[String], batch: usize, mut f: impl FnMut(&[&[u8]]) -> Vec<Outcome>) -> Duration {
    let refs: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();
    let start = Instant::now();
    let mut produced = 0;
    for chunk in refs.chunks(batch) {
        produced += std::hint::black_box(f(chunk)).len();
    }
    let took = start.elapsed();
    assert_eq!(produced, inputs.len());
    took
}

/// The stream path short of the network: de-aggregation check, enrichment,
/// source tagging and PutRecords entries, as one shard's batch.
fn prepare_all(records: &[Record], batch: usize, enricher: &Enricher) -> Duration {
    let start = Instant::now();
    let mut produced = 0;
    for chunk in records.chunks(batch) {
        let prepared = std::hint::black_box(offerd::stream::prepare(
            enricher,
            "shardId-000000000000",
            chunk,
            offerd::stream::kpl::DEFAULT_MAX_RECORDS,
        ));
        produced += prepared.offers.len() + prepared.dead_letters.len();
    }
    let took = start.elapsed();
    assert_eq!(produced, records.len());
    took
}

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_minflt
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The same decode, routing and encoding as [`Enricher`], with the rules
/// called as a native library instead of a module.
struct Native {
    catalogs: Arc<Catalogs>,
    rules: HashMap<String, (offer_rules::Rules, OfferEncoder)>,
}

impl Native {
    fn new(catalogs: &Arc<Catalogs>, info: &offerd::engine::ModuleInfo) -> Self {
        let rules = catalogs
            .regions()
            .map(|c| {
                (c.region.clone(), (offer_rules::Rules::new(native_catalog(c)).unwrap(), OfferEncoder::new(c, info)))
            })
            .collect();
        Self { catalogs: catalogs.clone(), rules }
    }

    fn enrich(&self, inputs: &[&[u8]]) -> Vec<Outcome> {
        inputs
            .iter()
            .map(|input| {
                let mut line = Vec::with_capacity(512);
                let signup = match SignUp::decode(input) {
                    Ok(s) => s,
                    Err(e) => {
                        record::write_dead_letter(
                            &mut line,
                            Reason::InvalidRecord,
                            &e.to_string(),
                            None,
                            None,
                            input,
                            None,
                        );
                        return Outcome::DeadLetter { reason: Reason::InvalidRecord, line };
                    }
                };
                let region = self.catalogs.route(&signup.country).expect("generated countries are routed");
                let native = offer_rules::SignUp {
                    country: &signup.country,
                    postal_code: signup.postal_code.as_deref(),
                    coordinates: signup.coordinates,
                    segment: match signup.segment {
                        catalog::Segment::Residential => offer_rules::Segment::Residential,
                        catalog::Segment::Business => offer_rules::Segment::Business,
                    },
                    signed_up_day: signup.signed_up_day,
                };
                let (rules, encoder) = &self.rules[region];
                match rules.enrich(&native) {
                    Ok(offers) => {
                        let offers: Vec<Offer> = offers
                            .iter()
                            .map(|o| Offer {
                                plan: o.plan as usize,
                                monthly_price_minor: o.monthly_price_minor,
                                promo: o.promo.map(|p| (p.promo as usize, p.monthly_price_minor)),
                            })
                            .collect();
                        encoder.write(&mut line, &signup, &offers, None);
                        Outcome::Offer { user_id: signup.user_id.to_string(), line }
                    }
                    Err(e) => {
                        record::write_dead_letter(
                            &mut line,
                            Reason::RuleRejected,
                            &format!("{e:?}"),
                            None,
                            Some(signup.user_id.as_ref()),
                            input,
                            None,
                        );
                        Outcome::DeadLetter { reason: Reason::RuleRejected, line }
                    }
                }
            })
            .collect()
    }
}

fn technology(t: catalog::Technology) -> offer_rules::Technology {
    match t {
        catalog::Technology::Fiber => offer_rules::Technology::Fiber,
        catalog::Technology::Cable => offer_rules::Technology::Cable,
        catalog::Technology::Dsl => offer_rules::Technology::Dsl,
        catalog::Technology::FixedWireless => offer_rules::Technology::FixedWireless,
        catalog::Technology::Satellite => offer_rules::Technology::Satellite,
    }
}

fn segment(s: catalog::Segment) -> offer_rules::Segment {
    match s {
        catalog::Segment::Residential => offer_rules::Segment::Residential,
        catalog::Segment::Business => offer_rules::Segment::Business,
    }
}

fn native_catalog(c: &RegionCatalog) -> offer_rules::Catalog {
    offer_rules::Catalog {
        region: c.region.clone(),
        currency: c.currency.clone(),
        countries: c.countries.clone(),
        max_offers: c.max_offers,
        plans: c
            .plans
            .iter()
            .map(|p| offer_rules::Plan {
                id: p.id.clone(),
                name: p.name.clone(),
                technology: technology(p.technology),
                segment: p.segment.map(segment),
                down_mbps: p.down_mbps,
                up_mbps: p.up_mbps,
                monthly_price_minor: p.monthly_price_minor,
                countries: p.countries.clone(),
                postal_prefixes: p.postal_prefixes.clone(),
                coverage: p
                    .coverage
                    .map(|c| offer_rules::Coverage { max_km: c.max_km, min_population: c.min_population }),
            })
            .collect(),
        metros: c
            .metros
            .iter()
            .map(|m| offer_rules::Metro { lat: m.lat, lon: m.lon, population: m.population })
            .collect(),
        promos: c
            .promos
            .iter()
            .map(|p| offer_rules::Promo {
                id: p.id.clone(),
                name: p.name.clone(),
                percent_off: p.percent_off,
                months: p.months,
                technologies: p.technologies.iter().copied().map(technology).collect(),
                segment: p.segment.map(segment),
                valid_from_day: p.valid_from,
                valid_until_day: p.valid_until,
            })
            .collect(),
    }
}
