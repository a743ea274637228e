use std::collections::HashSet;

use super::*;

fn repo_catalogs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalogs")
}

/// A copy of the real catalog directory, to break one thing at a time.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_catalogs()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn every_country_of_geonames_routes_to_one_of_at_least_four_regions() {
    let catalogs = Catalogs::load(&repo_catalogs()).unwrap();
    let csv = std::fs::read_to_string(repo_catalogs().join("geonames/countries.csv")).unwrap();
    let codes: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(codes.len(), 252);
    for code in &codes {
        let region = catalogs.route(code).unwrap_or_else(|| panic!("{code} is not routed"));
        assert!(catalogs.region(region).unwrap().countries.iter().any(|c| c == code));
    }
    let regions: HashSet<&str> = codes.iter().filter_map(|c| catalogs.route(c)).collect();
    assert!(regions.len() >= 4, "{regions:?}");
}

#[test]
fn every_region_has_twenty_plans_and_real_metros() {
    let catalogs = Catalogs::load(&repo_catalogs()).unwrap();
    for c in catalogs.regions() {
        assert!(c.plans.len() >= 20, "{}: {} plans", c.region, c.plans.len());
        assert!(c.metros.len() >= 100, "{}: {} metros", c.region, c.metros.len());
        let techs: std::collections::BTreeSet<Technology> = c.plans.iter().map(|p| p.technology).collect();
        assert_eq!(techs.len(), 5, "{}: {techs:?}", c.region);
    }
    let europe = catalogs.region("europe").unwrap();
    assert!(europe.metros.iter().any(|m| m.name == "Berlin" && m.country == "DE"));
}

#[test]
fn single_region_file_takes_its_countries_from_regions_toml() {
    let c = Catalogs::load_region_file(&repo_catalogs().join("europe.toml")).unwrap();
    assert!(c.countries.iter().any(|x| x == "DE"));
    assert!(!c.countries.iter().any(|x| x == "US"));
}

/// Each broken file is refused with the file, the key and the reason.
#[test]
fn bad_catalogs_name_file_key_and_reason() {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "europe.toml",
            "max_offers = 5",
            "max_offers = 5\nfavourite_colour = \"blue\"",
            "favourite_colour",
            "unknown field",
        ),
        ("europe.toml", "down_mbps = 300\n", "down_mbps = \"fast\"\n", "plans[0].down_mbps", "invalid type"),
        ("europe.toml", "id = \"eu-fiber-1000\"", "id = \"eu-fiber-300\"", "plans[1].id", "used twice"),
        ("europe.toml", "currency = \"EUR\"", "currency = \"euro\"", "currency", "ISO 4217"),
        (
            "europe.toml",
            "technology = \"fiber\"",
            "technology = \"carrier-pigeon\"",
            "plans[0].technology",
            "unknown variant",
        ),
        ("europe.toml", "countries = [\"RU\"]", "countries = [\"US\"]", "plans[19].countries", "not routed to europe"),
        ("europe.toml", "percent_off = 25", "percent_off = 0", "promos[0].percent_off", "1..=100"),
        (
            "europe.toml",
            "valid_from = \"2026-01-01\"",
            "valid_from = \"2026-13-01\"",
            "promos[0].valid_from",
            "YYYY-MM-DD",
        ),
        ("europe.toml", "max_km = 15.0", "max_km = -15.0", "plans[0].coverage.max_km", "distance"),
        (
            "regions.toml",
            "countries = [\"AD\"",
            "countries = [\"US\", \"AD\"",
            "regions.north-america.countries[38]",
            "US is already routed to europe",
        ),
        (
            "regions.toml",
            "countries = [\"AD\"",
            "countries = [\"Andorra\", \"AD\"",
            "regions.europe.countries[0]",
            "alpha-2",
        ),
    ];
    for (file, from, to, key, reason) in cases {
        let dir = scratch();
        edit(dir.path(), file, from, to);
        let err = Catalogs::load(dir.path()).unwrap_err();
        assert!(err.file.ends_with(file), "{to}: {err}");
        assert_eq!(&err.key, key, "{to}: {err}");
        assert!(err.reason.contains(reason), "{to}: {err}");
    }
}

#[test]
fn a_region_without_its_catalog_file_is_refused() {
    let dir = scratch();
    std::fs::remove_file(dir.path().join("asia-pacific.toml")).unwrap();
    let err = Catalogs::load(dir.path()).unwrap_err();
    assert!(err.file.ends_with("asia-pacific.toml") && err.reason.contains("cannot read"), "{err}");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The real europe catalog with bytes overwritten, lines dropped or
        /// the file cut short: loaded or refused with file and key, never a
        /// panic; what loads keeps the catalog's invariants.
        #[test]
        fn a_damaged_catalog_is_loaded_or_refused(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            drop_line in proptest::option::of(any::<usize>()),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let dir = scratch();
            let path = dir.path().join("europe.toml");
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, byte) in edits {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            if let Some(line) = drop_line {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                let skip = line % lines.len();
                bytes = lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect::<Vec<_>>().join("\n").into_bytes();
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            std::fs::write(&path, &bytes).unwrap();
            match Catalogs::load_region_file(&path) {
                Ok(c) => {
                    prop_assert!(!c.plans.is_empty());
                    prop_assert!(c.max_offers >= 1);
                }
                Err(e) => prop_assert!(e.file == path || e.file.ends_with("regions.toml"), "{e}"),
            }
        }
    }
}
