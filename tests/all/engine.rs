//! The engine with real components: limits obeyed and violated, poison-record
//! isolation, and refusal of components that break the contract.

use std::sync::Arc;
use std::time::Duration;

use offerd::catalog::Catalogs;
use offerd::engine::{Contract, Engine, FailureKind, Limits, ModuleError, RegionRules, RuleModule};
use offerd::enricher::{Enricher, Outcome};
use offerd::module_store::LoadedRules;
use offerd::record::Reason;
use offerd::signup::SignUp;
use offerd_tests::{component, repo};

/// The reference rules compiled into the host, on the same decode, routing
/// and encoding as the module path: shared with the benches that compare them.
#[path = "../../host/benches/native/mod.rs"]
mod native;

fn engine() -> Engine {
    Engine::new(Limits { call_timeout: Duration::from_millis(100), ..Limits::default() }).unwrap()
}

fn load(engine: &Engine, name: &str) -> Result<RuleModule, ModuleError> {
    RuleModule::load(engine, &std::fs::read(component(name)).unwrap())
}

fn europe(module: RuleModule) -> RegionRules {
    let catalogs = Catalogs::load(&super::catalogs()).unwrap();
    RegionRules::new(Arc::new(module), Arc::new(catalogs.region("europe").unwrap().clone())).unwrap()
}

/// Sign-ups whose postal code is the misbehaving module's command.
fn commands(cmds: &[&str]) -> Vec<Vec<u8>> {
    cmds.iter()
        .enumerate()
        .map(|(i, c)| {
            format!(r#"{{"user_id": "u{i}", "location": {{"country": "DE", "postal_code": "{c}"}}}}"#).into_bytes()
        })
        .collect()
}

fn kinds(rules: &RegionRules, inputs: &[Vec<u8>]) -> Vec<Option<FailureKind>> {
    let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let refs: Vec<&SignUp<'_>> = signups.iter().collect();
    rules.enrich(&refs).into_iter().map(|r| r.err().map(|f| f.kind)).collect()
}

#[test]
fn reference_module_reports_its_metadata_and_digest() {
    let bytes = std::fs::read(component("reference")).unwrap();
    let module = RuleModule::load(&engine(), &bytes).unwrap();
    assert_eq!(module.info().name, "reference-offer-rules");
    assert_eq!(module.info().version.to_string(), env!("CARGO_PKG_VERSION"));
    let digest = module.info().digest.strip_prefix("sha256:").unwrap();
    assert_eq!(digest.len(), 64);
    // Same bytes, same digest; one byte more, another.
    let other = RuleModule::load(&engine(), &[bytes.as_slice(), &[0, 0, 0, 0]].concat());
    assert!(other.is_err() || other.unwrap().info().digest != module.info().digest);
}

#[test]
fn a_trapping_record_fails_alone_and_the_rest_of_its_batch_is_served() {
    let rules = europe(load(&engine(), "misbehave").unwrap());
    let got = kinds(&rules, &commands(&["ok", "ok", "trap", "ok", "reject"]));
    assert_eq!(got, [None, None, Some(FailureKind::Trap), None, Some(FailureKind::Rejected("unusable"))]);
    // The failure says where in the guest it trapped, first.
    let inputs = commands(&["trap"]);
    let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let failure = rules.enrich(&signups.iter().collect::<Vec<_>>()).remove(0).unwrap_err();
    let first = failure.detail.lines().next().unwrap();
    assert_eq!(first, "wasm trap: wasm `unreachable` instruction executed in offers:rules/rules@1.0.0#enrich");
    // The poisoned instance was dropped: the next batch is served normally.
    assert_eq!(kinds(&rules, &commands(&["ok", "ok"])), [None, None]);
}

#[test]
fn an_endless_loop_is_stopped_by_the_deadline() {
    let rules = europe(load(&engine(), "misbehave").unwrap());
    let got = kinds(&rules, &commands(&["ok", "loop", "ok"]));
    assert_eq!(got, [None, Some(FailureKind::Timeout), None]);
}

#[test]
fn a_gigabyte_allocation_hits_the_memory_cap() {
    let rules = europe(load(&engine(), "misbehave").unwrap());
    let signups = commands(&["alloc", "ok"]);
    let decoded: Vec<SignUp<'_>> = signups.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let results = rules.enrich(&decoded.iter().collect::<Vec<_>>());
    let failure = results[0].as_ref().unwrap_err();
    assert_eq!(failure.kind, FailureKind::Memory);
    assert!(failure.detail.contains("cap is 67108864"), "{}", failure.detail);
    assert!(results[1].is_ok());
}

/// Answers outside the contract fail their own record with what was wrong.
/// An answer far beyond the limits is refused while it is lifted, before the
/// host copies it: `flood`'s 300,000 offers would take 12 MB of host memory,
/// and a module pointing every result at them, 12 MB per sign-up.
#[test]
fn results_outside_the_contract_fail_their_record() {
    let rules = europe(load(&engine(), "misbehave").unwrap());
    let inputs = commands(&["bad-index", "many", "long-reason", "flood", "ok"]);
    let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let results = rules.enrich(&signups.iter().collect::<Vec<_>>());
    let details: Vec<String> = results[..4]
        .iter()
        .map(|r| {
            let failure = r.as_ref().unwrap_err();
            assert_eq!(failure.kind, FailureKind::BadResult, "{}", failure.detail);
            failure.detail.clone()
        })
        .collect();
    assert!(details[0].contains("plan 9999"), "{}", details[0]);
    assert!(details[1].contains("1000 offers; the catalog allows"), "{}", details[1]);
    assert!(details[2].contains("reason of 100000 bytes"), "{}", details[2]);
    assert!(details[3].contains("more than the host copies for a batch"), "{}", details[3]);
    assert!(results[4].is_ok());
}

/// A 1.1 module's failing records are found by bisection as a 1.0
/// module's are, while the sign-ups the host declines itself (a country
/// outside the catalog) keep their places in the batch and never reach the
/// module, even when they would make it trap; a flood of flat offers is
/// refused while it is lifted.
#[test]
fn a_compact_module_is_bisected_around_the_sign_ups_the_host_declines() {
    let rules = europe(load(&engine(), "misbehave-1-1").unwrap());
    assert_eq!(rules.module().info().contract, Contract::V1_1);
    let cases = [
        ("DE", "ok"),
        ("US", "trap"),
        ("DE", "trap"),
        ("FR", "reject"),
        ("US", "ok"),
        ("DE", "flood"),
        ("IT", "a-code-of-over-16-bytes"),
        ("US", "loop"),
        ("ES", "ok"),
    ];
    let inputs: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, (country, cmd))| {
            format!(r#"{{"user_id": "u{i}", "location": {{"country": "{country}", "postal_code": "{cmd}"}}}}"#)
                .into_bytes()
        })
        .collect();
    let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let results = rules.enrich(&signups.iter().collect::<Vec<_>>());
    let kinds: Vec<Option<FailureKind>> = results.iter().map(|r| r.as_ref().err().map(|f| f.kind)).collect();
    let declined = Some(FailureKind::Rejected("country-not-served"));
    assert_eq!(
        kinds,
        [
            None,
            declined,
            Some(FailureKind::Trap),
            Some(FailureKind::Rejected("unusable")),
            declined,
            Some(FailureKind::BadResult),
            None,
            declined,
            None
        ]
    );
    for i in [0, 6, 8] {
        assert_eq!(results[i].as_ref().unwrap().len(), 1, "sign-up {i}: the module's one offer");
    }
    assert!(results[3].as_ref().unwrap_err().detail.contains("told to reject"));
    let flood = &results[5].as_ref().unwrap_err().detail;
    assert!(flood.contains("more than the host copies for a batch"), "{flood}");
}

/// Poison records are found by halving the batch, not by one call per
/// record; a module that fails every record holds the batch for its time
/// budget, and the records left when it is spent fail as timeouts.
#[test]
fn failing_records_are_bisected_within_the_batch_budget() {
    let rules = europe(load(&engine(), "misbehave").unwrap());
    let mut cmds = vec!["ok"; 64];
    cmds[5] = "trap";
    cmds[40] = "trap";
    let got = kinds(&rules, &commands(&cmds));
    let failed: Vec<usize> = got.iter().enumerate().filter(|(_, k)| k.is_some()).map(|(i, _)| i).collect();
    assert_eq!(failed, [5, 40]);

    let engine = Engine::new(Limits {
        call_timeout: Duration::from_millis(50),
        batch_budget: Duration::from_millis(300),
        ..Limits::default()
    })
    .unwrap();
    let rules = europe(load(&engine, "misbehave").unwrap());
    let inputs = commands(&["loop"; 100]);
    let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let results = rules.enrich(&signups.iter().collect::<Vec<_>>());
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|f| f.kind == FailureKind::Timeout)));
    let spent = results.iter().filter(|r| r.as_ref().unwrap_err().detail.contains("time budget")).count();
    // At most budget / timeout calls were made: every other record was failed unrun.
    assert!(spent >= 100 - 300 / 50, "only {spent} of 100 records were cut off by the budget");
}

/// The budget is the batch's, not a region's or a chunk's: once a module
/// that fails has spent it, its records in the batch's later chunks and in
/// other regions fail at once, without a call; a module that has not failed
/// in the batch is still served.
#[test]
fn a_batch_budget_is_shared_by_its_chunks_and_regions() {
    use offerd::engine::BatchBudget;

    let engine = Engine::new(Limits {
        call_timeout: Duration::from_millis(50),
        batch_budget: Duration::from_millis(300),
        ..Limits::default()
    })
    .unwrap();
    let misbehave = Arc::new(load(&engine, "misbehave").unwrap());
    let catalogs = Catalogs::load(&super::catalogs()).unwrap();
    let rules = |module: &Arc<RuleModule>, region: &str| {
        let mut catalog = catalogs.region("europe").unwrap().clone();
        catalog.region = region.into();
        RegionRules::new(module.clone(), Arc::new(catalog)).unwrap()
    };
    let (first, second) = (rules(&misbehave, "first"), rules(&misbehave, "second"));
    let healthy = rules(&Arc::new(load(&engine, "reference").unwrap()), "healthy");
    let inputs = commands(&["loop"; 100]);
    let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
    let batch: Vec<&SignUp<'_>> = signups.iter().collect();
    let cut = |results: &[Result<Vec<offerd::engine::Offer>, offerd::engine::Failure>]| {
        results.iter().filter(|r| r.as_ref().is_err_and(|f| f.detail.contains("time budget"))).count()
    };

    let budget = BatchBudget::start();
    first.enrich_within(&batch, &budget);
    for (what, rules) in [("a later chunk", &first), ("another region", &second)] {
        let started = std::time::Instant::now();
        let results = rules.enrich_within(&batch, &budget);
        let took = started.elapsed();
        assert_eq!(cut(&results), 100, "{what}: records were run after the batch's budget was spent");
        // No call: far less than one call timeout, let alone another budget.
        assert!(took < Duration::from_millis(150), "{what} took {took:?}");
    }
    let served = healthy.enrich_within(&batch, &budget);
    assert!(served.iter().all(Result::is_ok), "a module that did not fail is served after the budget");
}

#[test]
fn a_trap_in_init_refuses_the_module_for_that_region() {
    let module = Arc::new(load(&engine(), "misbehave").unwrap());
    let catalogs = Catalogs::load(&super::catalogs()).unwrap();
    let mut poisoned = catalogs.region("europe").unwrap().clone();
    poisoned.region = "poisoned".into();
    let err = RegionRules::new(module, Arc::new(poisoned)).err().expect("init traps");
    // The name section is kept, so the trap's backtrace names the panic.
    assert!(matches!(&err, ModuleError::Failed { call: "init", detail } if detail.contains("rust_panic")), "{err}");
}

#[test]
fn the_reference_rules_refuse_a_catalog_without_a_fallback_plan() {
    let module = Arc::new(load(&engine(), "reference").unwrap());
    let catalogs = Catalogs::load(&super::catalogs()).unwrap();
    let mut catalog = catalogs.region("europe").unwrap().clone();
    catalog.plans.retain(|p| p.coverage.is_some());
    let err = RegionRules::new(module, Arc::new(catalog)).err().expect("refused");
    assert!(matches!(&err, ModuleError::CatalogRefused { field, .. } if field == "plans"), "{err}");
}

#[test]
fn components_that_break_the_contract_are_refused_with_what_was_found() {
    let engine = engine();
    let err = RuleModule::load(&engine, b"definitely not wasm").err().unwrap();
    assert!(matches!(err, ModuleError::NotAComponent(_)), "{err}");
    // A core module is WebAssembly but not a component.
    let err = RuleModule::load(&engine, b"\0asm\x01\0\0\0").err().unwrap();
    assert!(matches!(err, ModuleError::NotAComponent(_)), "{err}");

    let err = load(&engine, "other-world").err().unwrap();
    assert!(matches!(&err, ModuleError::WrongWorld { found } if found == "charge"), "{err}");
    assert!(err.to_string().contains("offers:rules/rules@1.1.0 or @1.0.0"), "{err}");

    let err = load(&engine, "future-version").err().unwrap();
    assert!(err.to_string().contains("offers:rules/rules@2.0.0"), "{err}");

    let err = load(&engine, "with-import").err().unwrap();
    assert!(matches!(&err, ModuleError::HasImports(names) if names == "log"), "{err}");
}

/// The publication gate refuses each kind of broken module with its reason,
/// and passes the reference rules with their golden cases.
#[test]
fn the_publication_gate_refuses_broken_modules_and_passes_good_ones() {
    use offerd::rollout::{Refused, gate};
    let engine = engine();
    let catalogs = Catalogs::load(&super::catalogs()).unwrap();
    let europe = Arc::new(catalogs.region("europe").unwrap().clone());
    let cases = offerd::golden::load(&[offerd_tests::repo("guest/cases/europe.json")]).unwrap();
    let bytes = |name: &str| std::fs::read(component(name)).unwrap();

    let refused = gate(&engine, b"garbage", europe.clone(), &[]).err().unwrap();
    assert!(matches!(refused, Refused::Module(ModuleError::NotAComponent(_))), "{refused}");
    let refused = gate(&engine, &bytes("other-world"), europe.clone(), &[]).err().unwrap();
    assert!(matches!(refused, Refused::Module(ModuleError::WrongWorld { .. })), "{refused}");
    let refused = gate(&engine, &bytes("future-version"), europe.clone(), &[]).err().unwrap();
    assert!(matches!(refused, Refused::Module(ModuleError::WrongWorld { .. })), "{refused}");
    let refused = gate(&engine, &bytes("misbehave"), europe.clone(), &cases).err().unwrap();
    assert!(matches!(&refused, Refused::Golden(why) if why.contains("inner Berlin")), "{refused}");
    let mut poisoned = (*europe).clone();
    poisoned.region = "poisoned".into();
    let refused = gate(&engine, &bytes("misbehave"), Arc::new(poisoned), &[]).err().unwrap();
    assert!(matches!(refused, Refused::Module(ModuleError::Failed { call: "init", .. })), "{refused}");

    let rules = gate(&engine, &bytes("reference"), europe.clone(), &cases).unwrap();
    assert_eq!(rules.module().info().version.to_string(), "0.1.0");
    // Without cases the misbehaving module passes: its smoke batch neither traps nor stalls.
    assert!(gate(&engine, &bytes("misbehave"), europe, &[]).is_ok());
}

/// Shards enriching one region at once grow its pool of primed instances;
/// a periodic trim shrinks it back to what the last period needed.
#[test]
fn the_instance_pool_grows_with_concurrent_batches_and_is_trimmed_when_idle() {
    let rules = Arc::new(europe(load(&engine(), "reference").unwrap()));
    let inputs: Vec<Vec<u8>> = (0..5_000)
        .map(|i| {
            format!(r#"{{"user_id": "u{i}", "location": {{"country": "DE", "lat": 52.5, "lon": 13.4}}}}"#).into_bytes()
        })
        .collect();
    let inputs = Arc::new(inputs);
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (rules, inputs, barrier) = (rules.clone(), inputs.clone(), barrier.clone());
            std::thread::spawn(move || {
                let signups: Vec<SignUp<'_>> = inputs.iter().map(|b| SignUp::decode(b).unwrap()).collect();
                let batch: Vec<&SignUp<'_>> = signups.iter().collect();
                barrier.wait();
                for _ in 0..3 {
                    assert!(rules.enrich(&batch).iter().all(Result::is_ok));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let grown = rules.idle_instances();
    assert!((2..=4).contains(&grown), "{grown} idle instances after 4 concurrent callers");
    rules.trim_idle(); // keeps the period's peak
    assert_eq!(rules.idle_instances(), grown);
    rules.trim_idle(); // an idle period: one instance is enough
    assert_eq!(rules.idle_instances(), 1);
}

/// Contract 1.1 end to end: the reference module, called through
/// `enrich-compact`, gives byte for byte the offer records of the same rules
/// compiled natively, on generated sign-ups of every region and on the
/// postal codes 1.1 treats apart (16 bytes, longer, not ASCII). A record
/// naming a region that does not serve its country is declined by the host.
#[test]
fn the_compact_contract_gives_the_offers_of_the_rules_compiled_natively() {
    let catalogs = Arc::new(Catalogs::load(&super::catalogs()).unwrap());
    let module = Arc::new(load(&engine(), "reference").unwrap());
    assert_eq!(module.info().contract, Contract::V1_1);
    let rules = catalogs
        .regions()
        .map(|c| (c.region.clone(), Arc::new(RegionRules::new(module.clone(), Arc::new(c.clone())).unwrap())))
        .collect();
    let wasm = Enricher::new(catalogs.clone(), LoadedRules { rules, unserved: Default::default() });
    let native = native::Native::new(&catalogs, catalogs.regions(), module.info());

    let mut generator = xtask::signups::Generator::new(&repo("catalogs/geonames/cities15000.csv"), 17).unwrap();
    let mut inputs = generator.batch(3_000, None);
    let berlin = |id: &str, postal: &str| {
        format!(
            r#"{{"user_id": "{id}", "location": {{"country": "DE", "postal_code": "{postal}", "lat": 52.52, "lon": 13.4}}}}"#
        )
    };
    inputs.extend([
        berlin("twelve", "10115-ABC123"),
        berlin("sixteen", "1011500000000000"),
        berlin("seventeen", "10115000000000000"),
        berlin("not-ascii", "1011ü"),
    ]);
    let refs: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();
    let mut offered = 0;
    for chunk in refs.chunks(100) {
        for ((got, want), input) in wasm.enrich(chunk).outcomes.iter().zip(native.enrich(chunk)).zip(chunk) {
            let input = String::from_utf8_lossy(input);
            match (got, &want) {
                (Outcome::Offer { line: got, .. }, Outcome::Offer { line: want, .. }) => {
                    assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(want), "{input}");
                    offered += 1;
                }
                (Outcome::DeadLetter { reason: got, .. }, Outcome::DeadLetter { reason: want, .. }) => {
                    assert_eq!(got, want, "{input}");
                }
                _ => panic!("{input}: the module and the native rules disagree"),
            }
        }
    }
    assert!(offered > 2_500, "most generated sign-ups get offers: {offered}");

    let elsewhere =
        br#"{"user_id": "e", "region": "asia-pacific", "location": {"country": "DE", "lat": 52.5, "lon": 13.4}}"#;
    match &wasm.enrich(&[elsewhere.as_slice()]).outcomes[0] {
        Outcome::DeadLetter { reason: Reason::RuleRejected, line } => {
            let line = String::from_utf8_lossy(line);
            assert!(line.contains("country-not-served: country DE is not served by this region"), "{line}");
        }
        Outcome::DeadLetter { reason, .. } => panic!("declined as {reason:?}"),
        Outcome::Offer { .. } => panic!("asia-pacific's rules offered plans in Germany"),
    }
}
