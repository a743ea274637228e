//! Misbehaves on command, to prove the host's limits. The command is the
//! sign-up's postal code: `trap` panics, `loop` never returns, `alloc`
//! allocates 1 GiB, `bad-index` returns a plan outside the catalog, `many`
//! returns 1,000 offers, `flood` 300,000 (12 MB of host memory lifted),
//! `long-reason` declines with a 100 kB reason,
//! `reject` declines; anything else gets plan 0. A catalog for region `poisoned`
//! makes `init` trap.
//!
//! Built at contract 1.0 on purpose: the host keeps serving modules built
//! against it. With the `contract-1-1` feature it exports 1.1 as well, and
//! the host calls `enrich-compact`, which obeys the same commands.
#![cfg(target_arch = "wasm32")]

#[cfg(not(feature = "contract-1-1"))]
wit_bindgen::generate!({ path: "../../../wit/1.0.0", world: "offer-rules" });
#[cfg(feature = "contract-1-1")]
wit_bindgen::generate!({ path: "../../../wit", world: "offer-rules" });

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

    #[cfg(feature = "contract-1-1")]
    fn enrich_compact(
        batch: Vec<exports::offers::rules::rules::CompactSignUp>,
    ) -> exports::offers::rules::rules::BatchResult {
        use exports::offers::rules::rules::{BatchOffer, BatchRejection, BatchResult, PostalCode, RejectionKind};
        let mut result = BatchResult { offers: Vec::new(), rejections: Vec::new(), reasons: String::new() };
        for (i, s) in batch.iter().enumerate() {
            let mut buffer = [0u8; 16];
            let cmd = match &s.postal_code {
                None => "",
                Some(PostalCode::Text(text)) => text.as_str(),
                Some(PostalCode::Packed((high, low))) => {
                    buffer[..8].copy_from_slice(&high.to_be_bytes());
                    buffer[8..].copy_from_slice(&low.to_be_bytes());
                    let len = buffer.iter().position(|&b| b == 0).unwrap_or(16);
                    core::str::from_utf8(&buffer[..len]).unwrap_or("")
                }
            };
            let sign_up = i as u32;
            match command(cmd) {
                Ok(offers) => result.offers.extend(offers.into_iter().map(|offer| BatchOffer { sign_up, offer })),
                Err(RuleError::Unusable(why)) => {
                    let reason = Some((result.reasons.len() as u32, why.len() as u32));
                    result.reasons.push_str(&why);
                    result.rejections.push(BatchRejection { sign_up, kind: RejectionKind::Unusable, reason });
                }
                Err(_) => {
                    result.rejections.push(BatchRejection { sign_up, kind: RejectionKind::NoCoverage, reason: None })
                }
            }
        }
        result
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
