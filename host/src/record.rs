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

#[derive(Serialize)]
struct Money<'a> {
    amount_minor: u64,
    currency: &'a str,
}

#[derive(Serialize)]
struct PromoOut<'a> {
    id: &'a str,
    name: &'a str,
    percent_off: u8,
    months: u8,
    monthly_price: Money<'a>,
}

#[derive(Serialize)]
struct OfferOut<'a> {
    plan_id: &'a str,
    name: &'a str,
    technology: &'static str,
    down_mbps: u32,
    up_mbps: u32,
    monthly_price: Money<'a>,
    promo: Option<PromoOut<'a>>,
}

#[derive(Serialize)]
struct OfferRecord<'a> {
    user_id: &'a str,
    region: &'a str,
    country: &'a str,
    offers: Vec<OfferOut<'a>>,
    rule: RuleRef<'a>,
}

/// Appends one offer record as a JSON line (without the newline).
pub fn write_offers(out: &mut Vec<u8>, signup: &SignUp<'_>, catalog: &RegionCatalog, offers: &[Offer], rule: RuleRef<'_>) {
    let currency = catalog.currency.as_str();
    let offers = offers
        .iter()
        .map(|o| {
            // Indices were checked against this catalog by the engine.
            let plan = &catalog.plans[o.plan];
            OfferOut {
                plan_id: &plan.id,
                name: &plan.name,
                technology: plan.technology.as_str(),
                down_mbps: plan.down_mbps,
                up_mbps: plan.up_mbps,
                monthly_price: Money { amount_minor: o.monthly_price_minor, currency },
                promo: o.promo.map(|(i, price)| {
                    let promo = &catalog.promos[i];
                    PromoOut {
                        id: &promo.id,
                        name: &promo.name,
                        percent_off: promo.percent_off,
                        months: promo.months,
                        monthly_price: Money { amount_minor: price, currency },
                    }
                }),
            }
        })
        .collect();
    let record = OfferRecord { user_id: &signup.user_id, region: &catalog.region, country: &signup.country, offers, rule };
    serde_json::to_writer(out, &record).expect("serialising plain structs to a Vec cannot fail");
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
