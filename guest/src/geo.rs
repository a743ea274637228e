//! Distances on the globe and a latitude-sorted index of metro areas.
//!
//! Points are kept as unit vectors, and "within d km" is decided by the
//! squared chord between them, which grows with great-circle distance: no
//! trigonometry per metro, only per sign-up. That matters most under
//! WebAssembly, where `sin` and `asin` are software routines.

use crate::catalog::Metro;

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Length of one degree of latitude, km; bounds the band a query scans.
const KM_PER_DEGREE_LAT: f64 = 111.2;

/// A point on the unit sphere.
type Unit = [f64; 3];

fn unit(lat: f64, lon: f64) -> Unit {
    let (phi, lambda) = (lat.to_radians(), lon.to_radians());
    [phi.cos() * lambda.cos(), phi.cos() * lambda.sin(), phi.sin()]
}

fn chord2(a: &Unit, b: &Unit) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// The squared chord of a great-circle distance: compare with [`Nearby::chord2`].
pub fn chord2_for_km(km: f64) -> f64 {
    let half_angle = (km / EARTH_RADIUS_KM / 2.0).min(std::f64::consts::FRAC_PI_2);
    (2.0 * half_angle.sin()).powi(2)
}

/// A metro near a sign-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearby {
    /// Squared chord to the sign-up on the unit sphere.
    pub chord2: f64,
    pub population: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    lat: f64,
    lon: f64,
    unit: Unit,
    population: u64,
}

/// Metros sorted by latitude, so a radius query scans one latitude band
/// instead of the whole region.
#[derive(Debug, Default)]
pub struct MetroIndex {
    by_lat: Vec<Entry>,
}

impl MetroIndex {
    pub fn new(metros: &[Metro]) -> Self {
        let mut by_lat: Vec<Entry> = metros
            .iter()
            .map(|m| Entry { lat: m.lat, lon: m.lon, unit: unit(m.lat, m.lon), population: m.population })
            .collect();
        by_lat.sort_by(|a, b| a.lat.total_cmp(&b.lat));
        Self { by_lat }
    }

    /// Every metro within `radius_km` of the point, appended to `out`.
    pub fn within(&self, lat: f64, lon: f64, radius_km: f64, out: &mut Vec<Nearby>) {
        let here = unit(lat, lon);
        let limit = chord2_for_km(radius_km);
        let band = radius_km / KM_PER_DEGREE_LAT;
        // A metro more than `lon_band` degrees of longitude away cannot be
        // inside the radius: skip it before any arithmetic on the sphere.
        // Near the poles the band covers every longitude.
        let lon_band = band / lat.to_radians().cos().max(0.01) * 1.05;
        let start = self.by_lat.partition_point(|m| m.lat < lat - band);
        for m in self.by_lat[start..].iter().take_while(|m| m.lat <= lat + band) {
            let dlon = (m.lon - lon).abs();
            if dlon.min(360.0 - dlon) > lon_band {
                continue;
            }
            let chord2 = chord2(&here, &m.unit);
            if chord2 <= limit {
                out.push(Nearby { chord2, population: m.population });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn index_finds_only_metros_inside_the_radius() {
        let metros = [
            Metro { lat: 52.52, lon: 13.405, population: 3_600_000 }, // Berlin
            Metro { lat: 52.39, lon: 13.06, population: 180_000 },    // Potsdam, ~27 km
            Metro { lat: 48.137, lon: 11.575, population: 1_500_000 }, // Munich
        ];
        let index = MetroIndex::new(&metros);
        let mut out = Vec::new();
        index.within(52.52, 13.40, 30.0, &mut out);
        let mut pops: Vec<u64> = out.iter().map(|n| n.population).collect();
        pops.sort();
        assert_eq!(pops, vec![180_000, 3_600_000]);
        out.clear();
        index.within(52.52, 13.40, 20.0, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn queries_wrap_across_the_antimeridian() {
        let index = MetroIndex::new(&[Metro { lat: 0.0, lon: -179.9, population: 1 }]);
        let mut out = Vec::new();
        index.within(0.0, 179.9, 25.0, &mut out);
        assert_eq!(out.len(), 1);
    }
}
