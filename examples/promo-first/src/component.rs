//! The `offers:rules` export: converts between the contract's types (from
//! `wit/`, written by `offerd wit`) and the plain-Rust rules. No logic here.

use std::cell::RefCell;

use crate::rules;

wit_bindgen::generate!({ path: "wit", world: "offer-rules" });

use exports::offers::rules::rules as wit;

thread_local! {
    /// Set by `init`: an instance serves one region.
    static RULES: RefCell<Option<rules::Rules>> = const { RefCell::new(None) };
}

struct Component;
export!(Component);

impl wit::Guest for Component {
    fn metadata() -> wit::ModuleInfo {
        wit::ModuleInfo { name: crate::NAME.into(), version: crate::VERSION.into() }
    }

    fn init(catalog: wit::Catalog) -> Result<(), wit::CatalogError> {
        let catalog = rules::Catalog {
            countries: catalog.countries,
            max_offers: catalog.max_offers,
            plans: catalog
                .plans
                .into_iter()
                .map(|p| rules::Plan {
                    technology: technology(p.technology),
                    segment: p.segment.map(segment),
                    monthly_price_minor: p.monthly_price_minor,
                    countries: p.countries,
                    postal_prefixes: p.postal_prefixes,
                    coverage: p.coverage.map(|c| rules::Coverage { max_km: c.max_km, min_population: c.min_population }),
                })
                .collect(),
            metros: catalog
                .metros
                .into_iter()
                .map(|m| rules::Metro { lat: m.lat, lon: m.lon, population: m.population })
                .collect(),
            promos: catalog
                .promos
                .into_iter()
                .map(|p| rules::Promo {
                    percent_off: p.percent_off,
                    technologies: p.technologies.into_iter().map(technology).collect(),
                    segment: p.segment.map(segment),
                    valid_from_day: p.valid_from_day,
                    valid_until_day: p.valid_until_day,
                })
                .collect(),
        };
        RULES.with(|r| *r.borrow_mut() = Some(rules::Rules::new(catalog)));
        Ok(())
    }

    fn enrich(batch: Vec<wit::SignUp>) -> Vec<Result<Vec<wit::Offer>, wit::RuleError>> {
        RULES.with(|r| {
            let guard = r.borrow();
            let rules = guard.as_ref().expect("the host calls init before enrich");
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
                    match rules.enrich(&signup) {
                        Ok(offers) => Ok(offers
                            .into_iter()
                            .map(|o| wit::Offer {
                                plan: o.plan,
                                monthly_price_minor: o.monthly_price_minor,
                                promo: o.promo.map(|(promo, monthly_price_minor)| wit::AppliedPromo {
                                    promo,
                                    monthly_price_minor,
                                }),
                            })
                            .collect()),
                        Err(rules::Rejection::CountryNotServed(c)) => Err(wit::RuleError::CountryNotServed(c)),
                        Err(rules::Rejection::NoCoverage) => Err(wit::RuleError::NoCoverage),
                    }
                })
                .collect()
        })
    }
}

fn segment(s: wit::Segment) -> rules::Segment {
    match s {
        wit::Segment::Residential => rules::Segment::Residential,
        wit::Segment::Business => rules::Segment::Business,
    }
}

fn technology(t: wit::Technology) -> rules::Technology {
    match t {
        wit::Technology::Fiber => rules::Technology::Fiber,
        wit::Technology::Cable => rules::Technology::Cable,
        wit::Technology::Dsl => rules::Technology::Dsl,
        wit::Technology::FixedWireless => rules::Technology::FixedWireless,
        wit::Technology::Satellite => rules::Technology::Satellite,
    }
}
