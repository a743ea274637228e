//! Misbehaves on command, to prove the host's limits. The command is the
//! sign-up's postal code: `trap` panics, `loop` never returns, `alloc`
//! allocates 1 GiB, `bad-index` returns a plan outside the catalog, `many`
//! returns 1,000 offers, `flood` 300,000 (12 MB of host memory lifted),
//! `long-reason` declines with a 100 kB reason,
//! `reject` declines; anything else gets plan 0. A catalog for region `poisoned`
//! makes `init` trap.
#![cfg(target_arch = "wasm32")]

// The 1.0 contract on purpose: the host keeps serving modules built against it.
wit_bindgen::generate!({ path: "../../../wit/1.0.0", world: "offer-rules" });

use exports::offers::rules::rules::{Catalog, CatalogError, Guest, ModuleInfo, Offer, RuleError, SignUp};

struct Misbehave;
export!(Misbehave);

impl Guest for Misbehave {
    fn metadata() -> ModuleInfo {
        ModuleInfo { name: "misbehave".into(), version: "0.0.1".into() }
    }

    fn init(catalog: Catalog) -> Result<(), CatalogError> {
        if catalog.region == "poisoned" {
            panic!("init refuses to start for region {}", catalog.region);
        }
        Ok(())
    }

    fn enrich(batch: Vec<SignUp>) -> Vec<Result<Vec<Offer>, RuleError>> {
        batch.iter().map(|s| command(s.postal_code.as_deref().unwrap_or(""))).collect()
    }
}

fn command(cmd: &str) -> Result<Vec<Offer>, RuleError> {
    match cmd {
        "trap" => panic!("poison record"),
        "loop" => loop {
            core::hint::black_box(());
        },
        "alloc" => {
            // black_box: otherwise the optimiser removes the allocation altogether.
            let big = core::hint::black_box(vec![1u8; 1 << 30]);
            Ok(vec![Offer { plan: big[12345] as u32 - 1, monthly_price_minor: big.len() as u64, promo: None }])
        }
        "bad-index" => Ok(vec![Offer { plan: 9999, monthly_price_minor: 1, promo: None }]),
        "many" => Ok(vec![Offer { plan: 0, monthly_price_minor: 1, promo: None }; 1000]),
        "flood" => Ok(vec![Offer { plan: 0, monthly_price_minor: 1, promo: None }; 300_000]),
        "long-reason" => Err(RuleError::Unusable("x".repeat(100_000))),
        "reject" => Err(RuleError::Unusable("told to reject".into())),
        _ => Ok(vec![Offer { plan: 0, monthly_price_minor: 100, promo: None }]),
    }
}
