use super::*;
use crate::catalog::{Coverage, Metro, Technology};

const BERLIN: (f64, f64) = (52.52, 13.405);
/// Village about 45 km from Berlin: cable and DSL reach, fiber does not.
const NEAR_BERLIN: (f64, f64) = (52.75, 13.95);
/// Middle of nowhere in Lapland.
const REMOTE: (f64, f64) = (68.5, 27.0);
const DAY: i32 = 20_600;

fn plan(id: &str, technology: Technology, down: u32, up: u32, price: u64, coverage: Option<(f64, u64)>) -> Plan {
    Plan {
        id: id.into(),
        name: id.into(),
        technology,
        segment: Some(Segment::Residential),
        down_mbps: down,
        up_mbps: up,
        monthly_price_minor: price,
        countries: vec![],
        postal_prefixes: vec![],
        coverage: coverage.map(|(max_km, min_population)| Coverage { max_km, min_population }),
    }
}

fn catalog() -> Catalog {
    let mut business = plan("biz-fiber", Technology::Fiber, 1000, 1000, 19900, Some((20.0, 1_000_000)));
    business.segment = Some(Segment::Business);
    let mut berlin_only = plan("berlin-city", Technology::Fiber, 2500, 1000, 6900, Some((20.0, 1_000_000)));
    berlin_only.postal_prefixes = vec!["10".into(), "12".into()];
    let mut france_only = plan("fr-fiber", Technology::Fiber, 8000, 8000, 3999, None);
    france_only.countries = vec!["FR".into()];
    Catalog {
        region: "europe".into(),
        currency: "EUR".into(),
        countries: vec!["DE".into(), "FR".into()],
        max_offers: 3,
        plans: vec![
            plan("fiber-1000", Technology::Fiber, 1000, 500, 5999, Some((20.0, 1_000_000))),
            plan("cable-250", Technology::Cable, 250, 50, 3999, Some((60.0, 500_000))),
            plan("dsl-100", Technology::Dsl, 100, 40, 3499, Some((80.0, 100_000))),
            plan("sat-150", Technology::Satellite, 150, 20, 6999, None),
            plan("sat-50", Technology::Satellite, 50, 10, 4999, None),
            business,
            berlin_only,
            france_only,
        ],
        metros: vec![Metro { lat: BERLIN.0, lon: BERLIN.1, population: 3_600_000 }],
        promos: vec![
            Promo {
                id: "fiber-launch".into(),
                name: "Fiber launch".into(),
                percent_off: 30,
                months: 6,
                technologies: vec![Technology::Fiber],
                segment: Some(Segment::Residential),
                valid_from_day: DAY - 10,
                valid_until_day: DAY + 10,
            },
            Promo {
                id: "welcome".into(),
                name: "Welcome".into(),
                percent_off: 10,
                months: 3,
                technologies: vec![],
                segment: None,
                valid_from_day: DAY - 10,
                valid_until_day: DAY + 10,
            },
        ],
    }
}

fn signup(coordinates: Option<(f64, f64)>) -> SignUp<'static> {
    SignUp { country: "DE", postal_code: None, coordinates, segment: Segment::Residential, signed_up_day: None }
}

fn ids(rules: &Rules, offers: &[Offer]) -> Vec<String> {
    offers.iter().map(|o| rules.catalog().plans[o.plan as usize].id.clone()).collect()
}

#[test]
fn city_centre_gets_fiber_first_and_satellite_is_dominated() {
    let rules = Rules::new(catalog()).unwrap();
    let offers = rules.enrich(&signup(Some(BERLIN))).unwrap();
    assert_eq!(ids(&rules, &offers), ["fiber-1000", "cable-250", "dsl-100"]);
}

#[test]
fn outskirts_get_cable_and_dsl_but_not_fiber() {
    let rules = Rules::new(catalog()).unwrap();
    let offers = rules.enrich(&signup(Some(NEAR_BERLIN))).unwrap();
    // Cable beats the faster satellite plan on every count, so it hides it.
    assert_eq!(ids(&rules, &offers), ["cable-250", "dsl-100"]);
}

#[test]
fn satellite_is_the_fallback_anywhere_in_the_region() {
    let rules = Rules::new(catalog()).unwrap();
    for coordinates in [Some(REMOTE), None] {
        let offers = rules.enrich(&signup(coordinates)).unwrap();
        assert_eq!(ids(&rules, &offers), ["sat-150", "sat-50"], "{coordinates:?}");
    }
}

#[test]
fn postal_prefix_plans_need_a_matching_postal_code() {
    let rules = Rules::new(catalog()).unwrap();
    let inside = SignUp { postal_code: Some("10115"), ..signup(Some(BERLIN)) };
    assert_eq!(ids(&rules, &rules.enrich(&inside).unwrap())[0], "berlin-city");
    let outside = SignUp { postal_code: Some("20095"), ..signup(Some(BERLIN)) };
    assert!(!ids(&rules, &rules.enrich(&outside).unwrap()).contains(&"berlin-city".to_string()));
}

#[test]
fn country_limited_plans_stay_in_their_country() {
    let rules = Rules::new(catalog()).unwrap();
    let fr = SignUp { country: "FR", ..signup(None) };
    assert_eq!(ids(&rules, &rules.enrich(&fr).unwrap())[0], "fr-fiber");
    assert!(!ids(&rules, &rules.enrich(&signup(None)).unwrap()).contains(&"fr-fiber".to_string()));
}

#[test]
fn business_sees_business_plans_ranked_by_upload() {
    let rules = Rules::new(catalog()).unwrap();
    let biz = SignUp { segment: Segment::Business, ..signup(Some(BERLIN)) };
    let offers = rules.enrich(&biz).unwrap();
    assert_eq!(ids(&rules, &offers), ["biz-fiber"]);
}

#[test]
fn deepest_valid_promo_applies_only_inside_its_window() {
    let rules = Rules::new(catalog()).unwrap();
    let on_day = SignUp { signed_up_day: Some(DAY), ..signup(Some(BERLIN)) };
    let offers = rules.enrich(&on_day).unwrap();
    // Fiber gets the 30 % launch promo, cable only the 10 % welcome promo.
    assert_eq!(offers[0].promo, Some(AppliedPromo { promo: 0, monthly_price_minor: 4199 }));
    assert_eq!(offers[1].promo, Some(AppliedPromo { promo: 1, monthly_price_minor: 3599 }));
    let late = SignUp { signed_up_day: Some(DAY + 11), ..on_day };
    assert!(rules.enrich(&late).unwrap().iter().all(|o| o.promo.is_none()));
}

#[test]
fn rejections_are_typed() {
    let rules = Rules::new(catalog()).unwrap();
    let us = SignUp { country: "US", ..signup(None) };
    assert_eq!(rules.enrich(&us), Err(Rejection::CountryNotServed("US".into())));
    let biz_remote = SignUp { segment: Segment::Business, ..signup(Some(REMOTE)) };
    assert_eq!(rules.enrich(&biz_remote), Err(Rejection::NoCoverage));
    let odd = SignUp { postal_code: Some("10<115>"), ..signup(None) };
    assert!(matches!(rules.enrich(&odd), Err(Rejection::Unusable(_))));
}

#[test]
fn catalog_without_fallback_is_refused_with_its_field() {
    let mut c = catalog();
    c.plans.retain(|p| p.coverage.is_some() || !p.countries.is_empty());
    assert_eq!(Rules::new(c).unwrap_err().field, "plans");
    let mut c = catalog();
    c.plans[1].coverage = Some(Coverage { max_km: -1.0, min_population: 0 });
    assert_eq!(Rules::new(c).unwrap_err().field, "plans[1].coverage.max_km");
}

#[test]
fn postal_prefixes_ignore_case_spaces_and_dashes() {
    assert!(postal_starts_with("01310-100", "0131"));
    assert!(postal_starts_with("sw1a 1aa", "SW1A1"));
    assert!(!postal_starts_with("0131", "01310"));
    assert!(!postal_starts_with("20095", "10"));
}

/// Catalogs past the stack-held flags (more plans, more coverage classes)
/// give the same offers: here 70 plans sold in Germany, each in a coverage
/// class of its own that no metro meets (so every class is queried, and
/// none is eligible), then one plan, at index 78, that beats every other.
#[test]
fn large_catalogs_give_the_same_offers() {
    let small = Rules::new(catalog()).unwrap();
    let mut large = catalog();
    for i in 0..70 {
        large.plans.push(plan(
            &format!("unreachable-{i}"),
            Technology::Dsl,
            10,
            1,
            999,
            Some((100.0 + f64::from(i), u64::MAX)),
        ));
    }
    let unbeaten = large.clone();
    let large = Rules::new(large).unwrap();
    assert!(large.coverage_classes.len() > INLINE && large.catalog().plans.len() > INLINE);
    for coordinates in [Some(BERLIN), Some(NEAR_BERLIN), Some(REMOTE), None] {
        let got = large.enrich(&signup(coordinates));
        assert_eq!(got, small.enrich(&signup(coordinates)), "{coordinates:?}");
    }
    let mut with_best = unbeaten;
    with_best.plans.push(plan("best", Technology::Fiber, 10_000, 10_000, 1, None));
    let with_best = Rules::new(with_best).unwrap();
    for coordinates in [Some(BERLIN), Some(REMOTE), None] {
        let offers = with_best.enrich(&signup(coordinates)).unwrap();
        assert_eq!(ids(&with_best, &offers), ["best"], "{coordinates:?}: it hides every other plan");
    }
}
