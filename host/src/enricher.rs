//! One batch of raw records in, exactly one offer record or dead letter per
//! record out, in input order. Shared by `offerd enrich` and the stream
//! processor.

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalog::Catalogs;
use crate::engine::{FailureKind, RegionRules};
use crate::module_store::LoadedRules;
use crate::record::{self, OfferEncoder, Reason, RuleRef};
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

/// Routes, enriches and encodes.
pub struct Enricher {
    catalogs: Arc<Catalogs>,
    loaded: LoadedRules,
    /// Per region, for the module that serves it.
    encoders: HashMap<String, OfferEncoder>,
}

/// One region's share of a batch: the input positions and their sign-ups.
struct RegionBatch<'r, 'a> {
    rules: &'r Arc<RegionRules>,
    positions: Vec<usize>,
    signups: Vec<SignUp<'a>>,
}

/// Where a decoded record goes, or why it goes nowhere.
enum Route<'a> {
    Rules(&'a Arc<RegionRules>),
    Unknown(String),
}

impl Enricher {
    pub fn new(catalogs: Arc<Catalogs>, loaded: LoadedRules) -> Self {
        let encoders = loaded
            .rules
            .iter()
            .map(|(region, rules)| (region.clone(), OfferEncoder::new(rules.catalog(), rules.module().info())))
            .collect();
        Self { catalogs, loaded, encoders }
    }

    pub fn rules(&self) -> &HashMap<String, Arc<RegionRules>> {
        &self.loaded.rules
    }

    /// One outcome per input, in order. Each region's records of the batch go
    /// to its module in one call.
    pub fn enrich(&self, inputs: &[&[u8]]) -> Enriched {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
        let mut by_region: HashMap<&str, RegionBatch<'_, '_>> = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let signup = match SignUp::decode(input) {
                Ok(s) => s,
                Err(e) => {
                    outcomes[i] = Some(dead(Reason::InvalidRecord, &e.to_string(), None, input));
                    continue;
                }
            };
            match self.route(&signup) {
                Route::Rules(rules) => {
                    let share = by_region.entry(&rules.catalog().region).or_insert_with(|| RegionBatch {
                        rules,
                        positions: Vec::new(),
                        signups: Vec::new(),
                    });
                    share.positions.push(i);
                    share.signups.push(signup);
                }
                Route::Unknown(why) => outcomes[i] = Some(dead(Reason::UnknownRegion, &why, None, input)),
            }
        }
        let mut tallies = Vec::with_capacity(by_region.len());
        for RegionBatch { rules, positions, signups } in by_region.into_values() {
            let batch: Vec<&SignUp<'_>> = signups.iter().collect();
            let results = rules.enrich(&batch);
            let info = rules.module().info();
            let encoder = &self.encoders[&rules.catalog().region];
            let mut tally = RegionTally {
                region: rules.catalog().region.clone(),
                module_version: info.version.to_string(),
                offers: 0,
                failures: 0,
            };
            for ((i, signup), result) in positions.into_iter().zip(&signups).zip(results) {
                let ok = result.is_ok();
                tally.offers += u64::from(ok);
                tally.failures += u64::from(!ok);
                outcomes[i] = Some(match result {
                    Ok(offers) => {
                        let mut line = Vec::with_capacity(512);
                        encoder.write(&mut line, signup, &offers);
                        Outcome::Offer { user_id: signup.user_id.to_string(), line }
                    }
                    Err(failure) => {
                        let reason = match failure.kind {
                            FailureKind::Rejected(_) => Reason::RuleRejected,
                            FailureKind::Trap => Reason::ModuleTrap,
                            FailureKind::Timeout => Reason::ModuleTimeout,
                            FailureKind::Memory => Reason::ModuleMemory,
                        };
                        dead(reason, &failure.detail, Some(RuleRef::from(info)), inputs[i])
                    }
                });
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
        match self.loaded.rules.get(region) {
            Some(rules) => Route::Rules(rules),
            None => {
                let why = self.loaded.unserved.get(region).map_or("no module", String::as_str);
                Route::Unknown(format!("region {region} has no usable module: {why}"))
            }
        }
    }
}

fn dead(reason: Reason, detail: &str, rule: Option<RuleRef<'_>>, input: &[u8]) -> Outcome {
    let mut line = Vec::with_capacity(input.len() + 256);
    record::write_dead_letter(&mut line, reason, detail, rule, input);
    Outcome::DeadLetter { reason, line }
}
