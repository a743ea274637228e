//! Sales regions and their plan catalogs, as loaded from a catalog directory:
//! `regions.toml` routes countries to regions, `<region>.toml` holds each
//! region's plans, metro areas and promos. Everything is validated on load; a
//! bad file is refused with its path, the offending key and the reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config_file::{ConfigError, error, parse};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Segment {
    Residential,
    Business,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Technology {
    Fiber,
    Cable,
    Dsl,
    FixedWireless,
    Satellite,
}

impl Technology {
    pub fn as_str(self) -> &'static str {
        match self {
            Technology::Fiber => "fiber",
            Technology::Cable => "cable",
            Technology::Dsl => "dsl",
            Technology::FixedWireless => "fixed-wireless",
            Technology::Satellite => "satellite",
        }
    }
}

/// Plans are deliverable within `max_km` of a metro of `min_population`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    pub max_km: f64,
    pub min_population: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Unique in the catalog; appears in every offer.
    pub id: String,
    /// Shown to the customer.
    pub name: String,
    pub technology: Technology,
    /// Absent: offered to both segments.
    pub segment: Option<Segment>,
    pub down_mbps: u32,
    pub up_mbps: u32,
    /// List price per month, minor units of the catalog's currency.
    pub monthly_price_minor: u64,
    /// Countries where sold; empty: the whole region.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Postal-code prefixes where sold; empty: anywhere.
    #[serde(default)]
    pub postal_prefixes: Vec<String>,
    /// Absent: anywhere in the region.
    pub coverage: Option<Coverage>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metro {
    /// For people reading the file; the rules see only place and size.
    pub name: String,
    pub country: String,
    pub lat: f64,
    pub lon: f64,
    pub population: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promo {
    pub id: String,
    pub name: String,
    /// 1..=100.
    pub percent_off: u8,
    /// How many months the discount lasts, at least 1.
    pub months: u8,
    /// Empty: every technology.
    #[serde(default)]
    pub technologies: Vec<Technology>,
    /// Absent: both segments.
    pub segment: Option<Segment>,
    /// First day of validity, `YYYY-MM-DD` (UTC), inclusive.
    #[serde(deserialize_with = "day::deserialize")]
    pub valid_from: i32,
    /// Last day of validity, inclusive.
    #[serde(deserialize_with = "day::deserialize")]
    pub valid_until: i32,
}

/// One region's catalog file, `<region>.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    /// Must equal the file name's stem.
    region: String,
    /// ISO 4217 code of every price.
    currency: String,
    /// Most offers one sign-up receives.
    max_offers: u32,
    #[serde(default)]
    metros: Vec<Metro>,
    plans: Vec<Plan>,
    #[serde(default)]
    promos: Vec<Promo>,
}

/// A region's validated catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionCatalog {
    pub region: String,
    pub currency: String,
    /// Countries routed to this region by `regions.toml`.
    pub countries: Vec<String>,
    pub max_offers: u32,
    pub plans: Vec<Plan>,
    pub metros: Vec<Metro>,
    pub promos: Vec<Promo>,
    /// Where it was loaded from, for messages.
    pub file: PathBuf,
}

/// `regions.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    regions: BTreeMap<String, RegionEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    /// ISO 3166-1 alpha-2 codes routed to this region.
    countries: Vec<String>,
}

/// Every region's catalog and the country routing, from one directory.
#[derive(Debug, Clone)]
pub struct Catalogs {
    regions: BTreeMap<String, RegionCatalog>,
    /// Country code to region name.
    routes: HashMap<String, String>,
}

impl Catalogs {
    /// Loads `regions.toml` and every `<region>.toml` it names.
    ///
    /// # Errors
    /// The first file, key and reason that make the directory unusable.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let routing_file = dir.join("regions.toml");
        let routing: RegionsFile = parse(&routing_file)?;
        let mut routes = HashMap::new();
        for (region, entry) in &routing.regions {
            for (i, country) in entry.countries.iter().enumerate() {
                let key = format!("regions.{region}.countries[{i}]");
                check_country_code(country).map_err(|reason| error(&routing_file, &key, reason))?;
                if let Some(other) = routes.insert(country.clone(), region.clone()) {
                    return Err(error(&routing_file, &key, format!("{country} is already routed to {other}")));
                }
            }
        }
        let mut regions = BTreeMap::new();
        for (region, entry) in routing.regions {
            let file = dir.join(format!("{region}.toml"));
            let catalog = load_region(&file, &region, entry.countries)?;
            regions.insert(region, catalog);
        }
        if regions.is_empty() {
            return Err(error(&routing_file, "regions", "no region is defined"));
        }
        Ok(Self { regions, routes })
    }

    /// Loads one region's catalog, taking its countries from the
    /// `regions.toml` that sits beside it.
    ///
    /// # Errors
    /// As [`Catalogs::load`], for the two files concerned.
    pub fn load_region_file(file: &Path) -> Result<RegionCatalog, ConfigError> {
        let region = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let routing_file = file.with_file_name("regions.toml");
        let mut routing: RegionsFile = parse(&routing_file)?;
        let entry = routing.regions.remove(&region).ok_or_else(|| {
            error(&routing_file, "regions", format!("no region {region:?} (named by {})", file.display()))
        })?;
        load_region(file, &region, entry.countries)
    }

    /// A catalog for `region` from the bytes of a `<region>.toml` (fetched
    /// from a registry, say), routed as this set routes the region; `file`
    /// names the bytes in errors.
    ///
    /// # Errors
    /// The region is not defined here, or the bytes are not a valid catalog for it.
    pub fn parse_region(&self, region: &str, file: &Path, bytes: &[u8]) -> Result<RegionCatalog, ConfigError> {
        let countries = self
            .regions
            .get(region)
            .map(|c| c.countries.clone())
            .ok_or_else(|| error(file, "region", format!("{region:?} is not defined in regions.toml")))?;
        check_region(file, crate::config_file::parse_bytes(file, bytes)?, region, countries)
    }

    /// The region a country is routed to.
    pub fn route(&self, country: &str) -> Option<&str> {
        self.routes.get(country).map(String::as_str)
    }

    pub fn region(&self, name: &str) -> Option<&RegionCatalog> {
        self.regions.get(name)
    }

    pub fn regions(&self) -> impl Iterator<Item = &RegionCatalog> {
        self.regions.values()
    }
}

fn check_country_code(code: &str) -> Result<(), String> {
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!("{code:?} is not an ISO 3166-1 alpha-2 code"))
    }
}

fn load_region(file: &Path, region: &str, countries: Vec<String>) -> Result<RegionCatalog, ConfigError> {
    check_region(file, parse(file)?, region, countries)
}

fn check_region(
    file: &Path,
    parsed: CatalogFile,
    region: &str,
    countries: Vec<String>,
) -> Result<RegionCatalog, ConfigError> {
    let fail = |key: String, reason: String| Err(error(file, key, reason));
    if parsed.region != region {
        return fail("region".into(), format!("{:?} does not match the file name {region:?}", parsed.region));
    }
    if !(parsed.currency.len() == 3 && parsed.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return fail("currency".into(), format!("{:?} is not an ISO 4217 code", parsed.currency));
    }
    if !(1..=50).contains(&parsed.max_offers) {
        return fail("max_offers".into(), format!("{} is not in 1..=50", parsed.max_offers));
    }
    if parsed.plans.is_empty() {
        return fail("plans".into(), "a region needs at least one plan".into());
    }
    let served: HashSet<&str> = countries.iter().map(String::as_str).collect();
    let mut ids = HashSet::new();
    for (i, p) in parsed.plans.iter().enumerate() {
        let key = |field: &str| format!("plans[{i}].{field}");
        if p.id.is_empty() || !ids.insert(p.id.as_str()) {
            return fail(key("id"), format!("{:?} is empty or used twice", p.id));
        }
        if p.name.trim().is_empty() {
            return fail(key("name"), "must not be empty".into());
        }
        if p.down_mbps == 0 || p.up_mbps == 0 {
            return fail(key("down_mbps"), "speeds must be positive".into());
        }
        if p.monthly_price_minor == 0 {
            return fail(key("monthly_price_minor"), "must be positive".into());
        }
        if let Some(c) = p.countries.iter().find(|c| !served.contains(c.as_str())) {
            return fail(key("countries"), format!("{c:?} is not routed to {region}"));
        }
        if let Some(prefix) =
            p.postal_prefixes.iter().find(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return fail(key("postal_prefixes"), format!("{prefix:?} is not a postal-code prefix"));
        }
        if let Some(c) = p.coverage
            && !(c.max_km.is_finite() && c.max_km > 0.0 && c.max_km <= 20_000.0)
        {
            return fail(key("coverage.max_km"), format!("{} is not a distance in (0, 20000] km", c.max_km));
        }
    }
    for (i, m) in parsed.metros.iter().enumerate() {
        if !(-90.0..=90.0).contains(&m.lat) || !(-180.0..=180.0).contains(&m.lon) {
            return fail(format!("metros[{i}]"), format!("({}, {}) is not a coordinate", m.lat, m.lon));
        }
    }
    let mut promo_ids = HashSet::new();
    for (i, p) in parsed.promos.iter().enumerate() {
        let key = |field: &str| format!("promos[{i}].{field}");
        if p.id.is_empty() || !promo_ids.insert(p.id.as_str()) {
            return fail(key("id"), format!("{:?} is empty or used twice", p.id));
        }
        if !(1..=100).contains(&p.percent_off) {
            return fail(key("percent_off"), format!("{} is not in 1..=100", p.percent_off));
        }
        if p.months == 0 {
            return fail(key("months"), "must be at least 1".into());
        }
        if p.valid_from > p.valid_until {
            return fail(key("valid_until"), "is before valid_from".into());
        }
    }
    Ok(RegionCatalog {
        region: parsed.region,
        currency: parsed.currency,
        countries,
        max_offers: parsed.max_offers,
        plans: parsed.plans,
        metros: parsed.metros,
        promos: parsed.promos,
        file: file.to_path_buf(),
    })
}

/// Calendar days as days since 1970-01-01, the unit the contract uses.
pub(crate) mod day {
    use serde::{Deserialize, Deserializer, de::Error};

    /// Days since 1970-01-01 of a UTC date.
    pub fn from_date(date: time::Date) -> i32 {
        date.to_julian_day()
            - time::Date::from_calendar_date(1970, time::Month::January, 1).map_or(0, |d| d.to_julian_day())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<i32, D::Error> {
        let text = String::deserialize(de)?;
        let format = time::format_description::well_known::Iso8601::DATE;
        let date = time::Date::parse(&text, &format)
            .map_err(|e| D::Error::custom(format!("{text:?} is not a YYYY-MM-DD date: {e}")))?;
        Ok(from_date(date))
    }
}

#[cfg(test)]
mod tests;
