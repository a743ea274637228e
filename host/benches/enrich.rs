//! Full-path throughput: JSON line → decode → rules → JSON line, through the
//! WebAssembly module (production limits on; contract 1.1, and the same rules
//! built at contract 1.0) and through the same rule logic compiled natively
//! into the host, side by side in one run.
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
use offerd::catalog::Catalogs;
use offerd::engine::{Engine, Limits, RegionRules, RuleModule};
use offerd::enricher::{Enricher, Outcome};
use offerd::module_store::LoadedRules;

mod native;
use native::Native;

const RECORDS: usize = 20_000;
const ROUNDS: usize = 7;

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let catalogs = Arc::new(Catalogs::load(&root.join("catalogs"))?);
    let engine = Engine::new(Limits::default())?;
    let module = Arc::new(RuleModule::load(&engine, &xtask::build_component("offer-rules")?)?);
    let wasm = enricher(&catalogs, &module)?;
    // The same rules at contract 1.0.0: what `enrich-compact` buys.
    let contract_1_0 = enricher(
        &catalogs,
        &Arc::new(RuleModule::load(&engine, &xtask::build_component_with_features("offer-rules", "contract-1-0")?)?),
    )?;
    let native = Native::new(&catalogs, catalogs.regions(), module.info());
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
        "{:>6}  {:>12}  {:>9}  {:>14}  {:>14}  {:>14}  {:>18}  {:>20}  {:>18}",
        "batch",
        "wasm/native",
        "1.1/1.0",
        "wasm rec/s",
        "wasm 1.0 rec/s",
        "native rec/s",
        "no-op module rec/s",
        "stream prepare rec/s",
        "wasm faults/1k rec"
    );
    for batch in [1, 100, 500] {
        let (mut w, mut old, mut n, mut f, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Page faults of the wasm path alone: allocator churn shows here.
        let mut faults = 0;
        for _ in 0..ROUNDS {
            let before = minor_faults();
            w.push(run(&inputs, batch, |chunk| wasm.enrich(chunk).outcomes));
            faults += minor_faults() - before;
            old.push(run(&inputs, batch, |chunk| contract_1_0.enrich(chunk).outcomes));
            n.push(run(&inputs, batch, |chunk| native.enrich(chunk)));
            f.push(run(&inputs, batch, |chunk| floor.enrich(chunk).outcomes));
            p.push(prepare_all(&records, batch, &wasm));
        }
        let faults = faults as f64 * 1000.0 / (ROUNDS * RECORDS) as f64;
        let (w, old, n, f, p) = (median(w), median(old), median(n), median(f), median(p));
        let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
        println!(
            "{batch:>6}  {:>11.2}x  {:>8.2}x  {:>14.0}  {:>14.0}  {:>14.0}  {:>18.0}  {:>20.0}  {faults:>18.1}",
            n.as_secs_f64() / w.as_secs_f64(),
            old.as_secs_f64() / w.as_secs_f64(),
            rate(w),
            rate(old),
            rate(n),
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
            &offerd::engine::BatchBudget::start(),
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
