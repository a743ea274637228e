//! The `offers:rules` export: converts between the contract's types and the
//! plain-Rust rules. No logic lives here.

use std::cell::RefCell;

use crate::{catalog, rules};

#[cfg(not(feature = "contract-1-0"))]
wit_bindgen::generate!({ path: "../wit", world: "offer-rules" });
#[cfg(feature = "contract-1-0")]
wit_bindgen::generate!({ path: "../wit/1.0.0", world: "offer-rules" });

use exports::offers::rules::rules as wit;

thread_local! {
    /// Set by `init`; a module instance serves one region.
    static RULES: RefCell<Option<rules::Rules>> = const { RefCell::new(None) };
}

struct Component;
export!(Component);

impl wit::Guest for Component {
    fn metadata() -> wit::ModuleInfo {
        wit::ModuleInfo { name: crate::NAME.into(), version: crate::VERSION.into() }
    }

    fn init(catalog: wit::Catalog) -> Result<(), wit::CatalogError> {
        let rules =
            rules::Rules::new(from_wit(catalog)).map_err(|e| wit::CatalogError { field: e.field, reason: e.reason })?;
        RULES.with(|r| *r.borrow_mut() = Some(rules));
        Ok(())
    }

    fn enrich(batch: Vec<wit::SignUp>) -> Vec<Result<Vec<wit::Offer>, wit::RuleError>> {
        with_rules(|rules| {
            batch
                .iter()
                .map(|s| {
                    let signup = rules::SignUp {
                        country: &s.country,
                        postal_code: s.postal_code.as_deref(),
                        coordinates: s.coordinates.map(|c| (c.lat, c.lon)),
                        segment: segment(s.segment),
                        signed_up_day: s.signed_up_day,
                    };
                    rules.enrich(&signup).map(|offers| offers.into_iter().map(to_wit).collect()).map_err(rule_error)
                })
                .collect()
        })
    }

    #[cfg(not(feature = "contract-1-0"))]
    fn enrich_compact(batch: Vec<wit::CompactSignUp>) -> wit::BatchResult {
        with_rules(|rules| {
            let countries = &rules.catalog().countries;
            let mut result = wit::BatchResult {
                offers: Vec::with_capacity(batch.len() * rules.catalog().max_offers.min(4) as usize),
                rejections: Vec::new(),
                reasons: String::new(),
            };
            for (i, s) in batch.iter().enumerate() {
                let sign_up = i as u32;
                let mut buffer = [0; 16];
                let enriched = match (countries.get(usize::from(s.country)), postal_code(&s.postal_code, &mut buffer)) {
                    (None, _) => {
                        Err(rules::Rejection::Unusable(format!("country index {} is not in the catalog", s.country)))
                    }
                    (Some(_), Err(e)) => Err(e),
                    (Some(country), Ok(postal_code)) => rules.enrich(&rules::SignUp {
                        country,
                        postal_code,
                        coordinates: s.coordinates.map(|c| (c.lat, c.lon)),
                        segment: segment(s.segment),
                        signed_up_day: s.signed_up_day,
                    }),
                };
                match enriched {
                    Ok(offers) => {
                        result.offers.extend(offers.into_iter().map(|o| wit::BatchOffer { sign_up, offer: to_wit(o) }));
                    }
                    Err(e) => {
                        let (kind, reason) = match e {
                            rules::Rejection::CountryNotServed(_) => (wit::RejectionKind::CountryNotServed, None),
                            rules::Rejection::NoCoverage => (wit::RejectionKind::NoCoverage, None),
                            rules::Rejection::Unusable(why) => {
                                let start = result.reasons.len() as u32;
                                result.reasons.push_str(&why);
                                (wit::RejectionKind::Unusable, Some((start, why.len() as u32)))
                            }
                        };
                        result.rejections.push(wit::BatchRejection { sign_up, kind, reason });
                    }
                }
            }
            result
        })
    }
}

/// The instance's rules. The host calls `init` before `enrich` on every
/// instance; a trap here tells it the module was misused, not that a record
/// is bad.
fn with_rules<T>(f: impl FnOnce(&rules::Rules) -> T) -> T {
    RULES.with(|r| f(r.borrow().as_ref().expect("enrich called before init")))
}

/// A 1.1 postal code as text: packed ones are unpacked into `buffer`.
#[cfg(not(feature = "contract-1-0"))]
fn postal_code<'a>(
    code: &'a Option<wit::PostalCode>,
    buffer: &'a mut [u8; 16],
) -> Result<Option<&'a str>, rules::Rejection> {
    match code {
        None => Ok(None),
        Some(wit::PostalCode::Text(text)) => Ok(Some(text)),
        Some(wit::PostalCode::Packed((high, low))) => {
            buffer[..8].copy_from_slice(&high.to_be_bytes());
            buffer[8..].copy_from_slice(&low.to_be_bytes());
            let len = buffer.iter().position(|&b| b == 0).unwrap_or(16);
            core::str::from_utf8(&buffer[..len])
                .map(Some)
                .map_err(|_| rules::Rejection::Unusable("packed postal code is not ASCII".into()))
        }
    }
}

fn rule_error(e: rules::Rejection) -> wit::RuleError {
    match e {
        rules::Rejection::CountryNotServed(c) => wit::RuleError::CountryNotServed(c),
        rules::Rejection::NoCoverage => wit::RuleError::NoCoverage,
        rules::Rejection::Unusable(why) => wit::RuleError::Unusable(why),
    }
}

fn to_wit(o: rules::Offer) -> wit::Offer {
    wit::Offer {
        plan: o.plan,
        monthly_price_minor: o.monthly_price_minor,
        promo: o.promo.map(|p| wit::AppliedPromo { promo: p.promo, monthly_price_minor: p.monthly_price_minor }),
    }
}

fn segment(s: wit::Segment) -> catalog::Segment {
    match s {
        wit::Segment::Residential => catalog::Segment::Residential,
        wit::Segment::Business => catalog::Segment::Business,
    }
}

fn technology(t: wit::Technology) -> catalog::Technology {
    match t {
        wit::Technology::Fiber => catalog::Technology::Fiber,
        wit::Technology::Cable => catalog::Technology::Cable,
        wit::Technology::Dsl => catalog::Technology::Dsl,
        wit::Technology::FixedWireless => catalog::Technology::FixedWireless,
        wit::Technology::Satellite => catalog::Technology::Satellite,
    }
}

fn from_wit(c: wit::Catalog) -> catalog::Catalog {
    catalog::Catalog {
        region: c.region,
        currency: c.currency,
        countries: c.countries,
        max_offers: c.max_offers,
        plans: c
            .plans
            .into_iter()
            .map(|p| catalog::Plan {
                id: p.id,
                name: p.name,
                technology: technology(p.technology),
                segment: p.segment.map(segment),
                down_mbps: p.down_mbps,
                up_mbps: p.up_mbps,
                monthly_price_minor: p.monthly_price_minor,
                countries: p.countries,
                postal_prefixes: p.postal_prefixes,
                coverage: p.coverage.map(|c| catalog::Coverage { max_km: c.max_km, min_population: c.min_population }),
            })
            .collect(),
        metros: c
            .metros
            .into_iter()
            .map(|m| catalog::Metro { lat: m.lat, lon: m.lon, population: m.population })
            .collect(),
        promos: c
            .promos
            .into_iter()
            .map(|p| catalog::Promo {
                id: p.id,
                name: p.name,
                percent_off: p.percent_off,
                months: p.months,
                technologies: p.technologies.into_iter().map(technology).collect(),
                segment: p.segment.map(segment),
                valid_from_day: p.valid_from_day,
                valid_until_day: p.valid_until_day,
            })
            .collect(),
    }
}
