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
