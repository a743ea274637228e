//! The output wire formats: offer records and dead letters.

use base64::Engine as _;
use serde::Serialize;

use crate::catalog::RegionCatalog;
use crate::engine::{ModuleInfo, Offer};
use crate::signup::SignUp;

/// Why a record went to the dead letters. Stable: consumers branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    InvalidRecord,
    UnknownRegion,
    RuleRejected,
    ModuleTrap,
    ModuleTimeout,
    ModuleMemory,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRecord => "invalid-record",
            Reason::UnknownRegion => "unknown-region",
            Reason::RuleRejected => "rule-rejected",
            Reason::ModuleTrap => "module-trap",
            Reason::ModuleTimeout => "module-timeout",
            Reason::ModuleMemory => "module-memory",
        }
    }
}

/// Which module made (or failed) a record.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRef<'a> {
    pub name: &'a str,
    pub version: String,
    pub digest: &'a str,
}

impl<'a> From<&'a ModuleInfo> for RuleRef<'a> {
    fn from(info: &'a ModuleInfo) -> Self {
        Self { name: &info.name, version: info.version.to_string(), digest: &info.digest }
    }
}

/// Writes offer records for one region and module. Everything that does not
/// vary per record (plan and promo fields, the rule reference) is encoded once
/// here; a record costs only its user id, country and prices. Field order and
/// content are those of the documented offer record.
pub struct OfferEncoder {
    /// `{"plan_id":…,"name":…,"technology":…,"down_mbps":…,"up_mbps":…,` per plan.
    plans: Vec<Box<str>>,
    /// `{"id":…,"name":…,"percent_off":…,"months":…,` per promo.
    promos: Vec<Box<str>>,
    /// `,"region":"…","country":` — the region is fixed, the country follows.
    region: Box<str>,
    /// `"currency":"…"}` closing every money object.
    currency: Box<str>,
    /// `,"rule":{…}}` closing the record.
    rule: Box<str>,
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("serialising strings and numbers cannot fail")
}

impl OfferEncoder {
    pub fn new(catalog: &RegionCatalog, info: &ModuleInfo) -> Self {
        let plans = catalog
            .plans
            .iter()
            .map(|p| {
                format!(
                    r#"{{"plan_id":{},"name":{},"technology":"{}","down_mbps":{},"up_mbps":{},"#,
                    json(&p.id),
                    json(&p.name),
                    p.technology.as_str(),
                    p.down_mbps,
                    p.up_mbps
                )
                .into()
            })
            .collect();
        let promos = catalog
            .promos
            .iter()
            .map(|p| {
                format!(
                    r#"{{"id":{},"name":{},"percent_off":{},"months":{},"#,
                    json(&p.id),
                    json(&p.name),
                    p.percent_off,
                    p.months
                )
                .into()
            })
            .collect();
        Self {
            plans,
            promos,
            region: format!(r#","region":{},"country":"#, json(&catalog.region)).into(),
            currency: format!(r#""currency":{}}}"#, json(&catalog.currency)).into(),
            rule: format!(r#","rule":{}}}"#, json(&RuleRef::from(info))).into(),
        }
    }

    /// Appends one offer record as a JSON line (without the newline).
    /// Indices in `offers` were checked against the catalog by the engine.
    pub fn write(&self, out: &mut Vec<u8>, signup: &SignUp<'_>, offers: &[Offer]) {
        out.extend_from_slice(br#"{"user_id":"#);
        serde_json::to_writer(&mut *out, signup.user_id.as_ref()).expect("writing to a Vec cannot fail");
        out.extend_from_slice(self.region.as_bytes());
        serde_json::to_writer(&mut *out, signup.country.as_ref()).expect("writing to a Vec cannot fail");
        out.extend_from_slice(br#","offers":["#);
        for (i, offer) in offers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(self.plans[offer.plan].as_bytes());
            self.money(out, br#""monthly_price":"#, offer.monthly_price_minor);
            match offer.promo {
                None => out.extend_from_slice(br#","promo":null}"#),
                Some((promo, price)) => {
                    out.extend_from_slice(br#","promo":"#);
                    out.extend_from_slice(self.promos[promo].as_bytes());
                    self.money(out, br#""monthly_price":"#, price);
                    out.extend_from_slice(b"}}");
                }
            }
        }
        out.push(b']');
        out.extend_from_slice(self.rule.as_bytes());
    }

    fn money(&self, out: &mut Vec<u8>, key: &[u8], amount_minor: u64) {
        out.extend_from_slice(key);
        out.extend_from_slice(br#"{"amount_minor":"#);
        out.extend_from_slice(itoa::Buffer::new().format(amount_minor).as_bytes());
        out.push(b',');
        out.extend_from_slice(self.currency.as_bytes());
    }
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    reason: Reason,
    detail: &'a str,
    rule: Option<RuleRef<'a>>,
    input: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_encoding: Option<&'static str>,
}

/// Appends one dead letter as a JSON line. The input is kept verbatim, or as
/// base64 (with `"input_encoding": "base64"`) when it is not UTF-8.
pub fn write_dead_letter(out: &mut Vec<u8>, reason: Reason, detail: &str, rule: Option<RuleRef<'_>>, input: &[u8]) {
    let encoded;
    let (input, input_encoding) = match std::str::from_utf8(input) {
        Ok(text) => (text, None),
        Err(_) => {
            encoded = base64::engine::general_purpose::STANDARD.encode(input);
            (encoded.as_str(), Some("base64"))
        }
    };
    let letter = DeadLetter { reason, detail, rule, input, input_encoding };
    serde_json::to_writer(out, &letter).expect("serialising plain structs to a Vec cannot fail");
}

#[cfg(test)]
mod tests;
