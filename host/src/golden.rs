//! Golden cases: a sign-up in, the expected ranked plans (or rejection) out,
//! run on the production engine and limits. A product team's CI runs them
//! with `offerd test`; publication gates will run them too.
//!
//! A case file holds one case or a JSON array of cases:
//! `{"name": "...", "signup": {...}, "expect": {"offers": ["plan-id", {"plan_id": "...", "promo": "promo-id"}]}}`
//! or `"expect": {"rejected": "country-not-served" | "no-coverage" | "unusable"}`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::engine::{FailureKind, Offer, RegionRules};
use crate::signup::SignUp;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// In the sign-up wire format.
    pub signup: serde_json::Value,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Expect {
    /// Plan ids in rank order, each optionally with the promo it must carry.
    Offers(Vec<ExpectedOffer>),
    /// The rule-error case the rules must return.
    Rejected(String),
}

#[derive(Debug, Deserialize)]
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
        .map(|(file, case)| Verdict { file: file.clone(), name: case.name.clone(), failure: check(rules, case).err() })
        .collect()
}

fn check(rules: &RegionRules, case: &Case) -> Result<(), String> {
    let bytes = serde_json::to_vec(&case.signup).expect("a JSON value always serialises");
    let signup = SignUp::decode(&bytes).map_err(|e| format!("the case's sign-up is invalid: {e}"))?;
    let result = rules.enrich(&[&signup]).pop().expect("one result per sign-up");
    match (&case.expect, result) {
        (Expect::Offers(expected), Ok(offers)) => compare_offers(rules, expected, &offers),
        (Expect::Rejected(expected), Err(f)) if f.kind == FailureKind::Rejected(static_case(expected)) => Ok(()),
        (Expect::Offers(_), Err(f)) => Err(format!("expected offers, got {:?}: {}", f.kind, f.detail)),
        (Expect::Rejected(expected), Err(f)) => {
            Err(format!("expected rejection {expected:?}, got {:?}: {}", f.kind, f.detail))
        }
        (Expect::Rejected(expected), Ok(offers)) => {
            Err(format!("expected rejection {expected:?}, got offers [{}]", plan_ids(rules, &offers).join(", ")))
        }
    }
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
