//! The `offers:rules` export: converts between the contract's types and the
//! plain-Rust rules. No logic lives here.

use std::cell::RefCell;

use crate::{catalog, rules};

wit_bindgen::generate!({ path: "../wit", world: "offer-rules" });

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
        RULES.with(|r| {
            let guard = r.borrow();
            // The host calls `init` before `enrich` on every instance; a trap
            // here tells it the module was misused, not that a record is bad.
            let rules = guard.as_ref().expect("enrich called before init");
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
                    rules.enrich(&signup).map(|offers| offers.into_iter().map(to_wit).collect()).map_err(|e| match e {
                        rules::Rejection::CountryNotServed(c) => wit::RuleError::CountryNotServed(c),
                        rules::Rejection::NoCoverage => wit::RuleError::NoCoverage,
                        rules::Rejection::Unusable(why) => wit::RuleError::Unusable(why),
                    })
                })
                .collect()
        })
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
