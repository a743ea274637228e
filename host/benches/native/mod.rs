//! The reference rules compiled into the host, on the same decode, routing
//! and encoding as the module path: the benches' native side.

use std::collections::HashMap;
use std::sync::Arc;

use offerd::catalog::{self, Catalogs, RegionCatalog};
use offerd::engine::{ModuleInfo, Offer};
use offerd::enricher::Outcome;
use offerd::record::{self, OfferEncoder, Reason};
use offerd::signup::SignUp;

/// The same decode, routing and encoding as [`Enricher`], with the rules
/// called as a native library instead of a module.
pub struct Native {
    catalogs: Arc<Catalogs>,
    rules: HashMap<String, (offer_rules::Rules, OfferEncoder)>,
}

impl Native {
    /// `regions` replace the catalogs' own (routing stays the catalogs').
    pub fn new<'a>(
        catalogs: &Arc<Catalogs>,
        regions: impl Iterator<Item = &'a RegionCatalog>,
        info: &ModuleInfo,
    ) -> Self {
        let rules = regions
            .map(|c| {
                (
                    c.region.clone(),
                    (
                        offer_rules::Rules::new(native_catalog(c)).expect("the host accepted this catalog"),
                        OfferEncoder::new(c, info),
                    ),
                )
            })
            .collect();
        Self { catalogs: catalogs.clone(), rules }
    }

    pub fn enrich(&self, inputs: &[&[u8]]) -> Vec<Outcome> {
        inputs
            .iter()
            .map(|input| {
                let mut line = Vec::with_capacity(512);
                let signup = match SignUp::decode(input) {
                    Ok(s) => s,
                    Err(e) => {
                        record::write_dead_letter(
                            &mut line,
                            Reason::InvalidRecord,
                            &e.to_string(),
                            None,
                            None,
                            input,
                            None,
                        );
                        return Outcome::DeadLetter { reason: Reason::InvalidRecord, line };
                    }
                };
                let region = self.catalogs.route(&signup.country).expect("generated countries are routed");
                let native = offer_rules::SignUp {
                    country: &signup.country,
                    postal_code: signup.postal_code.as_deref(),
                    coordinates: signup.coordinates,
                    segment: match signup.segment {
                        catalog::Segment::Residential => offer_rules::Segment::Residential,
                        catalog::Segment::Business => offer_rules::Segment::Business,
                    },
                    signed_up_day: signup.signed_up_day,
                };
                let (rules, encoder) = &self.rules[region];
                match rules.enrich(&native) {
                    Ok(offers) => {
                        let offers: Vec<Offer> = offers
                            .iter()
                            .map(|o| Offer {
                                plan: o.plan as usize,
                                monthly_price_minor: o.monthly_price_minor,
                                promo: o.promo.map(|p| (p.promo as usize, p.monthly_price_minor)),
                            })
                            .collect();
                        encoder.write(&mut line, &signup, &offers, None);
                        Outcome::Offer { user_id: signup.user_id.to_string(), line }
                    }
                    Err(e) => {
                        record::write_dead_letter(
                            &mut line,
                            Reason::RuleRejected,
                            &format!("{e:?}"),
                            None,
                            Some(signup.user_id.as_ref()),
                            input,
                            None,
                        );
                        Outcome::DeadLetter { reason: Reason::RuleRejected, line }
                    }
                }
            })
            .collect()
    }
}

fn technology(t: catalog::Technology) -> offer_rules::Technology {
    match t {
        catalog::Technology::Fiber => offer_rules::Technology::Fiber,
        catalog::Technology::Cable => offer_rules::Technology::Cable,
        catalog::Technology::Dsl => offer_rules::Technology::Dsl,
        catalog::Technology::FixedWireless => offer_rules::Technology::FixedWireless,
        catalog::Technology::Satellite => offer_rules::Technology::Satellite,
    }
}

pub fn segment(s: catalog::Segment) -> offer_rules::Segment {
    match s {
        catalog::Segment::Residential => offer_rules::Segment::Residential,
        catalog::Segment::Business => offer_rules::Segment::Business,
    }
}

pub fn native_catalog(c: &RegionCatalog) -> offer_rules::Catalog {
    offer_rules::Catalog {
        region: c.region.clone(),
        currency: c.currency.clone(),
        countries: c.countries.clone(),
        max_offers: c.max_offers,
        plans: c
            .plans
            .iter()
            .map(|p| offer_rules::Plan {
                id: p.id.clone(),
                name: p.name.clone(),
                technology: technology(p.technology),
                segment: p.segment.map(segment),
                down_mbps: p.down_mbps,
                up_mbps: p.up_mbps,
                monthly_price_minor: p.monthly_price_minor,
                countries: p.countries.clone(),
                postal_prefixes: p.postal_prefixes.clone(),
                coverage: p
                    .coverage
                    .map(|c| offer_rules::Coverage { max_km: c.max_km, min_population: c.min_population }),
            })
            .collect(),
        metros: c
            .metros
            .iter()
            .map(|m| offer_rules::Metro { lat: m.lat, lon: m.lon, population: m.population })
            .collect(),
        promos: c
            .promos
            .iter()
            .map(|p| offer_rules::Promo {
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
