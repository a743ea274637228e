//! Offer rules for one sign-up: which plans can be delivered where, which
//! promo applies, and in what order the offers are shown.

use crate::catalog::{Catalog, CatalogError, Plan, Promo, Segment};
use crate::geo::{MetroIndex, Point, Radius};

/// A validated, routed sign-up. Borrowed: the adapter and the host both hold
/// the strings already.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignUp<'a> {
    pub country: &'a str,
    pub postal_code: Option<&'a str>,
    pub coordinates: Option<(f64, f64)>,
    pub segment: Segment,
    pub signed_up_day: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedPromo {
    /// Index into the catalog's promos.
    pub promo: u32,
    pub monthly_price_minor: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Index into the catalog's plans.
    pub plan: u32,
    pub monthly_price_minor: u64,
    pub promo: Option<AppliedPromo>,
}

/// Why the rules decline a sign-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    CountryNotServed(String),
    NoCoverage,
    Unusable(String),
}

/// Longest postal code of any country (with separators), per the UPU list.
const MAX_POSTAL_CODE_LEN: usize = 12;

/// Rules primed with one region's catalog.
#[derive(Debug)]
pub struct Rules {
    catalog: Catalog,
    metros: MetroIndex,
    /// The plans' distinct coverage requirements, (max km, min population):
    /// a few per catalog, however many plans. Each is one early-exit metro
    /// query per sign-up, made only when a plan that needs it is in play.
    coverage_classes: Vec<(Radius, u64)>,
    /// Per plan, its index in `coverage_classes`.
    coverage_class: Vec<Option<usize>>,
    /// Plan indices in rank order: residential, then business.
    rank: [Vec<u32>; 2],
    /// Per plan, the plans that make it pointless wherever they are also
    /// deliverable (see [`dominates`]): a property of the catalog, worked out once.
    dominators: Vec<Vec<u32>>,
    /// Served countries, indexed by [`country_slot`].
    served: Vec<bool>,
}

/// A slot per pair of upper-case letters.
fn country_slot(code: &str) -> Option<usize> {
    match code.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => Some(usize::from(a - b'A') * 26 + usize::from(b - b'A')),
        _ => None,
    }
}

fn segment_slot(segment: Segment) -> usize {
    match segment {
        Segment::Residential => 0,
        Segment::Business => 1,
    }
}

impl Rules {
    /// # Errors
    /// A catalog the rules cannot use, naming the field.
    pub fn new(catalog: Catalog) -> Result<Self, CatalogError> {
        catalog.check()?;
        let metros = MetroIndex::new(&catalog.metros);
        let mut coverage_classes: Vec<(Radius, u64)> = Vec::new();
        let coverage_class = catalog
            .plans
            .iter()
            .map(|p| {
                let c = p.coverage?;
                let class = (Radius::km(c.max_km), c.min_population);
                Some(coverage_classes.iter().position(|&k| k == class).unwrap_or_else(|| {
                    coverage_classes.push(class);
                    coverage_classes.len() - 1
                }))
            })
            .collect();
        let plans = &catalog.plans;
        let ranked = |key: &dyn Fn(&Plan) -> (u64, u64, u64)| {
            let mut order: Vec<u32> = (0..plans.len() as u32).collect();
            order.sort_by_key(|&i| key(&plans[i as usize]));
            order
        };
        let rank = [
            // Households: best technology, then fastest download, then cheapest.
            ranked(&|p| (p.technology as u64, u64::MAX - u64::from(p.down_mbps), p.monthly_price_minor)),
            // Businesses: upload first (backups, video, hosting), then technology.
            ranked(&|p| (u64::MAX - u64::from(p.up_mbps), p.technology as u64, p.monthly_price_minor)),
        ];
        let dominators = plans
            .iter()
            .map(|b| (0..plans.len() as u32).filter(|&a| dominates(&plans[a as usize], b)).collect())
            .collect();
        let mut served = vec![false; 26 * 26];
        for slot in catalog.countries.iter().filter_map(|c| country_slot(c)) {
            served[slot] = true;
        }
        Ok(Self { catalog, metros, coverage_classes, coverage_class, rank, dominators, served })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Ranked offers for one sign-up, best first.
    ///
    /// # Errors
    /// A [`Rejection`] when the region does not serve the sign-up.
    pub fn enrich(&self, signup: &SignUp<'_>) -> Result<Vec<Offer>, Rejection> {
        if !country_slot(signup.country).is_some_and(|slot| self.served[slot]) {
            return Err(Rejection::CountryNotServed(signup.country.to_owned()));
        }
        if let Some(code) = signup.postal_code {
            check_postal_code(code)?;
        }
        // Per coverage class: unknown until a plan in play needs it.
        let (mut inline, mut heap) = ([None; INLINE], Vec::new());
        let covered = scratch(&mut inline, &mut heap, self.coverage_classes.len(), None);
        let mut point = None;
        let mut in_reach = |class: usize| {
            *covered[class].get_or_insert_with(|| {
                let (radius, min_population) = &self.coverage_classes[class];
                signup.coordinates.is_some_and(|(lat, lon)| {
                    let at = point.get_or_insert_with(|| Point::new(lat, lon));
                    self.metros.any_within(at, radius, *min_population)
                })
            })
        };
        let plans = &self.catalog.plans;
        let (mut inline, mut heap) = ([false; INLINE], Vec::new());
        let eligible = scratch(&mut inline, &mut heap, plans.len(), false);
        for ((eligible, plan), class) in eligible.iter_mut().zip(plans).zip(&self.coverage_class) {
            *eligible = sold_to(plan, signup) && class.is_none_or(&mut in_reach);
        }
        let eligible = &*eligible;
        // `max_offers` is whatever the host sent: at most one offer per plan.
        let mut offers = Vec::with_capacity((self.catalog.max_offers as usize).min(plans.len()));
        offers.extend(
            self.rank[segment_slot(signup.segment)]
                .iter()
                .map(|&i| i as usize)
                .filter(|&i| eligible[i] && !self.dominators[i].iter().any(|&d| eligible[d as usize]))
                .take(self.catalog.max_offers as usize)
                .map(|i| Offer {
                    plan: i as u32,
                    monthly_price_minor: plans[i].monthly_price_minor,
                    promo: self.best_promo(&plans[i], signup),
                }),
        );
        if offers.is_empty() {
            return Err(Rejection::NoCoverage);
        }
        Ok(offers)
    }

    /// The deepest discount among promos valid for this plan on the sign-up day.
    fn best_promo(&self, plan: &Plan, signup: &SignUp<'_>) -> Option<AppliedPromo> {
        let day = signup.signed_up_day?;
        self.catalog
            .promos
            .iter()
            .enumerate()
            .filter(|(_, promo)| promo_applies(promo, plan, signup.segment, day))
            .max_by_key(|(_, promo)| promo.percent_off)
            .map(|(i, promo)| AppliedPromo {
                promo: i as u32,
                monthly_price_minor: discounted(plan.monthly_price_minor, promo.percent_off),
            })
    }
}

/// Per-sign-up flags (per plan, per coverage class) live on the stack for
/// catalogs of up to this many, on the heap beyond: two allocations fewer
/// per sign-up, which WebAssembly's allocator makes dear.
const INLINE: usize = 64;

/// `n` copies of `value`: in `inline` when they fit, else in `heap`.
fn scratch<'a, T: Copy>(inline: &'a mut [T; INLINE], heap: &'a mut Vec<T>, n: usize, value: T) -> &'a mut [T] {
    if n <= INLINE {
        let flags = &mut inline[..n];
        flags.fill(value);
        flags
    } else {
        *heap = vec![value; n];
        heap
    }
}

/// Refuses postal codes no postal system issues.
fn check_postal_code(code: &str) -> Result<(), Rejection> {
    if code.len() > MAX_POSTAL_CODE_LEN {
        return Err(Rejection::Unusable(format!("postal code {code:?} is longer than {MAX_POSTAL_CODE_LEN}")));
    }
    if let Some(bad) = code.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == ' ' || *c == '-')) {
        return Err(Rejection::Unusable(format!("postal code {code:?} contains {bad:?}")));
    }
    Ok(())
}

/// Prefix match ignoring case, spaces and dashes: "01310-100" is in "0131".
fn postal_starts_with(code: &str, prefix: &str) -> bool {
    let mut code = code.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_uppercase());
    prefix.bytes().all(|p| code.next() == Some(p.to_ascii_uppercase()))
}

/// The plan is sold to this segment, country and postal code (coverage is
/// checked apart, per class).
fn sold_to(plan: &Plan, signup: &SignUp<'_>) -> bool {
    if plan.segment.is_some_and(|s| s != signup.segment) {
        return false;
    }
    if !plan.countries.is_empty() && !plan.countries.iter().any(|c| c == signup.country) {
        return false;
    }
    if !plan.postal_prefixes.is_empty() {
        let Some(postal) = signup.postal_code else { return false };
        if !plan.postal_prefixes.iter().any(|p| postal_starts_with(postal, p)) {
            return false;
        }
    }
    true
}

/// `a` makes `b` pointless: at least as fast both ways, no dearer, and better
/// in one of them. Satellite stays only where nothing better reaches.
fn dominates(a: &Plan, b: &Plan) -> bool {
    let no_worse = a.down_mbps >= b.down_mbps
        && a.up_mbps >= b.up_mbps
        && a.monthly_price_minor <= b.monthly_price_minor
        && a.technology <= b.technology;
    let better = a.down_mbps > b.down_mbps
        || a.up_mbps > b.up_mbps
        || a.monthly_price_minor < b.monthly_price_minor
        || a.technology < b.technology;
    no_worse && better
}

fn promo_applies(promo: &Promo, plan: &Plan, segment: Segment, day: i32) -> bool {
    (promo.valid_from_day..=promo.valid_until_day).contains(&day)
        && promo.segment.is_none_or(|s| s == segment)
        && (promo.technologies.is_empty() || promo.technologies.contains(&plan.technology))
}

/// Rounded to the nearest minor unit, halves up.
fn discounted(price: u64, percent_off: u8) -> u64 {
    (price * u64::from(100 - percent_off) + 50) / 100
}

#[cfg(test)]
mod tests;
