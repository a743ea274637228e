//! Golden cases: a sign-up in, the expected ranked plans (or rejection) out,
//! run on the production engine and limits. A product team's CI runs them
//! with `offerd test`; publication gates will run them too.
//!
//! A case file holds one case or a JSON array of cases:
//! `{"name": "...", "signup": {...}, "expect": {"offers": ["plan-id", {"plan_id": "...", "promo": "promo-id"}]}}`
//! or `"expect": {"rejected": "country-not-served" | "no-coverage" | "unusable"}`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::catalog::RegionCatalog;
use crate::engine::{FailureKind, Offer, RegionRules};
use crate::signup::SignUp;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// In the sign-up wire format.
    pub signup: serde_json::Value,
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Expect {
    /// Plan ids in rank order, each optionally with the promo it must carry.
    Offers(Vec<ExpectedOffer>),
    /// The rule-error case the rules must return.
    Rejected(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ExpectedOffer {
    Plan(String),
    #[serde(rename_all = "snake_case")]
    WithPromo {
        plan_id: String,
        promo: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CaseFile {
    Many(Vec<Case>),
    One(Case),
}

/// One case's verdict.
#[derive(Debug)]
pub struct Verdict {
    pub file: PathBuf,
    pub name: String,
    /// `None`: passed; otherwise a readable explanation.
    pub failure: Option<String>,
    /// How long the case took: decoding, the module call, the comparison.
    pub elapsed: Duration,
    /// What the module answered, as an expectation (`None` when it failed:
    /// a trap, a timeout, an invalid sign-up).
    pub answer: Option<Expect>,
}

/// Reads every case of every file.
///
/// # Errors
/// A file that cannot be read or is not a case file, naming it.
pub fn load(files: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Case)>> {
    let mut cases = Vec::new();
    for file in files {
        let text = crate::config_file::read_limited(file, crate::config_file::MAX_FILE_BYTES)
            .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
            .with_context(|| format!("reading case file {}", file.display()))?;
        let parsed: CaseFile =
            serde_json::from_str(&text).with_context(|| format!("{} is not a golden-case file", file.display()))?;
        match parsed {
            CaseFile::One(case) => cases.push((file.clone(), case)),
            CaseFile::Many(many) => cases.extend(many.into_iter().map(|c| (file.clone(), c))),
        }
    }
    Ok(cases)
}

/// Runs each case through `rules` alone, as production would run a batch of one.
pub fn run(rules: &RegionRules, cases: &[(PathBuf, Case)]) -> Vec<Verdict> {
    cases
        .iter()
        .map(|(file, case)| {
            let start = Instant::now();
            let (failure, answer) = check(rules, case);
            Verdict {
                file: file.clone(),
                name: case.name.clone(),
                failure: failure.err(),
                elapsed: start.elapsed(),
                answer,
            }
        })
        .collect()
}

/// The case's verdict, and the module's answer as an expectation.
fn check(rules: &RegionRules, case: &Case) -> (Result<(), String>, Option<Expect>) {
    let bytes = serde_json::to_vec(&case.signup).expect("a JSON value always serialises");
    let signup = match SignUp::decode(&bytes) {
        Ok(signup) => signup,
        Err(e) => return (Err(format!("the case's sign-up is invalid: {e}")), None),
    };
    let result = rules.enrich(&[&signup]).pop().expect("one result per sign-up");
    let answer = match &result {
        Ok(offers) => Some(Expect::Offers(as_expected(rules, offers))),
        Err(f) => match f.kind {
            FailureKind::Rejected(case) => Some(Expect::Rejected(case.to_owned())),
            _ => None,
        },
    };
    let verdict = match (&case.expect, result) {
        (Expect::Offers(expected), Ok(offers)) => compare_offers(rules, expected, &offers),
        (Expect::Rejected(expected), Err(f)) if f.kind == FailureKind::Rejected(static_case(expected)) => Ok(()),
        (Expect::Offers(_), Err(f)) => Err(format!("expected offers, got {:?}: {}", f.kind, f.detail)),
        (Expect::Rejected(expected), Err(f)) => {
            Err(format!("expected rejection {expected:?}, got {:?}: {}", f.kind, f.detail))
        }
        (Expect::Rejected(expected), Ok(offers)) => {
            Err(format!("expected rejection {expected:?}, got offers [{}]", plan_ids(rules, &offers).join(", ")))
        }
    };
    (verdict, answer)
}

/// Offers as a case expects them, strictly: each plan with its promo or
/// `null` (a bare plan id would accept any promo).
fn as_expected(rules: &RegionRules, offers: &[Offer]) -> Vec<ExpectedOffer> {
    let catalog = rules.catalog();
    offers
        .iter()
        .map(|o| {
            let plan_id = catalog.plans[o.plan].id.clone();
            match o.promo {
                Some((p, _)) => ExpectedOffer::WithPromo { plan_id, promo: Some(catalog.promos[p].id.clone()) },
                None => ExpectedOffer::WithPromo { plan_id, promo: None },
            }
        })
        .collect()
}

/// The rule-error cases the contract defines; anything else never matches.
fn static_case(name: &str) -> &'static str {
    ["country-not-served", "no-coverage", "unusable"].into_iter().find(|c| *c == name).unwrap_or("<unknown case>")
}

fn plan_ids(rules: &RegionRules, offers: &[Offer]) -> Vec<String> {
    offers.iter().map(|o| rules.catalog().plans[o.plan].id.clone()).collect()
}

/// Side by side, rank by rank, marking every rank that differs.
fn compare_offers(rules: &RegionRules, expected: &[ExpectedOffer], offers: &[Offer]) -> Result<(), String> {
    let catalog = rules.catalog();
    let actual: Vec<String> = offers
        .iter()
        .map(|o| {
            let id = &catalog.plans[o.plan].id;
            match o.promo {
                Some((p, _)) => format!("{id} +{}", catalog.promos[p].id),
                None => id.clone(),
            }
        })
        .collect();
    let wanted: Vec<(String, bool)> = expected
        .iter()
        .map(|e| match e {
            ExpectedOffer::Plan(id) => (id.clone(), false),
            ExpectedOffer::WithPromo { plan_id, promo: Some(p) } => (format!("{plan_id} +{p}"), true),
            ExpectedOffer::WithPromo { plan_id, promo: None } => (plan_id.clone(), true),
        })
        .collect();
    let same = |want: &(String, bool), got: &String| {
        if want.1 { &want.0 == got } else { got.split(" +").next() == Some(want.0.as_str()) }
    };
    if wanted.len() == actual.len() && wanted.iter().zip(&actual).all(|(w, a)| same(w, a)) {
        return Ok(());
    }
    let width = wanted.iter().map(|w| w.0.len()).max().unwrap_or(0).max("expected".len());
    let mut diff = format!("  rank  {:<width$}    actual\n", "expected");
    for rank in 0..wanted.len().max(actual.len()) {
        let want = wanted.get(rank);
        let got = actual.get(rank);
        let mark = match (want, got) {
            (Some(w), Some(g)) if same(w, g) => "  ",
            _ => "≠ ",
        };
        let want = want.map_or("-", |w| w.0.as_str());
        let _ = writeln!(diff, "  {:>4}  {want:<width$}  {mark}{}", rank + 1, got.map_or("-", String::as_str));
    }
    Err(diff.trim_end().to_owned())
}

/// `file: name` for messages.
pub fn label(file: &Path, name: &str) -> String {
    format!("{}: {name}", file.display())
}

/// What of a catalog no case's expected offers reach: a change there is
/// published untested.
#[derive(Debug, Default)]
pub struct Coverage<'a> {
    pub plans: Vec<&'a str>,
    pub promos: Vec<&'a str>,
    /// Metro names, most populous first: no expected plan with coverage is
    /// delivered through them (within its reach, at its population minimum).
    pub metros: Vec<&'a str>,
    pub metros_total: usize,
}

/// The plans, promos and metros of `catalog` that no case's expectation
/// reaches. Cases expecting a rejection reach nothing.
pub fn coverage<'a>(catalog: &'a RegionCatalog, cases: &[(PathBuf, Case)]) -> Coverage<'a> {
    let (mut plans, mut promos, mut metros) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (_, case) in cases {
        let Expect::Offers(expected) = &case.expect else { continue };
        let at = case.signup.get("location").and_then(|l| Some((l.get("lat")?.as_f64()?, l.get("lon")?.as_f64()?)));
        for offer in expected {
            let (plan_id, promo) = match offer {
                ExpectedOffer::Plan(id) => (id, None),
                ExpectedOffer::WithPromo { plan_id, promo } => (plan_id, promo.as_ref()),
            };
            promos.extend(promo.map(String::as_str));
            plans.insert(plan_id.as_str());
            let plan = catalog.plans.iter().find(|p| &p.id == plan_id);
            if let (Some(coverage), Some((lat, lon))) = (plan.and_then(|p| p.coverage), at) {
                for (i, m) in catalog.metros.iter().enumerate() {
                    if m.population >= coverage.min_population && km((lat, lon), (m.lat, m.lon)) <= coverage.max_km {
                        metros.insert(i);
                    }
                }
            }
        }
    }
    let mut unreached_metros: Vec<_> =
        catalog.metros.iter().enumerate().filter(|(i, _)| !metros.contains(i)).map(|(_, m)| m).collect();
    unreached_metros.sort_by_key(|m| std::cmp::Reverse(m.population));
    Coverage {
        plans: catalog.plans.iter().map(|p| p.id.as_str()).filter(|id| !plans.contains(id)).collect(),
        promos: catalog.promos.iter().map(|p| p.id.as_str()).filter(|id| !promos.contains(id)).collect(),
        metros: unreached_metros.into_iter().map(|m| m.name.as_str()).collect(),
        metros_total: catalog.metros.len(),
    }
}

/// Great-circle distance in kilometres (haversine), as rules measure reach.
fn km((lat1, lon1): (f64, f64), (lat2, lon2): (f64, f64)) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let (dp, dl) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}
