//! The output wire formats: offer records and dead letters.

use base64::Engine as _;
use serde::Serialize;

use crate::catalog::RegionCatalog;
use crate::engine::{ModuleInfo, Offer};
use crate::signup::SignUp;

/// Kinesis's limit on a partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Kinesis's limit on one record: data plus partition key.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Whether Kinesis takes `key` as a partition key: 1 to 256 characters.
/// Counted in UTF-16 units, the stricter reading (some Kinesis-compatible
/// servers count those).
pub fn partition_key_fits(key: &str) -> bool {
    !key.is_empty() && key.len() <= 4 * MAX_PARTITION_KEY_CHARS && key.encode_utf16().count() <= MAX_PARTITION_KEY_CHARS
}

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
    /// The module answered outside the contract (see `FailureKind::BadResult`).
    ModuleBadResult,
    /// Kinesis refused the output (offer record or dead letter) made from
    /// the record, for a reason no retry can fix.
    OutputRejected,
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
            Reason::ModuleBadResult => "module-bad-result",
            Reason::OutputRejected => "output-rejected",
        }
    }
}

/// Which module made (or failed) a record.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRef<'a> {
    pub name: &'a str,
    pub version: String,
    pub digest: &'a str,
    /// Key id of the trusted key that signed the module, when the host checks signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<&'a str>,
}

impl<'a> From<&'a ModuleInfo> for RuleRef<'a> {
    fn from(info: &'a ModuleInfo) -> Self {
        Self {
            name: &info.name,
            version: info.version.to_string(),
            digest: &info.digest,
            signed_by: info.signed_by.as_deref(),
        }
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
    /// `,"rule":{…}`; the record's source, if any, and `}` follow.
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
            rule: format!(r#","rule":{}"#, json(&RuleRef::from(info))).into(),
        }
    }

    /// Appends one offer record as a JSON line (without the newline), with
    /// its `source` when it came from a stream. Indices in `offers` were
    /// checked against the catalog by the engine.
    pub fn write(&self, out: &mut Vec<u8>, signup: &SignUp<'_>, offers: &[Offer], source: Option<&RecordSource<'_>>) {
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
        if let Some(source) = source {
            out.extend_from_slice(br#","source":"#);
            serde_json::to_writer(&mut *out, source).expect("writing to a Vec cannot fail");
        }
        out.push(b'}');
    }

    fn money(&self, out: &mut Vec<u8>, key: &[u8], amount_minor: u64) {
        out.extend_from_slice(key);
        out.extend_from_slice(br#"{"amount_minor":"#);
        out.extend_from_slice(itoa::Buffer::new().format(amount_minor).as_bytes());
        out.push(b',');
        out.extend_from_slice(self.currency.as_bytes());
    }
}

/// Most bytes of the input a dead letter carries. Kinesis takes at most
/// 1 MiB per record; escaping (up to ×6 for control bytes) or base64 (×4/3)
/// of this much stays far below it. Larger inputs are cut, and the letter
/// says so and names the source record so the whole one can be fetched.
pub const MAX_DEAD_LETTER_INPUT: usize = 64 * 1024;
/// Most bytes of a failure's detail (a trap's backtrace, a parser's message)
/// kept in dead letters and log lines.
pub const MAX_DETAIL: usize = 4 * 1024;

/// Where a record came from on a stream: `"source"` of every output, so
/// consumers can fetch the input and drop what at-least-once repeats.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RecordSource<'a> {
    pub shard_id: &'a str,
    pub sequence_number: &'a str,
    /// Its place in a KPL aggregate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_sequence_number: Option<usize>,
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    reason: Reason,
    detail: &'a str,
    rule: Option<RuleRef<'a>>,
    /// The sign-up's user, when the record decoded (a partition key's length at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    input: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    input_truncated: bool,
    /// Of the whole input, when it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    input_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a RecordSource<'a>>,
}

/// `text` cut to at most `max` bytes, at a character boundary, with `…`
/// appended when cut.
pub fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let end = text.floor_char_boundary(max.saturating_sub('…'.len_utf8()));
    format!("{}…", &text[..end]).into()
}

/// Appends one dead letter as a JSON line. The input is kept verbatim, or as
/// base64 (with `"input_encoding": "base64"`) when it is not UTF-8; past
/// [`MAX_DEAD_LETTER_INPUT`] bytes only its start is kept, with
/// `"input_truncated": true`, `input_bytes` and `input_sha256` of the whole.
/// The detail is cut at [`MAX_DETAIL`]; `user_id` is a decoded sign-up's,
/// so a valid partition key. `source` names the stream record.
pub fn write_dead_letter(
    out: &mut Vec<u8>,
    reason: Reason,
    detail: &str,
    rule: Option<RuleRef<'_>>,
    user_id: Option<&str>,
    input: &[u8],
    source: Option<&RecordSource<'_>>,
) {
    let input_truncated = input.len() > MAX_DEAD_LETTER_INPUT;
    let (input_bytes, input_sha256) = if input_truncated {
        (Some(input.len()), Some(format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(input))))
    } else {
        (None, None)
    };
    let kept = &input[..input.len().min(MAX_DEAD_LETTER_INPUT)];
    let encoded;
    let (kept, input_encoding) = match std::str::from_utf8(kept) {
        Ok(text) => (text, None),
        // Cut inside a character of a UTF-8 input: keep the whole characters.
        Err(e) if input_truncated && e.error_len().is_none() => {
            (std::str::from_utf8(&kept[..e.valid_up_to()]).expect("checked up to here"), None)
        }
        Err(_) => {
            encoded = base64::engine::general_purpose::STANDARD.encode(kept);
            (encoded.as_str(), Some("base64"))
        }
    };
    let detail = truncated(detail, MAX_DETAIL);
    let letter = DeadLetter {
        reason,
        detail: &detail,
        rule,
        user_id,
        input: kept,
        input_encoding,
        input_truncated,
        input_bytes,
        input_sha256,
        source,
    };
    serde_json::to_writer(out, &letter).expect("serialising plain structs to a Vec cannot fail");
}

/// Appends the dead letter that stands for an output Kinesis refused for
/// good. It carries no input: its `source` names the record to fetch.
pub fn write_output_rejected(out: &mut Vec<u8>, detail: &str, source: &RecordSource<'_>) {
    let letter = DeadLetter {
        reason: Reason::OutputRejected,
        detail: &truncated(detail, MAX_DETAIL),
        rule: None,
        user_id: None,
        input: "",
        input_encoding: None,
        input_truncated: true,
        input_bytes: None,
        input_sha256: None,
        source: Some(source),
    };
    serde_json::to_writer(out, &letter).expect("serialising plain structs to a Vec cannot fail");
}

#[cfg(test)]
mod tests;
