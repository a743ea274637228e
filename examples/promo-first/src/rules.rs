//! Promo-first rules: a plan with a running promotion ranks above one
//! without; a business customer sees business plans before plans for
//! everyone; then the lower price (the promotional one where it applies)
//! wins. As many offers as the catalog allows.
//!
//! Built from `offerd new-rule`'s starting crate: the deliverability checks
//! are the scaffold's; promos and the ranking are what this example adds.

/// Who signs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Residential,
    Business,
}

/// Access technologies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Technology {
    Fiber,
    Cable,
    Dsl,
    FixedWireless,
    Satellite,
}

/// Where a plan can be delivered: within `max_km` of a metro area with at
/// least `min_population` inhabitants.
#[derive(Debug, Clone, Copy)]
pub struct Coverage {
    pub max_km: f64,
    pub min_population: u64,
}

/// The parts of a catalog plan these rules use.
#[derive(Debug, Clone)]
pub struct Plan {
    pub technology: Technology,
    /// `None`: offered to both segments.
    pub segment: Option<Segment>,
    /// Per month, in the catalog currency's minor units.
    pub monthly_price_minor: u64,
    /// ISO codes where the plan is sold; empty: the whole region.
    pub countries: Vec<String>,
    /// Postal-code prefixes where the plan is sold; empty: anywhere.
    pub postal_prefixes: Vec<String>,
    /// `None`: deliverable anywhere in the region.
    pub coverage: Option<Coverage>,
}

/// A time-limited discount.
#[derive(Debug, Clone)]
pub struct Promo {
    /// 1..=100.
    pub percent_off: u8,
    /// Technologies it applies to; empty: all.
    pub technologies: Vec<Technology>,
    /// `None`: both segments.
    pub segment: Option<Segment>,
    /// Days since 1970-01-01 UTC, both ends inclusive.
    pub valid_from_day: i32,
    pub valid_until_day: i32,
}

/// A populated place networks are built around.
#[derive(Debug, Clone, Copy)]
pub struct Metro {
    pub lat: f64,
    pub lon: f64,
    pub population: u64,
}

/// The parts of the region's catalog these rules use.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub countries: Vec<String>,
    pub max_offers: u32,
    pub plans: Vec<Plan>,
    pub metros: Vec<Metro>,
    pub promos: Vec<Promo>,
}

/// One sign-up, as the host passes it.
#[derive(Debug, Clone, Copy)]
pub struct SignUp<'a> {
    pub country: &'a str,
    pub postal_code: Option<&'a str>,
    pub coordinates: Option<(f64, f64)>,
    pub segment: Segment,
    /// Days since 1970-01-01 UTC; `None`: no promo can be shown valid.
    pub signed_up_day: Option<i32>,
}

/// One offer: a plan (index into `Catalog::plans`) at its price, with the
/// promo (index into `Catalog::promos`) and its price while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub plan: u32,
    pub monthly_price_minor: u64,
    pub promo: Option<(u32, u64)>,
}

/// Why a sign-up gets no offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    CountryNotServed(String),
    NoCoverage,
}

/// The rules, primed with one region's catalog.
pub struct Rules {
    catalog: Catalog,
    /// Indices into `catalog.metros`, by latitude.
    by_lat: Vec<u32>,
}

impl Rules {
    pub fn new(catalog: Catalog) -> Self {
        let mut by_lat: Vec<u32> = (0..catalog.metros.len() as u32).collect();
        by_lat.sort_by(|&a, &b| catalog.metros[a as usize].lat.total_cmp(&catalog.metros[b as usize].lat));
        Self { catalog, by_lat }
    }

    /// Deliverable plans, promos first, then business plans for business,
    /// then cheapest.
    pub fn enrich(&self, signup: &SignUp<'_>) -> Result<Vec<Offer>, Rejection> {
        if !self.catalog.countries.iter().any(|c| c == signup.country) {
            return Err(Rejection::CountryNotServed(signup.country.to_owned()));
        }
        let mut offers: Vec<Offer> = self
            .catalog
            .plans
            .iter()
            .enumerate()
            .filter(|(_, plan)| self.deliverable(plan, signup))
            .map(|(i, plan)| Offer {
                plan: i as u32,
                monthly_price_minor: plan.monthly_price_minor,
                promo: self.best_promo(plan, signup),
            })
            .collect();
        if offers.is_empty() {
            return Err(Rejection::NoCoverage);
        }
        let plans = &self.catalog.plans;
        offers.sort_by_key(|o| {
            let business_first = signup.segment == Segment::Business
                && plans[o.plan as usize].segment == Some(Segment::Business);
            let price = o.promo.map_or(o.monthly_price_minor, |(_, p)| p);
            (o.promo.is_none(), !business_first, price, o.plan)
        });
        offers.truncate(self.catalog.max_offers as usize);
        Ok(offers)
    }

    /// The deepest discount valid for this plan and sign-up, with its price.
    fn best_promo(&self, plan: &Plan, signup: &SignUp<'_>) -> Option<(u32, u64)> {
        let day = signup.signed_up_day?;
        self.catalog
            .promos
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                (p.valid_from_day..=p.valid_until_day).contains(&day)
                    && p.segment.is_none_or(|s| s == signup.segment)
                    && (p.technologies.is_empty() || p.technologies.contains(&plan.technology))
            })
            .max_by_key(|(i, p)| (p.percent_off, std::cmp::Reverse(*i)))
            .map(|(i, p)| (i as u32, plan.monthly_price_minor * u64::from(100 - p.percent_off.min(100)) / 100))
    }

    fn deliverable(&self, plan: &Plan, signup: &SignUp<'_>) -> bool {
        plan.segment.is_none_or(|s| s == signup.segment)
            && (plan.countries.is_empty() || plan.countries.iter().any(|c| c == signup.country))
            && (plan.postal_prefixes.is_empty()
                || signup.postal_code.is_some_and(|code| plan.postal_prefixes.iter().any(|p| code.starts_with(p.as_str()))))
            && match (plan.coverage, signup.coordinates) {
                (None, _) => true,
                (Some(coverage), Some(at)) => self.covered(coverage, at),
                (Some(_), None) => false,
            }
    }

    /// Whether a metro of at least `min_population` lies within `max_km` of `at`.
    fn covered(&self, coverage: Coverage, (lat, lon): (f64, f64)) -> bool {
        let band = coverage.max_km / 111.0;
        let metros = &self.catalog.metros;
        let start = self.by_lat.partition_point(|&m| metros[m as usize].lat < lat - band);
        self.by_lat[start..]
            .iter()
            .map(|&m| &metros[m as usize])
            .take_while(|m| m.lat <= lat + band)
            .any(|m| m.population >= coverage.min_population && km(lat, lon, m.lat, m.lon) <= coverage.max_km)
    }
}

/// Great-circle distance in kilometres (haversine).
fn km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let (dp, dl) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(technology: Technology, price: u64, segment: Option<Segment>) -> Plan {
        Plan { technology, segment, monthly_price_minor: price, countries: vec![], postal_prefixes: vec![], coverage: None }
    }

    fn rules() -> Rules {
        Rules::new(Catalog {
            countries: vec!["DE".into()],
            max_offers: 4,
            plans: vec![
                plan(Technology::Dsl, 2_000, None),                        // 0
                plan(Technology::Fiber, 5_000, None),                      // 1: fibre promo
                plan(Technology::Fiber, 8_000, Some(Segment::Business)),   // 2: business, fibre promo
                plan(Technology::Cable, 3_000, Some(Segment::Business)),   // 3: business
                plan(Technology::Cable, 2_500, Some(Segment::Residential)), // 4
            ],
            metros: vec![],
            promos: vec![
                Promo { percent_off: 20, technologies: vec![Technology::Fiber], segment: None, valid_from_day: 100, valid_until_day: 200 },
                Promo { percent_off: 50, technologies: vec![], segment: None, valid_from_day: 300, valid_until_day: 400 },
            ],
        })
    }

    fn signup(segment: Segment, day: Option<i32>) -> SignUp<'static> {
        SignUp { country: "DE", postal_code: None, coordinates: None, segment, signed_up_day: day }
    }

    #[test]
    fn plans_with_a_running_promo_come_first_at_their_promo_price() {
        let offers = rules().enrich(&signup(Segment::Residential, Some(150))).unwrap();
        let ranked: Vec<_> = offers.iter().map(|o| (o.plan, o.promo)).collect();
        assert_eq!(ranked, [(1, Some((0, 4_000))), (0, None), (4, None)]);
    }

    #[test]
    fn business_plans_come_before_plans_for_everyone() {
        let offers = rules().enrich(&signup(Segment::Business, Some(150))).unwrap();
        let ranked: Vec<u32> = offers.iter().map(|o| o.plan).collect();
        assert_eq!(ranked, [2, 1, 3, 0]);
    }

    #[test]
    fn without_a_sign_up_day_no_promo_applies_and_max_offers_caps_the_list() {
        let offers = rules().enrich(&signup(Segment::Business, None)).unwrap();
        assert!(offers.iter().all(|o| o.promo.is_none()));
        assert_eq!(offers.iter().map(|o| o.plan).collect::<Vec<_>>(), [3, 2, 0, 1]);
    }

    #[test]
    fn the_deepest_valid_discount_wins() {
        let offers = rules().enrich(&signup(Segment::Residential, Some(350))).unwrap();
        assert!(offers.iter().all(|o| o.promo.map(|(p, _)| p) == Some(1)), "{offers:?}");
        assert_eq!(offers[0].plan, 0);
    }
}
