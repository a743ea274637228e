//! The `offers:rules` export: converts between the contract's types (from
//! `wit/`, written by `offerd wit`) and the plain-Rust rules. No logic here.

use std::cell::RefCell;

use crate::rules;

wit_bindgen::generate!({ path: "wit", world: "offer-rules" });

use exports::offers::rules::rules as wit;

thread_local! {
    /// Set by `init`: an instance serves one region.
    static RULES: RefCell<Option<rules::Rules>> = const { RefCell::new(None) };
    /// The catalog's countries: a compact sign-up names its country by index.
    static COUNTRIES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Component;
export!(Component);

impl wit::Guest for Component {
    fn metadata() -> wit::ModuleInfo {
        wit::ModuleInfo { name: crate::NAME.into(), version: crate::VERSION.into() }
    }

    fn init(catalog: wit::Catalog) -> Result<(), wit::CatalogError> {
        COUNTRIES.with(|c| *c.borrow_mut() = catalog.countries.clone());
        let catalog = rules::Catalog {
            countries: catalog.countries,
            max_offers: catalog.max_offers,
            plans: catalog
                .plans
                .into_iter()
                .map(|p| rules::Plan {
                    segment: p.segment.map(segment),
                    monthly_price_minor: p.monthly_price_minor,
                    countries: p.countries,
                    postal_prefixes: p.postal_prefixes,
                    coverage: p
                        .coverage
                        .map(|c| rules::Coverage { max_km: c.max_km, min_population: c.min_population }),
                })
                .collect(),
            metros: catalog
                .metros
                .into_iter()
                .map(|m| rules::Metro { lat: m.lat, lon: m.lon, population: m.population })
                .collect(),
        };
        RULES.with(|r| *r.borrow_mut() = Some(rules::Rules::new(catalog)));
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
                    };
                    rules.enrich(&signup).map(|offers| offers.into_iter().map(to_wit).collect()).map_err(rule_error)
                })
                .collect()
        })
    }

    /// Contract 1.1: the same rules, without an allocation per sign-up at
    /// the boundary. The host calls this one.
    fn enrich_compact(batch: Vec<wit::CompactSignUp>) -> wit::BatchResult {
        COUNTRIES.with_borrow(|countries| {
            with_rules(|rules| {
                let mut result = wit::BatchResult {
                    offers: Vec::with_capacity(batch.len() * 3),
                    rejections: Vec::new(),
                    reasons: String::new(),
                };
                for (i, s) in batch.iter().enumerate() {
                    let sign_up = i as u32;
                    let mut buffer = [0; 16];
                    let signup = rules::SignUp {
                        // The host sends only the catalog's countries.
                        country: countries.get(usize::from(s.country)).map_or("", String::as_str),
                        postal_code: postal_code(&s.postal_code, &mut buffer),
                        coordinates: s.coordinates.map(|c| (c.lat, c.lon)),
                        segment: segment(s.segment),
                    };
                    match rules.enrich(&signup) {
                        Ok(offers) => result
                            .offers
                            .extend(offers.into_iter().map(|o| wit::BatchOffer { sign_up, offer: to_wit(o) })),
                        Err(e) => result.rejections.push(wit::BatchRejection {
                            sign_up,
                            kind: rejection_kind(e),
                            reason: None,
                        }),
                    }
                }
                result
            })
        })
    }
}

fn with_rules<T>(f: impl FnOnce(&rules::Rules) -> T) -> T {
    RULES.with(|r| f(r.borrow().as_ref().expect("the host calls init before enrich")))
}

/// A 1.1 postal code as text: packed ones (up to 16 ASCII bytes, NUL-padded)
/// are unpacked into `buffer`.
fn postal_code<'a>(code: &'a Option<wit::PostalCode>, buffer: &'a mut [u8; 16]) -> Option<&'a str> {
    match code {
        None => None,
        Some(wit::PostalCode::Text(text)) => Some(text),
        Some(wit::PostalCode::Packed((high, low))) => {
            buffer[..8].copy_from_slice(&high.to_be_bytes());
            buffer[8..].copy_from_slice(&low.to_be_bytes());
            let len = buffer.iter().position(|&b| b == 0).unwrap_or(16);
            // offerd packs ASCII only.
            core::str::from_utf8(&buffer[..len]).ok()
        }
    }
}

fn to_wit(o: rules::Offer) -> wit::Offer {
    wit::Offer { plan: o.plan, monthly_price_minor: o.monthly_price_minor, promo: None }
}

fn rejection_kind(e: rules::Rejection) -> wit::RejectionKind {
    match e {
        rules::Rejection::CountryNotServed(_) => wit::RejectionKind::CountryNotServed,
        rules::Rejection::NoCoverage => wit::RejectionKind::NoCoverage,
    }
}

fn rule_error(e: rules::Rejection) -> wit::RuleError {
    match e {
        rules::Rejection::CountryNotServed(c) => wit::RuleError::CountryNotServed(c),
        rules::Rejection::NoCoverage => wit::RuleError::NoCoverage,
    }
}

fn segment(s: wit::Segment) -> rules::Segment {
    match s {
        wit::Segment::Residential => rules::Segment::Residential,
        wit::Segment::Business => rules::Segment::Business,
    }
}
