//! `offerd new-rule DIR`: a standalone rule crate that builds, tests and
//! publishes with nothing but cargo and offerd: the contract from this
//! binary, a small real rule with native unit tests, the catalogs, golden
//! cases that pass, and sample sign-ups for `offerd diff`.
//!
//! The cases are computed by the template's own rules, compiled into offerd
//! from the very file the crate gets, on the catalogs the crate gets: they
//! pass by construction, and `offerd test` on the built module proves the
//! component adapter and the engine agree with the native logic.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::catalog::{Catalogs, RegionCatalog};

#[path = "../../templates/new-rule/src/rules.rs"]
mod template_rules;

use template_rules as rules;

/// The crate's files: (path, contents); `{name}` is replaced by the crate name.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/new-rule/Cargo.toml.in")),
    ("README.md", include_str!("../../templates/new-rule/README.md.in")),
    (".gitignore", include_str!("../../templates/new-rule/gitignore.in")),
    ("ci/offer-rules.yml", include_str!("../../templates/new-rule/ci/offer-rules.yml")),
    ("src/lib.rs", include_str!("../../templates/new-rule/src/lib.rs")),
    ("src/rules.rs", include_str!("../../templates/new-rule/src/rules.rs")),
    ("src/component.rs", include_str!("../../templates/new-rule/src/component.rs")),
];

/// The stock catalogs (GeoNames-derived, CC BY 4.0), for crates created without `--catalogs`.
const STOCK_CATALOGS: &[(&str, &str)] = &[
    ("regions.toml", include_str!("../../../catalogs/regions.toml")),
    ("asia-pacific.toml", include_str!("../../../catalogs/asia-pacific.toml")),
    ("europe.toml", include_str!("../../../catalogs/europe.toml")),
    ("middle-east-africa.toml", include_str!("../../../catalogs/middle-east-africa.toml")),
    ("north-america.toml", include_str!("../../../catalogs/north-america.toml")),
    ("south-america.toml", include_str!("../../../catalogs/south-america.toml")),
];

#[derive(Args)]
pub(super) struct NewRuleArgs {
    /// Directory to create the crate in (must not exist, or be empty).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Crate and module name [default: DIR's last component].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Catalog directory to copy into the crate and compute the golden
    /// cases on [default: the stock catalogs built into offerd].
    #[arg(long, value_name = "DIR")]
    catalogs: Option<PathBuf>,
}

pub(super) fn run(args: &NewRuleArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => dir.file_name().and_then(|n| n.to_str()).map(str::to_owned).unwrap_or_default(),
    };
    check_crate_name(&name)?;
    if dir.exists() && std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    for (path, text) in FILES {
        write(&dir.join(path), &text.replace("{name}", &name))?;
    }
    let (version, wit) = super::wit::newest();
    write(&dir.join("wit").join(super::wit::FILE), wit)?;

    let catalogs_dir = dir.join("catalogs");
    match &args.catalogs {
        None => {
            for (file, text) in STOCK_CATALOGS {
                write(&catalogs_dir.join(file), text)?;
            }
        }
        Some(from) => {
            // Loaded first, so that only a valid directory is copied.
            let catalogs = Catalogs::load(from)?;
            copy(&from.join("regions.toml"), &catalogs_dir.join("regions.toml"))?;
            for region in catalogs.regions() {
                // Region names become file names in the crate.
                if !region.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    bail!("region {:?} cannot name a file: letters, digits, '-' and '_' only", region.region);
                }
                let file = format!("{}.toml", region.region);
                copy(&from.join(&file), &catalogs_dir.join(&file))?;
            }
        }
    }
    let catalogs = Catalogs::load(&catalogs_dir)?;
    let mut regions = Vec::new();
    for catalog in catalogs.regions() {
        let cases = golden_cases(&catalogs, catalog);
        let text = serde_json::to_string_pretty(&cases).expect("JSON values serialise") + "\n";
        write(&dir.join("cases").join(format!("{}.json", catalog.region)), &text)?;
        regions.push(format!("{} ({} cases)", catalog.region, cases.len()));
    }
    let samples = sample_signups(&catalogs);
    write(&dir.join("samples").join("signups.jsonl"), &(samples.join("\n") + "\n"))?;
    println!("created {name} in {} (offers:rules@{version})", dir.display());
    println!("golden cases: {}", regions.join(", "));
    println!("next: cd {} && cargo test && offerd build --release   (see README.md)", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Cargo's rules for a package name, and offerd's for a module name: a
/// letter, then letters, digits, `-` or `_`; at most 64 characters.
fn check_crate_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!("{name:?} is not a crate name: a letter, then letters, digits, '-' or '_', at most 64 (--name NAME)");
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &text)
}

/// The region's catalog as the template's rules see it (as `init` passes it).
fn template_catalog(catalog: &RegionCatalog) -> rules::Catalog {
    let segment = |s: crate::catalog::Segment| match s {
        crate::catalog::Segment::Residential => rules::Segment::Residential,
        crate::catalog::Segment::Business => rules::Segment::Business,
    };
    rules::Catalog {
        countries: catalog.countries.clone(),
        max_offers: catalog.max_offers,
        plans: catalog
            .plans
            .iter()
            .map(|p| rules::Plan {
                segment: p.segment.map(segment),
                monthly_price_minor: p.monthly_price_minor,
                countries: p.countries.clone(),
                postal_prefixes: p.postal_prefixes.clone(),
                coverage: p.coverage.map(|c| rules::Coverage { max_km: c.max_km, min_population: c.min_population }),
            })
            .collect(),
        metros: catalog
            .metros
            .iter()
            .map(|m| rules::Metro { lat: m.lat, lon: m.lon, population: m.population })
            .collect(),
    }
}

/// A case's place: its description, country and coordinates.
type Place = (String, String, Option<(f64, f64)>);

/// Golden cases for one region, each expecting what the template's rules
/// answer: the two largest metros for both segments, a place 300 km north
/// of the largest, and a country of another region.
fn golden_cases(catalogs: &Catalogs, catalog: &RegionCatalog) -> Vec<serde_json::Value> {
    let rules = rules::Rules::new(template_catalog(catalog));
    let mut metros: Vec<_> = catalog.metros.iter().collect();
    metros.sort_by_key(|m| std::cmp::Reverse(m.population));
    let mut places: Vec<Place> = Vec::new();
    for metro in metros.iter().take(2) {
        places.push((format!("in {}", metro.name), metro.country.clone(), Some((metro.lat, metro.lon))));
    }
    if let Some(largest) = metros.first() {
        let north = (largest.lat + 2.7).min(89.0);
        places.push((format!("300 km north of {}", largest.name), largest.country.clone(), Some((north, largest.lon))));
    }
    if let Some(foreign) = catalogs.regions().filter(|r| r.region != catalog.region).find_map(|r| r.countries.first()) {
        places.push((format!("a sign-up from {foreign}, a country of another region"), foreign.clone(), None));
    }
    let mut cases = Vec::new();
    for (place, country, at) in &places {
        for (segment, segment_name) in
            [(rules::Segment::Residential, "residential"), (rules::Segment::Business, "business")]
        {
            let signup = rules::SignUp { country, postal_code: None, coordinates: *at, segment };
            let expect = match rules.enrich(&signup) {
                Ok(offers) => {
                    json!({"offers": offers.iter().map(|o| &catalog.plans[o.plan as usize].id).collect::<Vec<_>>()})
                }
                Err(rules::Rejection::NoCoverage) => json!({"rejected": "no-coverage"}),
                Err(rules::Rejection::CountryNotServed(_)) => json!({"rejected": "country-not-served"}),
            };
            let mut location = json!({"country": country});
            if let Some((lat, lon)) = at {
                location["lat"] = json!(lat);
                location["lon"] = json!(lon);
            }
            cases.push(json!({
                "name": format!("{segment_name} {place}"),
                "signup": {"user_id": "case", "location": location, "segment": segment_name},
                "expect": expect,
            }));
        }
    }
    cases
}

/// Sample traffic for `offerd diff` and `offerd enrich`: per region, a
/// sign-up at each of its largest metros, both segments.
fn sample_signups(catalogs: &Catalogs) -> Vec<String> {
    const METROS_PER_REGION: usize = 100;
    let mut lines = Vec::new();
    for catalog in catalogs.regions() {
        let mut metros: Vec<_> = catalog.metros.iter().collect();
        metros.sort_by_key(|m| std::cmp::Reverse(m.population));
        for (i, m) in metros.iter().take(METROS_PER_REGION).enumerate() {
            for segment in ["residential", "business"] {
                let user = format!("{}-{i}-{segment}", catalog.region);
                let signup = json!({
                    "user_id": user,
                    "location": {"country": m.country, "lat": m.lat, "lon": m.lon},
                    "segment": segment,
                });
                lines.push(signup.to_string());
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_follow_cargo() {
        for good in ["rules", "eu-promo_rules2"] {
            assert!(check_crate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2rules", "has space", "ünï", &"x".repeat(65)] {
            assert!(check_crate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_stock_region_gets_cases_with_offers_and_a_rejection() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in STOCK_CATALOGS {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let catalogs = Catalogs::load(dir.path()).unwrap();
        assert_eq!(catalogs.regions().count(), STOCK_CATALOGS.len() - 1, "a region's catalog is not embedded");
        for catalog in catalogs.regions() {
            let cases = golden_cases(&catalogs, catalog);
            assert_eq!(cases.len(), 8, "{}", catalog.region);
            assert!(cases.iter().any(|c| c["expect"]["offers"].as_array().is_some_and(|o| o.len() == 3)));
            assert!(cases.iter().any(|c| c["expect"]["rejected"] == "country-not-served"));
        }
    }
}
