//! Realistic sign-ups for demos and benchmarks: cities drawn by population
//! from GeoNames, coordinates scattered around them, a share of businesses,
//! and, on request, malformed records of every kind the host must survive.

use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

/// A row of `cities15000.csv`.
#[derive(Deserialize)]
pub struct City {
    pub name: String,
    pub country: String,
    pub lat: f64,
    pub lon: f64,
    pub population: u64,
}

/// Every city of a GeoNames `cities15000.csv`.
///
/// # Errors
/// The file is missing or malformed.
pub fn cities(cities_csv: &Path) -> Result<Vec<City>> {
    crate::read_csv(cities_csv)
}

/// Draws sign-ups from the cities of `cities15000.csv`.
pub struct Generator {
    cities: Vec<City>,
    /// Running population totals, for drawing a city by population.
    cumulative: Vec<u64>,
    rng: fastrand::Rng,
    next_user: u64,
}

/// Records that are wrong in one way each, in the order they are emitted.
const MALFORMED: &[&str] = &[
    "not json at all",
    r#"{"location": {"country": "DE"}}"#,
    r#"{"user_id": "", "location": {"country": "FR"}}"#,
    r#"{"user_id": "bad-country", "location": {"country": "Atlantis"}}"#,
    r#"{"user_id": "half-coordinates", "location": {"country": "IT", "lat": 41.9}}"#,
    r#"{"user_id": "off-the-map", "location": {"country": "ES", "lat": 140.0, "lon": 3.0}}"#,
    r#"{"user_id": "unknown-country", "location": {"country": "ZZ"}}"#,
];

impl Generator {
    /// # Errors
    /// The cities file is missing or malformed.
    pub fn new(cities_csv: &Path, seed: u64) -> Result<Self> {
        let cities = cities(cities_csv)?;
        let cumulative = cities
            .iter()
            .scan(0u64, |total, c| {
                *total += c.population;
                Some(*total)
            })
            .collect();
        Ok(Self { cities, cumulative, rng: fastrand::Rng::with_seed(seed), next_user: 0 })
    }

    /// One valid sign-up as a JSON line (no newline), about 300 bytes.
    pub fn signup(&mut self) -> String {
        let total = *self.cumulative.last().expect("the cities file has rows");
        let pick = self.rng.u64(0..total);
        let city = &self.cities[self.cumulative.partition_point(|&c| c <= pick)];
        self.next_user += 1;
        // Within about 40 km of the centre: suburbs and villages get fewer technologies.
        let lat = (city.lat + (self.rng.f64() - 0.5) * 0.7).clamp(-90.0, 90.0);
        let lon = (city.lon + (self.rng.f64() - 0.5) * 0.7).clamp(-180.0, 180.0);
        let segment = if self.rng.u8(0..10) == 0 { "business" } else { "residential" };
        let postal = format!("{:05}", self.rng.u32(0..100_000));
        let minute = self.rng.u32(0..1440);
        format!(
            r#"{{"user_id":"u-{:08}","email":"user{}@example.com","location":{{"country":"{}","city":{},"postal_code":"{postal}","lat":{lat:.5},"lon":{lon:.5}}},"segment":"{segment}","signed_up_at":"2026-11-25T{:02}:{:02}:00Z","channel":"web","marketing_opt_in":false,"referrer":"newsletter"}}"#,
            self.next_user,
            self.next_user,
            city.country,
            serde_json::to_string(&city.name).expect("a string always serialises"),
            minute / 60,
            minute % 60,
        )
    }

    /// `count` sign-ups; every `malformed_every`-th (if any) is broken on purpose.
    pub fn batch(&mut self, count: usize, malformed_every: Option<usize>) -> Vec<String> {
        (1..=count)
            .map(|i| match malformed_every {
                Some(n) if i % n == 0 => MALFORMED[(i / n) % MALFORMED.len()].to_owned(),
                _ => self.signup(),
            })
            .collect()
    }
}
