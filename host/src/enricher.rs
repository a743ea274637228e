//! One batch of raw records in, exactly one offer record or dead letter per
//! record out, in input order. Shared by `offerd enrich` and the stream
//! processor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::catalog::Catalogs;
use crate::engine::{BatchBudget, FailureKind, RegionRules};
use crate::module_store::LoadedRules;
use crate::record::{self, OfferEncoder, Reason, RecordSource, RuleRef};
use crate::signup::SignUp;

/// What became of one input record: a JSON line (without newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `user_id` is the output's partition key on a stream.
    Offer {
        user_id: String,
        line: Vec<u8>,
    },
    DeadLetter {
        reason: Reason,
        line: Vec<u8>,
    },
}

/// One batch's outcomes, and what each region's module made of its share.
#[derive(Debug)]
pub struct Enriched {
    /// One per input, in input order.
    pub outcomes: Vec<Outcome>,
    pub by_region: Vec<RegionTally>,
}

/// Counts of one region's share of a batch, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTally {
    pub region: String,
    pub module_version: String,
    pub offers: u64,
    /// Records the module trapped, timed out or ran out of memory on, or rejected.
    pub failures: u64,
}

/// The rules serving a region, with what is derived from them.
pub struct Active {
    pub rules: Arc<RegionRules>,
    /// Pre-encodes the rule reference and catalog names of every output.
    encoder: OfferEncoder,
    pub since: SystemTime,
}

impl Active {
    pub fn new(rules: Arc<RegionRules>) -> Self {
        let encoder = OfferEncoder::new(rules.catalog(), rules.module().info());
        Self { rules, encoder, since: SystemTime::now() }
    }
}

/// What a region is served by.
pub enum Serving {
    Active(Arc<Active>),
    /// No module could be loaded: the region's records are dead-lettered with this reason.
    Unserved(String),
}

/// Routes, enriches and encodes. Each region's rules can be replaced while
/// batches run: a batch takes every region's rules once, at its start, so
/// one batch runs on one version per region and the next one on the new.
pub struct Enricher {
    catalogs: Arc<Catalogs>,
    /// Every region of `regions.toml`, fixed at start-up.
    regions: HashMap<String, ArcSwap<Serving>>,
}

/// One region's share of a batch: the input positions and their sign-ups.
struct RegionBatch<'a> {
    active: Arc<Active>,
    positions: Vec<usize>,
    signups: Vec<SignUp<'a>>,
}

/// Where a decoded record goes, or why it goes nowhere.
enum Route<'c> {
    Region(&'c str),
    Unknown(String),
}

impl Enricher {
    pub fn new(catalogs: Arc<Catalogs>, loaded: LoadedRules) -> Self {
        let LoadedRules { mut rules, mut unserved } = loaded;
        let regions = catalogs
            .regions()
            .map(|c| {
                let serving = match rules.remove(&c.region) {
                    Some(r) => Serving::Active(Arc::new(Active::new(r))),
                    None => Serving::Unserved(unserved.remove(&c.region).unwrap_or_else(|| "no module".into())),
                };
                (c.region.clone(), ArcSwap::from_pointee(serving))
            })
            .collect();
        Self { catalogs, regions }
    }

    /// What serves `region` now; `None` for a region `regions.toml` lacks.
    pub fn serving(&self, region: &str) -> Option<Arc<Serving>> {
        self.regions.get(region).map(|s| s.load_full())
    }

    /// The active rules of `region`, if it is served.
    pub fn active(&self, region: &str) -> Option<Arc<Active>> {
        match self.serving(region).as_deref() {
            Some(Serving::Active(a)) => Some(a.clone()),
            _ => None,
        }
    }

    /// Region names, sorted.
    pub fn region_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.regions.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Shrinks every region's pool of idle instances to what the last period
    /// needed (see [`RegionRules::trim_idle`]).
    pub fn trim_idle(&self) {
        for serving in self.regions.values() {
            if let Serving::Active(active) = &**serving.load() {
                active.rules.trim_idle();
            }
        }
    }

    /// Makes `active` serve `region` from the next batch on, returning what
    /// served it. Batches already running finish on what they started with.
    ///
    /// # Panics
    /// `region` is not in `regions.toml`; callers check with [`Self::serving`].
    pub fn swap(&self, region: &str, active: Arc<Active>) -> Arc<Serving> {
        self.regions[region].swap(Arc::new(Serving::Active(active)))
    }

    /// One outcome per input, in order. Each region's records of the batch go
    /// to its module in one call.
    pub fn enrich(&self, inputs: &[&[u8]]) -> Enriched {
        self.enrich_from(inputs, &[], &BatchBudget::start())
    }

    /// [`Self::enrich`] for stream records: every output names its source
    /// (`sources[i]` for `inputs[i]`; outputs of inputs past its end name
    /// none), and the time failing modules take counts against `budget`,
    /// which the batch's other chunks share.
    pub fn enrich_from(&self, inputs: &[&[u8]], sources: &[RecordSource<'_>], budget: &BatchBudget) -> Enriched {
        let source = |i: usize| sources.get(i);
        let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
        let mut by_region: HashMap<&str, RegionBatch<'_>> = HashMap::new();
        // Each region's rules as of the batch's start, taken on first use.
        let mut serving: HashMap<&str, Arc<Serving>> = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let signup = match SignUp::decode(input) {
                Ok(s) => s,
                Err(e) => {
                    outcomes[i] = Some(dead(Reason::InvalidRecord, &e.to_string(), None, None, input, source(i)));
                    continue;
                }
            };
            let region = match self.route(&signup) {
                Route::Region(region) => region,
                Route::Unknown(why) => {
                    outcomes[i] =
                        Some(dead(Reason::UnknownRegion, &why, None, Some(&signup.user_id), input, source(i)));
                    continue;
                }
            };
            let now = serving.entry(region).or_insert_with(|| self.regions[region].load_full());
            match &**now {
                Serving::Active(active) => {
                    let share = by_region.entry(region).or_insert_with(|| RegionBatch {
                        active: active.clone(),
                        positions: Vec::new(),
                        signups: Vec::new(),
                    });
                    share.positions.push(i);
                    share.signups.push(signup);
                }
                Serving::Unserved(why) => {
                    let why = format!("region {region} has no usable module: {why}");
                    outcomes[i] =
                        Some(dead(Reason::UnknownRegion, &why, None, Some(&signup.user_id), input, source(i)));
                }
            }
        }
        let mut tallies = Vec::with_capacity(by_region.len());
        for RegionBatch { active, positions, signups } in by_region.into_values() {
            let rules = &active.rules;
            let batch: Vec<&SignUp<'_>> = signups.iter().collect();
            let results = rules.enrich_within(&batch, budget);
            let info = rules.module().info();
            let encoder = &active.encoder;
            let mut tally = RegionTally {
                region: rules.catalog().region.clone(),
                module_version: info.version.to_string(),
                offers: 0,
                failures: 0,
            };
            // A module failing on many records logs once per batch: the first
            // record's user and where the guest failed, and how many more.
            let (mut module_failures, mut first_failure) = (0usize, None);
            for ((i, signup), result) in positions.into_iter().zip(&signups).zip(results) {
                let ok = result.is_ok();
                tally.offers += u64::from(ok);
                tally.failures += u64::from(!ok);
                outcomes[i] = Some(match result {
                    Ok(offers) => {
                        let mut line = Vec::with_capacity(512);
                        encoder.write(&mut line, signup, &offers, source(i));
                        Outcome::Offer { user_id: signup.user_id.to_string(), line }
                    }
                    Err(failure) => {
                        let reason = match failure.kind {
                            FailureKind::Rejected(_) => Reason::RuleRejected,
                            FailureKind::Trap => Reason::ModuleTrap,
                            FailureKind::Timeout => Reason::ModuleTimeout,
                            FailureKind::Memory => Reason::ModuleMemory,
                            FailureKind::BadResult => Reason::ModuleBadResult,
                        };
                        if reason != Reason::RuleRejected {
                            module_failures += 1;
                            if module_failures == 1 {
                                first_failure = Some((reason, signup.user_id.to_string(), failure.detail.clone()));
                            }
                        }
                        let user_id = Some(signup.user_id.as_ref());
                        dead(reason, &failure.detail, Some(RuleRef::from(info)), user_id, inputs[i], source(i))
                    }
                });
            }
            if let Some((reason, user_id, detail)) = first_failure {
                tracing::warn!(
                    region = %tally.region,
                    module = %info.name,
                    version = %info.version,
                    reason = reason.as_str(),
                    // Debug formatting: a record's text cannot forge log lines.
                    user_id = ?user_id,
                    detail = ?record::truncated(detail.lines().next().unwrap_or_default(), 512),
                    more_in_batch = module_failures - 1,
                    "module failed on a record; dead-lettered"
                );
            }
            tallies.push(tally);
        }
        let outcomes = outcomes.into_iter().map(|o| o.expect("every input gets an outcome above")).collect();
        Enriched { outcomes, by_region: tallies }
    }

    fn route(&self, signup: &SignUp<'_>) -> Route<'_> {
        let region = match &signup.region {
            Some(region) if self.catalogs.region(region).is_none() => {
                return Route::Unknown(format!(
                    "region {region:?} (given by the record) is not defined in regions.toml"
                ));
            }
            Some(region) => region.as_ref(),
            None => match self.catalogs.route(&signup.country) {
                Some(region) => region,
                None => return Route::Unknown(format!("country {} is not routed to any region", signup.country)),
            },
        };
        // The map's own key: it outlives the record.
        match self.regions.get_key_value(region) {
            Some((name, _)) => Route::Region(name),
            None => Route::Unknown(format!("region {region} is not defined in regions.toml")),
        }
    }
}

fn dead(
    reason: Reason,
    detail: &str,
    rule: Option<RuleRef<'_>>,
    user_id: Option<&str>,
    input: &[u8],
    source: Option<&RecordSource<'_>>,
) -> Outcome {
    let mut line = Vec::with_capacity(input.len().min(record::MAX_DEAD_LETTER_INPUT) + 256);
    record::write_dead_letter(&mut line, reason, detail, rule, user_id, input, source);
    Outcome::DeadLetter { reason, line }
}
