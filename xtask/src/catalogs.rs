//! Generates `regions.toml` and one catalog per sales region from GeoNames:
//! countries route by continent, metro areas are the region's cities of at
//! least [`METRO_MIN_POPULATION`], plans are one price list per region.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Smallest city that counts as a metro area: the smallest coverage class.
const METRO_MIN_POPULATION: u64 = 100_000;

/// Middle-eastern countries that GeoNames files under Asia but sales runs with Africa.
const MIDDLE_EAST: &[&str] = &["AE", "BH", "IL", "IQ", "IR", "JO", "KW", "LB", "OM", "PS", "QA", "SA", "SY", "YE"];

struct Region {
    name: &'static str,
    prefix: &'static str,
    currency: &'static str,
    /// Local price of one EUR of the reference price list.
    price_factor: f64,
    /// A real metro's postal-code prefixes for the region's city-fiber plan.
    city_fiber: (&'static str, &'static str, &'static [&'static str]),
}

const REGIONS: &[Region] = &[
    Region {
        name: "europe",
        prefix: "eu",
        currency: "EUR",
        price_factor: 1.0,
        city_fiber: ("DE", "Berlin", &["10", "12", "13", "14"]),
    },
    Region {
        name: "north-america",
        prefix: "na",
        currency: "USD",
        price_factor: 1.1,
        city_fiber: ("US", "New York", &["100", "101", "102", "103", "104", "112"]),
    },
    Region {
        name: "south-america",
        prefix: "sa",
        currency: "BRL",
        price_factor: 5.5,
        city_fiber: ("BR", "São Paulo", &["01", "02", "03", "04", "05", "08"]),
    },
    Region {
        name: "asia-pacific",
        prefix: "ap",
        currency: "SGD",
        price_factor: 1.5,
        city_fiber: ("JP", "Tokyo", &["100", "101", "102", "103", "104", "105", "106", "107", "108"]),
    },
    Region {
        name: "middle-east-africa",
        prefix: "mea",
        currency: "USD",
        price_factor: 0.9,
        city_fiber: ("ZA", "Johannesburg", &["20", "21"]),
    },
];

fn region_of(iso: &str, continent: &str) -> &'static str {
    match continent {
        _ if MIDDLE_EAST.contains(&iso) => "middle-east-africa",
        "EU" => "europe",
        "NA" => "north-america",
        // Antarctic territories are served by satellite from South America.
        "SA" | "AN" => "south-america",
        "AS" | "OC" => "asia-pacific",
        _ => "middle-east-africa",
    }
}

struct Template {
    key: &'static str,
    name: &'static str,
    technology: &'static str,
    business: bool,
    down: u32,
    up: u32,
    /// Reference price, EUR.
    eur: f64,
    /// (max km, min population); none: anywhere.
    coverage: Option<(f64, u64)>,
}

/// One row of the price list; positional so the table reads as a table.
#[allow(clippy::too_many_arguments)]
const fn t(
    key: &'static str,
    name: &'static str,
    technology: &'static str,
    business: bool,
    down: u32,
    up: u32,
    eur: f64,
    coverage: Option<(f64, u64)>,
) -> Template {
    Template { key, name, technology, business, down, up, eur, coverage }
}

const PLANS: &[Template] = &[
    t("fiber-300", "Fiber 300", "fiber", false, 300, 100, 39.99, Some((15.0, 500_000))),
    t("fiber-1000", "Fiber 1000", "fiber", false, 1000, 500, 59.99, Some((15.0, 500_000))),
    t("fiber-2500", "Fiber 2500", "fiber", false, 2500, 1000, 79.99, Some((10.0, 2_000_000))),
    t("cable-100", "Cable 100", "cable", false, 100, 20, 29.99, Some((30.0, 200_000))),
    t("cable-500", "Cable 500", "cable", false, 500, 50, 44.99, Some((30.0, 200_000))),
    t("cable-1000", "Cable 1000", "cable", false, 1000, 100, 54.99, Some((20.0, 1_000_000))),
    t("dsl-16", "DSL 16", "dsl", false, 16, 2, 24.99, Some((60.0, 100_000))),
    t("dsl-50", "DSL 50", "dsl", false, 50, 10, 29.99, Some((60.0, 100_000))),
    t("dsl-100", "DSL 100 Vectoring", "dsl", false, 100, 40, 34.99, Some((40.0, 100_000))),
    t("fwa-50", "Wireless 50", "fixed-wireless", false, 50, 10, 34.99, Some((120.0, 100_000))),
    t("fwa-200", "5G Home 200", "fixed-wireless", false, 200, 30, 44.99, Some((80.0, 300_000))),
    t("sat-100", "Satellite 100", "satellite", false, 100, 10, 59.99, None),
    t("sat-250", "Satellite 250", "satellite", false, 250, 25, 89.99, None),
    t("biz-fiber-1000", "Business Fiber 1000", "fiber", true, 1000, 1000, 129.0, Some((20.0, 500_000))),
    t("biz-fiber-10000", "Business Fiber 10G", "fiber", true, 10000, 10000, 499.0, Some((10.0, 2_000_000))),
    t("biz-cable-500", "Business Cable 500", "cable", true, 500, 100, 89.0, Some((30.0, 200_000))),
    t("biz-dsl-100", "Business DSL 100", "dsl", true, 100, 40, 59.0, Some((60.0, 100_000))),
    t("biz-fwa-300", "Business 5G 300", "fixed-wireless", true, 300, 100, 99.0, Some((100.0, 100_000))),
    t("biz-sat-200", "Business Satellite 200", "satellite", true, 200, 30, 149.0, None),
];

#[derive(Deserialize)]
struct Country {
    iso: String,
    name: String,
    continent: String,
    population: u64,
}

/// Price in minor units, ending in 99 like a real price list.
fn price_minor(eur: f64, factor: f64) -> u64 {
    let whole = (eur * factor).round().max(1.0) as u64;
    whole * 100 - 1
}

pub fn generate(dir: &Path) -> Result<()> {
    let countries: Vec<Country> = xtask::read_csv(&dir.join("geonames/countries.csv"))?;
    let cities = xtask::signups::cities(&dir.join("geonames/cities15000.csv"))?;
    let mut routes: BTreeMap<&str, Vec<&Country>> = BTreeMap::new();
    for c in &countries {
        routes.entry(region_of(&c.iso, &c.continent)).or_default().push(c);
    }

    let mut regions = String::from(
        "# Routes every ISO 3166-1 country (GeoNames, CC BY 4.0) to one sales region.\n\
         # Each region has its catalog in <region>.toml. Generated by `cargo xtask catalogs`.\n",
    );
    for region in REGIONS {
        let members = &routes[region.name];
        let codes: Vec<String> = members.iter().map(|c| format!("{:?}", c.iso)).collect();
        writeln!(regions, "\n[regions.{}]\ncountries = [{}]", region.name, codes.join(", "))?;

        let iso: Vec<&str> = members.iter().map(|c| c.iso.as_str()).collect();
        let mut metros: Vec<&xtask::signups::City> = cities
            .iter()
            .filter(|c| c.population >= METRO_MIN_POPULATION && iso.contains(&c.country.as_str()))
            .collect();
        metros.sort_by_key(|c| std::cmp::Reverse(c.population));
        let mut biggest: Vec<&&Country> = members.iter().collect();
        biggest.sort_by_key(|c| std::cmp::Reverse(c.population));
        std::fs::write(dir.join(format!("{}.toml", region.name)), catalog(region, &biggest[..3], &metros)?)
            .with_context(|| format!("writing the {} catalog", region.name))?;
        println!("{}: {} countries, {} metros", region.name, members.len(), metros.len());
    }
    std::fs::write(dir.join("regions.toml"), regions).context("writing regions.toml")?;
    Ok(())
}

fn catalog(region: &Region, biggest: &[&&Country], metros: &[&xtask::signups::City]) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "# Offer catalog of the {} sales region. Metro areas: GeoNames cities of", region.name)?;
    writeln!(out, "# {METRO_MIN_POPULATION}+ inhabitants (CC BY 4.0). Generated by `cargo xtask catalogs`.")?;
    writeln!(out, "region = {:?}\ncurrency = {:?}\nmax_offers = 5\n", region.name, region.currency)?;
    writeln!(out, "metros = [")?;
    for m in metros {
        writeln!(
            out,
            "  {{ name = {}, country = {}, lat = {}, lon = {}, population = {} }},",
            toml_str(&m.name),
            toml_str(&m.country),
            m.lat,
            m.lon,
            m.population
        )?;
    }
    writeln!(out, "]")?;
    let mut plan = |id: String, name: &str, tpl: &Template, extra: &str| -> Result<()> {
        writeln!(
            out,
            "\n[[plans]]\nid = {}\nname = {}\ntechnology = {:?}",
            toml_str(&id),
            toml_str(name),
            tpl.technology
        )?;
        writeln!(out, "segment = {:?}", if tpl.business { "business" } else { "residential" })?;
        writeln!(out, "down_mbps = {}\nup_mbps = {}", tpl.down, tpl.up)?;
        writeln!(out, "monthly_price_minor = {}", price_minor(tpl.eur, region.price_factor))?;
        if let Some((km, pop)) = tpl.coverage {
            writeln!(out, "coverage = {{ max_km = {km:.1}, min_population = {pop} }}")?;
        }
        out.push_str(extra);
        Ok(())
    };
    for tpl in PLANS {
        plan(format!("{}-{}", region.prefix, tpl.key), tpl.name, tpl, "")?;
    }
    // Flagship fiber in the three most populous countries only.
    let flagship = t("fiber-5000", "Fiber 5000", "fiber", false, 5000, 2500, 99.99, Some((12.0, 1_000_000)));
    for country in biggest {
        let id = format!("{}-{}-fiber-5000", region.prefix, country.iso.to_lowercase());
        plan(id, &format!("{} Fiber 5000", country.name), &flagship, &format!("countries = [{:?}]\n", country.iso))?;
    }
    // City fiber sold by postal code in one metro's inner districts.
    let (iso, city, prefixes) = region.city_fiber;
    let city_fiber = t("city-fiber", "", "fiber", false, 8000, 8000, 69.99, None);
    let prefixes: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
    plan(
        format!("{}-{}-city-fiber", region.prefix, iso.to_lowercase()),
        &format!("{city} City Fiber 8000"),
        &city_fiber,
        &format!("countries = [{iso:?}]\npostal_prefixes = [{}]\n", prefixes.join(", ")),
    )?;
    out.push_str(
        r#"
[[promos]]
id = "fiber-launch-2026"
name = "Fiber launch: 25% off for 6 months"
percent_off = 25
months = 6
technologies = ["fiber"]
segment = "residential"
valid_from = "2026-01-01"
valid_until = "2026-12-31"

[[promos]]
id = "business-welcome"
name = "Business welcome: 15% off for 3 months"
percent_off = 15
months = 3
segment = "business"
valid_from = "2026-06-01"
valid_until = "2027-06-30"

[[promos]]
id = "winter-2026"
name = "Winter deal: 10% off for 3 months"
percent_off = 10
months = 3
valid_from = "2026-11-01"
valid_until = "2027-02-28"
"#,
    );
    Ok(out)
}

/// A TOML basic string. Rust's `{:?}` is not one: it writes `\u{301}`.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
