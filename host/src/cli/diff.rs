//! `offerd diff`: what changes for customers if module B replaces module A.
//! Both run on the same sign-ups under the production engine; per record
//! and in total: offers added, removed, re-priced and re-ranked, rejections
//! and failures that appear or disappear. What a team reads before it
//! publishes a price change.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{EngineArgs, LineBatches};
use crate::catalog::Catalogs;
use crate::engine::{Engine, RegionRules, RuleModule};
use crate::enricher::{Enricher, Outcome};
use crate::module_store::{self, LoadedRules};

#[derive(Args)]
pub(super) struct DiffArgs {
    /// The module serving now.
    #[arg(long, value_name = "A.wasm")]
    from: PathBuf,
    /// The module to compare it with.
    #[arg(long, value_name = "B.wasm")]
    to: PathBuf,
    /// Catalog directory: `regions.toml` and `<region>.toml`.
    #[arg(long, value_name = "DIR")]
    catalogs: PathBuf,
    /// Sign-ups, one JSON object per line.
    #[arg(long, value_name = "SIGNUPS.jsonl")]
    input: PathBuf,
    /// One JSON object per differing record, then the totals.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// How one record's outcome changed.
#[derive(Debug, Default, PartialEq, Eq)]
struct RecordDiff {
    added: Vec<String>,
    removed: Vec<String>,
    /// (plan, old price, new price), prices as `<minor units> <currency>`
    /// with the promo price after a slash when there is one.
    repriced: Vec<(String, String, String)>,
    /// (plan, old rank, new rank), ranks from 1.
    reranked: Vec<(String, usize, usize)>,
    /// (old outcome, new outcome) when either is a dead letter and they
    /// differ: `offers` or the dead letter's reason.
    outcome: Option<(String, String)>,
}

impl RecordDiff {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The `[...]` of an offer record's `"offers"`, as the encoder writes it:
/// between `"offers":` and `,"rule":` (neither can occur unescaped inside
/// a string before it); `None` if the record is laid out otherwise.
fn offers_json(line: &[u8]) -> Option<&[u8]> {
    let find = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    let start = find(line, br#""offers":"#)? + br#""offers":"#.len();
    let len = find(&line[start..], br#","rule":"#)?;
    Some(&line[start..start + len])
}

/// An offer record's offers, from the `"offers"` slice when it is found,
/// else from the whole record.
fn parse_offers(line: &[u8]) -> Vec<OfferView<'_>> {
    #[derive(Deserialize)]
    struct Record<'a> {
        #[serde(borrow)]
        offers: Vec<OfferView<'a>>,
    }
    match offers_json(line) {
        Some(json) => serde_json::from_slice(json).unwrap_or_default(),
        None => serde_json::from_slice::<Record<'_>>(line).map(|r| r.offers).unwrap_or_default(),
    }
}

/// The parts of an offer record's offer that a diff compares; the rest of
/// each offer is skipped while parsing.
#[derive(Deserialize, PartialEq)]
struct OfferView<'a> {
    #[serde(borrow)]
    plan_id: Cow<'a, str>,
    monthly_price: Money<'a>,
    #[serde(borrow)]
    promo: Option<PromoView<'a>>,
}

#[derive(Deserialize, PartialEq)]
struct Money<'a> {
    amount_minor: u64,
    #[serde(borrow)]
    currency: Cow<'a, str>,
}

#[derive(Deserialize, PartialEq)]
struct PromoView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    monthly_price: Money<'a>,
}

impl OfferView<'_> {
    /// `<minor units> <currency>`, then ` / <promo price> promo "<id>"` when there is one.
    fn price(&self) -> String {
        let money = |m: &Money<'_>| format!("{} {}", m.amount_minor, m.currency);
        match &self.promo {
            None => money(&self.monthly_price),
            Some(p) => format!("{} / {} promo {:?}", money(&self.monthly_price), money(&p.monthly_price), p.id),
        }
    }

    fn same_price(&self, other: &Self) -> bool {
        self.monthly_price == other.monthly_price && self.promo == other.promo
    }
}

/// `offers`, or a dead letter's reason.
fn kind(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Offer { .. } => "offers".to_owned(),
        Outcome::DeadLetter { reason, .. } => reason.as_str().to_owned(),
    }
}

fn compare(a: &Outcome, b: &Outcome) -> RecordDiff {
    let (Outcome::Offer { line: la, .. }, Outcome::Offer { line: lb, .. }) = (a, b) else {
        let (ka, kb) = (kind(a), kind(b));
        return RecordDiff { outcome: (ka != kb).then_some((ka, kb)), ..RecordDiff::default() };
    };
    // Most records come out the same: compare the bytes before parsing.
    if let (Some(ja), Some(jb)) = (offers_json(la), offers_json(lb))
        && ja == jb
    {
        return RecordDiff::default();
    }
    let (old, new) = (parse_offers(la), parse_offers(lb));
    let mut diff = RecordDiff::default();
    for (rank, offer) in new.iter().enumerate() {
        match old.iter().position(|o| o.plan_id == offer.plan_id) {
            None => diff.added.push(offer.plan_id.to_string()),
            Some(old_rank) => {
                if !old[old_rank].same_price(offer) {
                    diff.repriced.push((offer.plan_id.to_string(), old[old_rank].price(), offer.price()));
                }
                if old_rank != rank {
                    diff.reranked.push((offer.plan_id.to_string(), old_rank + 1, rank + 1));
                }
            }
        }
    }
    diff.removed =
        old.iter().filter(|o| !new.iter().any(|n| n.plan_id == o.plan_id)).map(|o| o.plan_id.to_string()).collect();
    diff
}

/// Every region served by the module at `path`.
fn load(engine: &Engine, path: &Path, catalogs: &Catalogs) -> anyhow::Result<Arc<Enricher>> {
    let bytes = module_store::read_module(path, engine.limits().max_module_bytes).map_err(anyhow::Error::msg)?;
    let module = Arc::new(RuleModule::load(engine, &bytes).with_context(|| format!("loading {}", path.display()))?);
    let mut loaded = LoadedRules { rules: Default::default(), unserved: Default::default() };
    for catalog in catalogs.regions() {
        match RegionRules::new(module.clone(), Arc::new(catalog.clone())) {
            Ok(rules) => {
                loaded.rules.insert(catalog.region.clone(), Arc::new(rules));
            }
            Err(e) => {
                loaded.unserved.insert(catalog.region.clone(), format!("{}: {e}", path.display()));
            }
        }
    }
    Ok(Arc::new(Enricher::new(Arc::new(catalogs.clone()), loaded)))
}

pub(super) fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let catalogs = Catalogs::load(&args.catalogs)?;
    let engine = args.engine.engine()?;
    let (from, to) = (load(&engine, &args.from, &catalogs)?, load(&engine, &args.to, &catalogs)?);
    let input = File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let mut lines = LineBatches { input: Box::new(BufReader::new(input)), batch_size: 500 };
    let mut out = std::io::stdout().lock();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    let mut line_no = 0usize;
    while let Some(batch) = lines.next_batch().context("reading sign-ups")? {
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        // The two sides on two threads: each is a whole production enrichment.
        let (a, b) = std::thread::scope(|scope| {
            let b = scope.spawn(|| to.enrich(&refs).outcomes);
            let a = from.enrich(&refs).outcomes;
            (a, b.join().expect("the enrichment thread panicked"))
        });
        for ((a, b), input) in a.iter().zip(&b).zip(&batch) {
            line_no += 1;
            *totals.entry("records").or_default() += 1;
            for (outcome, side) in [(a, "from"), (b, "to")] {
                if let Outcome::DeadLetter { reason, .. } = outcome
                    && reason.as_str().starts_with("module-")
                {
                    *totals.entry(if side == "from" { "failures_from" } else { "failures_to" }).or_default() += 1;
                }
            }
            let diff = compare(a, b);
            if diff.is_empty() {
                continue;
            }
            *totals.entry("records_changed").or_default() += 1;
            *totals.entry("offers_added").or_default() += diff.added.len() as u64;
            *totals.entry("offers_removed").or_default() += diff.removed.len() as u64;
            *totals.entry("offers_repriced").or_default() += diff.repriced.len() as u64;
            *totals.entry("offers_reranked").or_default() += diff.reranked.len() as u64;
            if let Some((old, new)) = &diff.outcome {
                let key = match (old.as_str(), new.as_str()) {
                    ("offers", _) => "dead_letters_appear",
                    (_, "offers") => "dead_letters_disappear",
                    _ => "dead_letter_reasons_change",
                };
                *totals.entry(key).or_default() += 1;
            }
            let user =
                serde_json::from_slice::<Value>(input).ok().and_then(|v| v["user_id"].as_str().map(str::to_owned));
            if args.json {
                let record = json!({
                    "line": line_no, "user_id": user, "added": diff.added, "removed": diff.removed,
                    "repriced": diff.repriced.iter().map(|(p, o, n)| json!({"plan_id": p, "from": o, "to": n})).collect::<Vec<_>>(),
                    "reranked": diff.reranked.iter().map(|(p, o, n)| json!({"plan_id": p, "from": o, "to": n})).collect::<Vec<_>>(),
                    "outcome": diff.outcome.as_ref().map(|(o, n)| json!({"from": o, "to": n})),
                });
                writeln!(out, "{record}")?;
            } else {
                let mut parts: Vec<String> = Vec::new();
                parts.extend(diff.added.iter().map(|p| format!("+{p}")));
                parts.extend(diff.removed.iter().map(|p| format!("-{p}")));
                parts.extend(diff.repriced.iter().map(|(p, o, n)| format!("{p} {o} → {n}")));
                parts.extend(diff.reranked.iter().map(|(p, o, n)| format!("{p} #{o} → #{n}")));
                if let Some((o, n)) = &diff.outcome {
                    parts.push(format!("{o} → {n}"));
                }
                writeln!(out, "line {line_no} ({}): {}", user.as_deref().unwrap_or("?"), parts.join(", "))?;
            }
        }
    }
    if args.json {
        writeln!(out, "{}", json!({ "totals": totals }))?;
    } else {
        let shown: Vec<String> = totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "totals: {}", shown.join(", "))?;
    }
    Ok(if totals.get("records_changed").copied().unwrap_or(0) == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Reason;

    fn offer(plans: &[(&str, u64, bool)]) -> Outcome {
        let offers: Vec<Value> = plans
            .iter()
            .map(|(id, price, promo)| {
                json!({"plan_id": id, "monthly_price": {"amount_minor": price, "currency": "EUR"},
                       "promo": if *promo { json!({"id": "p", "monthly_price": {"amount_minor": price / 2, "currency": "EUR"}}) } else { Value::Null }})
            })
            .collect();
        Outcome::Offer {
            user_id: "u".into(),
            line: serde_json::to_vec(&json!({"offers": offers, "rule": {}})).unwrap(),
        }
    }

    #[test]
    fn offers_added_removed_repriced_and_reranked_are_told_apart() {
        let a = offer(&[("fiber", 6999, false), ("dsl", 2999, false), ("cable", 3999, false)]);
        let b = offer(&[("dsl", 2999, false), ("fiber", 7499, false), ("sat", 4999, false)]);
        let diff = compare(&a, &b);
        assert_eq!(diff.added, ["sat"]);
        assert_eq!(diff.removed, ["cable"]);
        assert_eq!(diff.repriced, [("fiber".to_owned(), "6999 EUR".to_owned(), "7499 EUR".to_owned())]);
        let mut reranked = diff.reranked.clone();
        reranked.sort();
        assert_eq!(reranked, [("dsl".to_owned(), 2, 1), ("fiber".to_owned(), 1, 2)]);
        assert!(compare(&a, &a).is_empty());
        // A promo appearing is a price change.
        let promo = compare(&offer(&[("fiber", 6999, false)]), &offer(&[("fiber", 6999, true)]));
        assert_eq!(promo.repriced.len(), 1, "{promo:?}");
    }

    #[test]
    fn a_record_laid_out_otherwise_is_still_compared() {
        let line = |plan: &str| {
            serde_json::to_vec(&json!({"offers": [{"plan_id": plan,
            "monthly_price": {"amount_minor": 1, "currency": "EUR"}, "promo": null}]}))
            .unwrap()
        };
        let (a, b) = (line("fiber"), line("dsl"));
        assert_eq!(offers_json(&a), None);
        let diff =
            compare(&Outcome::Offer { user_id: "u".into(), line: a }, &Outcome::Offer { user_id: "u".into(), line: b });
        assert_eq!((diff.added, diff.removed), (vec!["dsl".to_owned()], vec!["fiber".to_owned()]));
    }

    #[test]
    fn rejections_that_appear_or_change_are_outcome_changes() {
        let rejected = Outcome::DeadLetter { reason: Reason::RuleRejected, line: Vec::new() };
        let trapped = Outcome::DeadLetter { reason: Reason::ModuleTrap, line: Vec::new() };
        let served = offer(&[("fiber", 6999, false)]);
        assert_eq!(compare(&served, &rejected).outcome, Some(("offers".into(), "rule-rejected".into())));
        assert_eq!(compare(&rejected, &trapped).outcome, Some(("rule-rejected".into(), "module-trap".into())));
        assert!(compare(&rejected, &rejected).is_empty());
    }
}
