//! Host types to and from the contract's types.

use super::region::{Failure, FailureKind, Offer};
use super::wit;
use crate::catalog::{self, RegionCatalog};
use crate::signup::SignUp;

fn segment(s: catalog::Segment) -> wit::Segment {
    match s {
        catalog::Segment::Residential => wit::Segment::Residential,
        catalog::Segment::Business => wit::Segment::Business,
    }
}

fn technology(t: catalog::Technology) -> wit::Technology {
    match t {
        catalog::Technology::Fiber => wit::Technology::Fiber,
        catalog::Technology::Cable => wit::Technology::Cable,
        catalog::Technology::Dsl => wit::Technology::Dsl,
        catalog::Technology::FixedWireless => wit::Technology::FixedWireless,
        catalog::Technology::Satellite => wit::Technology::Satellite,
    }
}

pub(super) fn catalog(c: &RegionCatalog) -> wit::Catalog {
    wit::Catalog {
        region: c.region.clone(),
        currency: c.currency.clone(),
        countries: c.countries.clone(),
        max_offers: c.max_offers,
        plans: c
            .plans
            .iter()
            .map(|p| wit::Plan {
                id: p.id.clone(),
                name: p.name.clone(),
                technology: technology(p.technology),
                segment: p.segment.map(segment),
                down_mbps: p.down_mbps,
                up_mbps: p.up_mbps,
                monthly_price_minor: p.monthly_price_minor,
                countries: p.countries.clone(),
                postal_prefixes: p.postal_prefixes.clone(),
                coverage: p.coverage.map(|c| wit::MetroCoverage { max_km: c.max_km, min_population: c.min_population }),
            })
            .collect(),
        metros: c.metros.iter().map(|m| wit::Metro { lat: m.lat, lon: m.lon, population: m.population }).collect(),
        promos: c
            .promos
            .iter()
            .map(|p| wit::Promo {
                id: p.id.clone(),
                name: p.name.clone(),
                percent_off: p.percent_off,
                months: p.months,
                technologies: p.technologies.iter().copied().map(technology).collect(),
                segment: p.segment.map(segment),
                valid_from_day: p.valid_from,
                valid_until_day: p.valid_until,
            })
            .collect(),
    }
}

pub(super) fn signup(s: &SignUp<'_>) -> wit::SignUp {
    wit::SignUp {
        country: s.country.to_string(),
        postal_code: s.postal_code.as_deref().map(str::to_owned),
        coordinates: s.coordinates.map(|(lat, lon)| wit::Coordinates { lat, lon }),
        segment: segment(s.segment),
        signed_up_day: s.signed_up_day,
    }
}

/// A slot per pair of upper-case letters: the host routes only ISO 3166-1
/// alpha-2 codes.
fn country_slot(code: &str) -> Option<usize> {
    match code.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => Some(usize::from(a - b'A') * 26 + usize::from(b - b'A')),
        _ => None,
    }
}

/// Per country slot, the country's index in `countries` (a 1.1 sign-up's
/// `country`).
pub(super) fn country_index(countries: &[String]) -> Vec<Option<u16>> {
    let mut index = vec![None; 26 * 26];
    for (i, country) in countries.iter().enumerate() {
        if let (Some(slot), Ok(i)) = (country_slot(country), u16::try_from(i)) {
            index[slot].get_or_insert(i);
        }
    }
    index
}

/// A sign-up for a 1.1 module; `None` when its country is not one of the
/// catalog's (a record may name its region).
pub(super) fn compact_signup(s: &SignUp<'_>, country_index: &[Option<u16>]) -> Option<wit::CompactSignUp> {
    let country = country_slot(&s.country).and_then(|slot| country_index[slot])?;
    Some(wit::CompactSignUp {
        country,
        postal_code: s.postal_code.as_deref().map(postal_code),
        coordinates: s.coordinates.map(|(lat, lon)| wit::Coordinates { lat, lon }),
        segment: segment(s.segment),
        signed_up_day: s.signed_up_day,
    })
}

/// Packed when it is 1 to 16 ASCII bytes without NUL, as the contract says.
fn postal_code(code: &str) -> wit::PostalCode {
    let bytes = code.as_bytes();
    if !(1..=16).contains(&bytes.len()) || !bytes.iter().all(|&b| b.is_ascii() && b != 0) {
        return wit::PostalCode::Text(code.to_owned());
    }
    let mut packed = [0u8; 16];
    packed[..bytes.len()].copy_from_slice(bytes);
    let (high, low) = packed.split_at(8);
    wit::PostalCode::Packed((
        u64::from_be_bytes(high.try_into().expect("8 bytes")),
        u64::from_be_bytes(low.try_into().expect("8 bytes")),
    ))
}

pub(super) fn rejection(e: &wit::RuleError) -> Failure {
    if let wit::RuleError::Unusable(why) | wit::RuleError::CountryNotServed(why) = e
        && why.len() > super::region::MAX_REASON_BYTES
    {
        return Failure {
            kind: FailureKind::BadResult,
            detail: format!(
                "module gave a rejection reason of {} bytes; the limit is {}",
                why.len(),
                super::region::MAX_REASON_BYTES
            ),
        };
    }
    let (case, detail) = match e {
        wit::RuleError::CountryNotServed(c) => {
            ("country-not-served", format!("country {c} is not served by this region"))
        }
        wit::RuleError::NoCoverage => ("no-coverage", "no plan of this segment reaches this location".into()),
        wit::RuleError::Unusable(why) => ("unusable", why.clone()),
    };
    Failure { kind: FailureKind::Rejected(case), detail: format!("{case}: {detail}") }
}

/// A module that points outside the catalog is broken for this record.
pub(super) fn offer(o: &wit::Offer, catalog: &RegionCatalog) -> Result<Offer, Failure> {
    let broken = |detail: String| Failure { kind: FailureKind::BadResult, detail };
    let plan = o.plan as usize;
    if plan >= catalog.plans.len() {
        return Err(broken(format!("module returned plan {plan}; the catalog has {}", catalog.plans.len())));
    }
    let promo = match o.promo {
        None => None,
        Some(p) if (p.promo as usize) < catalog.promos.len() => Some((p.promo as usize, p.monthly_price_minor)),
        Some(p) => {
            return Err(broken(format!("module returned promo {}; the catalog has {}", p.promo, catalog.promos.len())));
        }
    };
    Ok(Offer { plan, monthly_price_minor: o.monthly_price_minor, promo })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postal_codes_are_packed_big_end_first_when_the_contract_allows() {
        assert!(matches!(postal_code("10115"), wit::PostalCode::Packed((0x3130_3131_3500_0000, 0))));
        let sixteen = "ABCDEFGHIJKLMNOP";
        assert!(matches!(
            postal_code(sixteen),
            wit::PostalCode::Packed((0x4142_4344_4546_4748, 0x494A_4B4C_4D4E_4F50))
        ));
        for text in ["ABCDEFGHIJKLMNOPQ", "zü 1", "a\0b", ""] {
            assert!(matches!(postal_code(text), wit::PostalCode::Text(t) if t == text), "{text:?}");
        }
    }

    #[test]
    fn countries_index_the_catalog_and_others_are_not_sent() {
        let index = country_index(&["FR".into(), "DE".into(), "bad".into(), "FR".into()]);
        let signup = |country: &'static str| SignUp {
            user_id: "u".into(),
            country: country.into(),
            postal_code: None,
            coordinates: None,
            segment: catalog::Segment::Residential,
            signed_up_day: None,
            region: None,
        };
        assert_eq!(compact_signup(&signup("DE"), &index).map(|s| s.country), Some(1));
        assert_eq!(compact_signup(&signup("FR"), &index).map(|s| s.country), Some(0));
        assert!(compact_signup(&signup("IT"), &index).is_none());
    }
}
