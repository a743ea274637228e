//! The rules: the three cheapest plans that can be delivered where the
//! customer lives, or a rejection when none can.
//!
//! Everything here is plain Rust on the catalog the host passes once at
//! `init`; edit freely, then `cargo test`, `offerd build`, `offerd test`.

/// Who signs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Residential,
    Business,
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
    /// Countries the region serves.
    pub countries: Vec<String>,
    /// At most this many offers per sign-up.
    pub max_offers: u32,
    pub plans: Vec<Plan>,
    pub metros: Vec<Metro>,
}

/// One sign-up, as the host passes it.
#[derive(Debug, Clone, Copy)]
pub struct SignUp<'a> {
    pub country: &'a str,
    pub postal_code: Option<&'a str>,
    /// Latitude and longitude, WGS 84 degrees.
    pub coordinates: Option<(f64, f64)>,
    pub segment: Segment,
}

/// One offer: a plan (index into `Catalog::plans`) at its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub plan: u32,
    pub monthly_price_minor: u64,
}

/// Why a sign-up gets no offers. Data, not a failure: a panic is a bug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    CountryNotServed(String),
    NoCoverage,
}

/// How many offers at most, whatever the catalog allows.
const OFFERS: usize = 3;

/// The rules, primed with one region's catalog.
pub struct Rules {
    catalog: Catalog,
    /// Indices into `catalog.metros`, by latitude: a coverage check reads
    /// only the band of metros that can be within reach.
    by_lat: Vec<u32>,
}

impl Rules {
    pub fn new(catalog: Catalog) -> Self {
        let mut by_lat: Vec<u32> = (0..catalog.metros.len() as u32).collect();
        by_lat.sort_by(|&a, &b| catalog.metros[a as usize].lat.total_cmp(&catalog.metros[b as usize].lat));
        Self { catalog, by_lat }
    }

    /// The cheapest deliverable plans, cheapest first.
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
            .map(|(i, plan)| Offer { plan: i as u32, monthly_price_minor: plan.monthly_price_minor })
            .collect();
        if offers.is_empty() {
            return Err(Rejection::NoCoverage);
        }
        offers.sort_by_key(|o| (o.monthly_price_minor, o.plan));
        offers.truncate(OFFERS.min(self.catalog.max_offers as usize));
        Ok(offers)
    }

    fn deliverable(&self, plan: &Plan, signup: &SignUp<'_>) -> bool {
        plan.segment.is_none_or(|s| s == signup.segment)
            && (plan.countries.is_empty() || plan.countries.iter().any(|c| c == signup.country))
            && (plan.postal_prefixes.is_empty()
                || signup
                    .postal_code
                    .is_some_and(|code| plan.postal_prefixes.iter().any(|p| code.starts_with(p.as_str()))))
            && match (plan.coverage, signup.coordinates) {
                (None, _) => true,
                (Some(coverage), Some(at)) => self.covered(coverage, at),
                (Some(_), None) => false,
            }
    }

    /// Whether a metro of at least `min_population` lies within `max_km` of `at`.
    fn covered(&self, coverage: Coverage, (lat, lon): (f64, f64)) -> bool {
        // One degree of latitude is about 111.2 km everywhere.
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

    fn plan(price: u64, segment: Option<Segment>, coverage: Option<Coverage>) -> Plan {
        Plan { segment, monthly_price_minor: price, countries: vec![], postal_prefixes: vec![], coverage }
    }

    fn rules() -> Rules {
        let city = Coverage { max_km: 30.0, min_population: 100_000 };
        Rules::new(Catalog {
            countries: vec!["DE".into(), "FR".into()],
            max_offers: 5,
            plans: vec![
                plan(5_000, None, Some(city)),                       // 0: fibre, cities only
                plan(9_000, None, None),                             // 1: satellite, anywhere
                plan(3_000, Some(Segment::Business), Some(city)),    // 2: business only
                plan(4_000, Some(Segment::Residential), Some(city)), // 3
                plan(2_000, None, Some(city)),                       // 4
            ],
            metros: vec![
                Metro { lat: 52.52, lon: 13.41, population: 3_400_000 }, // Berlin
                Metro { lat: 48.85, lon: 2.35, population: 2_100_000 },  // Paris
            ],
        })
    }

    fn at(lat: f64, lon: f64, segment: Segment) -> SignUp<'static> {
        SignUp { country: "DE", postal_code: None, coordinates: Some((lat, lon)), segment }
    }

    fn plans(offers: &[Offer]) -> Vec<u32> {
        offers.iter().map(|o| o.plan).collect()
    }

    #[test]
    fn in_a_city_the_three_cheapest_plans_of_the_segment_come_cheapest_first() {
        let offers = rules().enrich(&at(52.5, 13.4, Segment::Residential)).unwrap();
        assert_eq!(plans(&offers), [4, 3, 0]);
        let offers = rules().enrich(&at(52.5, 13.4, Segment::Business)).unwrap();
        assert_eq!(plans(&offers), [4, 2, 0]);
    }

    #[test]
    fn far_from_any_city_only_plans_without_coverage_remain() {
        let offers = rules().enrich(&at(47.0, 10.0, Segment::Residential)).unwrap();
        assert_eq!(plans(&offers), [1]);
    }

    #[test]
    fn a_country_outside_the_region_is_rejected() {
        let signup = SignUp { country: "US", ..at(40.7, -74.0, Segment::Residential) };
        assert_eq!(rules().enrich(&signup), Err(Rejection::CountryNotServed("US".into())));
    }

    #[test]
    fn no_deliverable_plan_is_no_coverage() {
        let mut rules = rules();
        rules.catalog.plans.remove(1);
        assert_eq!(rules.enrich(&at(47.0, 10.0, Segment::Residential)), Err(Rejection::NoCoverage));
    }
}
