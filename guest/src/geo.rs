//! Distances on the globe and a latitude-sorted index of metro areas.

use crate::catalog::Metro;

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Length of one degree of latitude, km; bounds the band a query scans.
const KM_PER_DEGREE_LAT: f64 = 111.2;

/// Great-circle distance by the haversine formula, km.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// A metro near a sign-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearby {
    pub km: f64,
    pub population: u64,
}

/// Metros sorted by latitude, so a radius query scans one latitude band
/// instead of the whole region.
#[derive(Debug, Default)]
pub struct MetroIndex {
    by_lat: Vec<Metro>,
}

impl MetroIndex {
    pub fn new(metros: &[Metro]) -> Self {
        let mut by_lat = metros.to_vec();
        by_lat.sort_by(|a, b| a.lat.total_cmp(&b.lat));
        Self { by_lat }
    }

    /// Every metro within `radius_km` of the point, appended to `out`.
    pub fn within(&self, lat: f64, lon: f64, radius_km: f64, out: &mut Vec<Nearby>) {
        let band = radius_km / KM_PER_DEGREE_LAT;
        let start = self.by_lat.partition_point(|m| m.lat < lat - band);
        for m in self.by_lat[start..].iter().take_while(|m| m.lat <= lat + band) {
            let km = distance_km(lat, lon, m.lat, m.lon);
            if km <= radius_km {
                out.push(Nearby { km, population: m.population });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berlin_to_munich_is_about_504_km() {
        let km = distance_km(52.52, 13.405, 48.137, 11.575);
        assert!((km - 504.0).abs() < 3.0, "{km}");
    }

    #[test]
    fn distance_wraps_across_the_antimeridian() {
        let km = distance_km(0.0, 179.9, 0.0, -179.9);
        assert!(km < 25.0, "{km}");
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
}
