//! Distances on the globe and a latitude-sorted index of metro areas.
//!
//! Points are kept as unit vectors, and "within d km" is decided by the
//! squared chord between them, which grows with great-circle distance: no
//! trigonometry per metro, only per sign-up. That matters most under
//! WebAssembly, where `sin` and `asin` are software routines.

use crate::catalog::Metro;

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on the unit sphere.
type Unit = [f64; 3];

fn unit(lat: f64, lon: f64) -> Unit {
    Point::new(lat, lon).unit
}

fn chord2(a: &Unit, b: &Unit) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// The squared chord of a great-circle distance.
fn chord2_for_km(km: f64) -> f64 {
    let half_angle = (km / EARTH_RADIUS_KM / 2.0).min(std::f64::consts::FRAC_PI_2);
    (2.0 * half_angle.sin()).powi(2)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    lat: f64,
    lon: f64,
    unit: Unit,
    population: u64,
}

/// Metros bucketed by whole degree of latitude, each bucket sorted by
/// longitude: a radius query binary-searches a longitude window in the few
/// bands it touches instead of scanning every metro of the region.
#[derive(Debug, Default)]
pub struct MetroIndex {
    /// Sorted by (latitude band, longitude).
    entries: Vec<Entry>,
    /// `bands[b]..bands[b + 1]`: the entries of band `b` (latitude `b - 90`).
    bands: Vec<usize>,
}

/// Latitude bands of one degree, -90 to 90 inclusive (the pole gets its own).
const BANDS: usize = 181;

fn band_of(lat: f64) -> usize {
    ((lat.floor() + 90.0) as usize).min(BANDS - 1)
}

impl MetroIndex {
    pub fn new(metros: &[Metro]) -> Self {
        let mut entries: Vec<Entry> = metros
            .iter()
            .map(|m| Entry { lat: m.lat, lon: m.lon, unit: unit(m.lat, m.lon), population: m.population })
            .collect();
        entries.sort_by(|a, b| band_of(a.lat).cmp(&band_of(b.lat)).then(a.lon.total_cmp(&b.lon)));
        let bands = (0..=BANDS).map(|b| entries.partition_point(|e| band_of(e.lat) < b)).collect();
        Self { entries, bands }
    }

    /// Whether a metro of at least `min_population` lies within `radius` of
    /// `at`. Stops at the first: a sign-up in a dense region costs no more
    /// than one in a sparse one. No trigonometry per call: it is in
    /// [`Point`] and [`Radius`], worked out once.
    pub fn any_within(&self, at: &Point, radius: &Radius, min_population: u64) -> bool {
        // Widest longitude difference inside a spherical cap of angular
        // radius r around latitude φ: asin(x) with x = sin r / cos φ, or
        // every longitude when the cap reaches a pole. Bounded above by
        // x / √(1 − x²) (= tan(asin x)): wider by at most 1.2 % for caps of
        // 200 km up to 80° of latitude, which costs a metro comparison or
        // two, while a square root is one instruction where `asin` is a
        // software routine under WebAssembly. A hair wider for rounding.
        let lon_span = if at.phi.abs() + radius.angle >= std::f64::consts::FRAC_PI_2 {
            180.0
        } else {
            let x = radius.sin_angle / at.cos_phi;
            at_most((x / (1.0 - x * x).sqrt()).to_degrees() * 1.0001 + 1e-9, 180.0)
        };
        let (lat, lon) = (at.lat, at.lon);
        let (west, east) = (lon - lon_span, lon + lon_span);
        // Longitude windows, split where they cross the antimeridian.
        let mut windows = [(at_least(west, -180.0), at_most(east, 180.0)), (f64::NAN, f64::NAN), (f64::NAN, f64::NAN)];
        if west < -180.0 {
            windows[1] = (west + 360.0, 180.0);
        }
        if east > 180.0 {
            windows[2] = (-180.0, east - 360.0);
        }
        for band in band_of(at_least(lat - radius.lat_span, -90.0))..=band_of(at_most(lat + radius.lat_span, 90.0)) {
            let entries = &self.entries[self.bands[band]..self.bands[band + 1]];
            for (from, to) in windows.iter().filter(|w| !w.0.is_nan()) {
                let start = entries.partition_point(|e| e.lon < *from);
                if entries[start..]
                    .iter()
                    .take_while(|e| e.lon <= *to)
                    .any(|m| m.population >= min_population && chord2(&at.unit, &m.unit) <= radius.chord2)
                {
                    return true;
                }
            }
        }
        false
    }
}

/// `f64::min` and `max` against a limit, NaN giving the limit as they do:
/// under WebAssembly those are calls (their NaN rules are not the
/// instruction's), these a comparison.
fn at_most(x: f64, limit: f64) -> f64 {
    if x <= limit { x } else { limit }
}

fn at_least(x: f64, limit: f64) -> f64 {
    if x >= limit { x } else { limit }
}

/// A place to query around: its unit vector and latitude's cosine, worked
/// out once per sign-up however many radii are asked about. (Under
/// WebAssembly `sin`, `cos` and `asin` are software routines, tens of
/// nanoseconds each.)
#[derive(Debug, Clone, Copy)]
pub struct Point {
    lat: f64,
    lon: f64,
    /// Latitude in radians.
    phi: f64,
    cos_phi: f64,
    unit: Unit,
}

impl Point {
    pub fn new(lat: f64, lon: f64) -> Self {
        let phi = lat.to_radians();
        let (sin_phi, cos_phi) = (phi.sin(), phi.cos());
        let lambda = lon.to_radians();
        Self { lat, lon, phi, cos_phi, unit: [cos_phi * lambda.cos(), cos_phi * lambda.sin(), sin_phi] }
    }
}

/// A query radius, worked out once per catalog.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Radius {
    /// The squared chord of the radius on the unit sphere.
    chord2: f64,
    /// The radius as an angle, radians, and its sine.
    angle: f64,
    sin_angle: f64,
    /// Degrees of latitude the radius spans, a hair wider for rounding.
    lat_span: f64,
}

impl Radius {
    pub fn km(km: f64) -> Self {
        let angle = km / EARTH_RADIUS_KM;
        Self { chord2: chord2_for_km(km), angle, sin_angle: angle.sin(), lat_span: angle.to_degrees() * 1.0001 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(index: &MetroIndex, lat: f64, lon: f64, km: f64, min_population: u64) -> bool {
        index.any_within(&Point::new(lat, lon), &Radius::km(km), min_population)
    }

    /// Independent reference: the haversine formula.
    fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let a =
            ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
    }

    #[test]
    fn chord_and_haversine_agree_on_what_is_within_a_radius() {
        let berlin = (52.52, 13.405);
        for (lat, lon) in [(48.137, 11.575), (52.39, 13.06), (52.75, 13.95), (-33.87, 151.21)] {
            let km = haversine_km(berlin.0, berlin.1, lat, lon);
            let c = chord2(&unit(berlin.0, berlin.1), &unit(lat, lon));
            assert!(c <= chord2_for_km(km * 1.0001) && c >= chord2_for_km(km * 0.9999), "{lat},{lon}: {km} km");
        }
        assert!((haversine_km(52.52, 13.405, 48.137, 11.575) - 504.0).abs() < 3.0);
    }

    #[test]
    fn index_finds_only_metros_inside_the_radius_and_large_enough() {
        let metros = [
            Metro { lat: 52.52, lon: 13.405, population: 3_600_000 }, // Berlin
            Metro { lat: 52.39, lon: 13.06, population: 180_000 },    // Potsdam, ~27 km
            Metro { lat: 48.137, lon: 11.575, population: 1_500_000 }, // Munich
        ];
        let index = MetroIndex::new(&metros);
        // From Potsdam's centre: Potsdam at 0 km, Berlin at ~27 km.
        assert!(within(&index, 52.39, 13.06, 5.0, 100_000));
        assert!(!within(&index, 52.39, 13.06, 5.0, 1_000_000));
        assert!(within(&index, 52.39, 13.06, 30.0, 1_000_000));
        assert!(!within(&index, 52.39, 13.06, 20.0, 1_000_000));
        assert!(within(&index, 52.39, 13.06, 520.0, 1_500_000));
        assert!(!within(&index, 52.39, 13.06, 520.0, 4_000_000));
    }

    /// Against a brute-force scan, on a dense random field and random queries.
    #[test]
    fn index_agrees_with_a_full_scan() {
        let mut seed = 42u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let metros: Vec<Metro> = (0..3000)
            .map(|i| Metro { lat: next() * 180.0 - 90.0, lon: next() * 360.0 - 180.0, population: i })
            .collect();
        let index = MetroIndex::new(&metros);
        let (mut hits, mut misses) = (0, 0);
        for _ in 0..2000 {
            let (lat, lon, radius) = (next() * 180.0 - 90.0, next() * 360.0 - 180.0, next() * 800.0);
            let min_population = (next() * 3000.0) as u64;
            let got = within(&index, lat, lon, radius, min_population);
            let inside = |factor: f64| {
                metros
                    .iter()
                    .any(|m| m.population >= min_population && haversine_km(lat, lon, m.lat, m.lon) <= radius * factor)
            };
            // Within rounding: found when one is surely inside, not when none is near.
            assert!(!inside(0.9999) || got, "{lat},{lon} r={radius} p={min_population}: missed");
            assert!(inside(1.0001) || !got, "{lat},{lon} r={radius} p={min_population}: none inside");
            if got { hits += 1 } else { misses += 1 }
        }
        assert!(hits > 100 && misses > 100, "{hits} hits, {misses} misses: the test covers both");
    }

    #[test]
    fn queries_wrap_across_the_antimeridian() {
        let index = MetroIndex::new(&[Metro { lat: 0.0, lon: -179.9, population: 1 }]);
        assert!(within(&index, 0.0, 179.9, 25.0, 1));
    }
}
