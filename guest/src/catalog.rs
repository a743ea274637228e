//! What a module knows about its region, and the checks `init` makes on it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Residential,
    Business,
}

/// Access technologies, best first: the order is the ranking tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Technology {
    Fiber,
    Cable,
    Dsl,
    FixedWireless,
    Satellite,
}

/// Deliverable within `max_km` of a metro with at least `min_population` people.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coverage {
    pub max_km: f64,
    pub min_population: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub technology: Technology,
    /// `None`: both segments.
    pub segment: Option<Segment>,
    pub down_mbps: u32,
    pub up_mbps: u32,
    pub monthly_price_minor: u64,
    /// Empty: every country of the region.
    pub countries: Vec<String>,
    /// Empty: any postal code, or none.
    pub postal_prefixes: Vec<String>,
    /// `None`: anywhere in the region.
    pub coverage: Option<Coverage>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metro {
    pub lat: f64,
    pub lon: f64,
    pub population: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Promo {
    pub id: String,
    pub name: String,
    pub percent_off: u8,
    pub months: u8,
    /// Empty: every technology.
    pub technologies: Vec<Technology>,
    pub segment: Option<Segment>,
    pub valid_from_day: i32,
    pub valid_until_day: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    pub region: String,
    pub currency: String,
    pub countries: Vec<String>,
    pub max_offers: u32,
    pub plans: Vec<Plan>,
    pub metros: Vec<Metro>,
    pub promos: Vec<Promo>,
}

/// A catalog these rules cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    /// Path of the offending field, e.g. `plans[3].coverage.max_km`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for CatalogError {}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> CatalogError {
    CatalogError { field: field.into(), reason: reason.into() }
}

impl Catalog {
    /// The rules rely on these; the host validates the file format separately.
    pub(crate) fn check(&self) -> Result<(), CatalogError> {
        if self.plans.is_empty() {
            return Err(refuse("plans", "no plans: every region needs at least a satellite fallback"));
        }
        if self.max_offers == 0 {
            return Err(refuse("max_offers", "must be at least 1"));
        }
        if !self.plans.iter().any(|p| p.coverage.is_none() && p.countries.is_empty() && p.postal_prefixes.is_empty()) {
            return Err(refuse(
                "plans",
                "no plan without coverage limits: the region needs a fallback deliverable anywhere",
            ));
        }
        for (i, plan) in self.plans.iter().enumerate() {
            if let Some(c) = plan.coverage
                && !(c.max_km.is_finite() && c.max_km > 0.0)
            {
                return Err(refuse(
                    format!("plans[{i}].coverage.max_km"),
                    format!("{} is not a positive distance", c.max_km),
                ));
            }
            if plan.down_mbps == 0 || plan.up_mbps == 0 {
                return Err(refuse(format!("plans[{i}]"), "speeds must be positive"));
            }
        }
        for (i, m) in self.metros.iter().enumerate() {
            if !(-90.0..=90.0).contains(&m.lat) || !(-180.0..=180.0).contains(&m.lon) {
                return Err(refuse(format!("metros[{i}]"), format!("({}, {}) is not a coordinate", m.lat, m.lon)));
            }
        }
        for (i, p) in self.promos.iter().enumerate() {
            if !(1..=100).contains(&p.percent_off) {
                return Err(refuse(format!("promos[{i}].percent_off"), format!("{} is not in 1..=100", p.percent_off)));
            }
            if p.valid_from_day > p.valid_until_day {
                return Err(refuse(format!("promos[{i}]"), "valid_from is after valid_until"));
            }
        }
        Ok(())
    }
}
