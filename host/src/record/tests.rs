use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::catalog::{Plan, Promo, Technology};

fn catalog() -> RegionCatalog {
    let plan = |id: &str, name: &str, technology| Plan {
        id: id.into(),
        name: name.into(),
        technology,
        segment: None,
        down_mbps: 1000,
        up_mbps: 500,
        monthly_price_minor: 5999,
        countries: vec![],
        postal_prefixes: vec![],
        coverage: None,
    };
    RegionCatalog {
        region: "europe".into(),
        currency: "EUR".into(),
        countries: vec!["DE".into()],
        max_offers: 5,
        plans: vec![plan("p-0", "Fiber \"Max\" ✓", Technology::Fiber), plan("p-1", "Sat", Technology::FixedWireless)],
        metros: vec![],
        promos: vec![Promo {
            id: "launch".into(),
            name: "25% off".into(),
            percent_off: 25,
            months: 6,
            technologies: vec![],
            segment: None,
            valid_from: 0,
            valid_until: 1,
        }],
        file: PathBuf::from("europe.toml"),
    }
}

#[test]
fn offer_record_has_the_documented_shape_and_escapes_strings() {
    let info = ModuleInfo {
        name: "rules".into(),
        version: semver::Version::new(1, 2, 3),
        digest: "sha256:abc".into(),
        signed_by: None,
        contract: crate::engine::Contract::V1_1,
    };
    let encoder = OfferEncoder::new(&catalog(), &info);
    let input = br#"{"user_id": "u-\"1\"\n", "location": {"country": "DE"}}"#;
    let signup = SignUp::decode(input).unwrap();
    let offers = [
        Offer { plan: 1, monthly_price_minor: 4999, promo: None },
        Offer { plan: 0, monthly_price_minor: 5999, promo: Some((0, 4499)) },
    ];
    let mut line = Vec::new();
    encoder.write(&mut line, &signup, &offers, None);
    let value: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        value,
        json!({
            "user_id": "u-\"1\"\n", "region": "europe", "country": "DE",
            "offers": [
                {"plan_id": "p-1", "name": "Sat", "technology": "fixed-wireless", "down_mbps": 1000, "up_mbps": 500,
                 "monthly_price": {"amount_minor": 4999, "currency": "EUR"}, "promo": null},
                {"plan_id": "p-0", "name": "Fiber \"Max\" ✓", "technology": "fiber", "down_mbps": 1000, "up_mbps": 500,
                 "monthly_price": {"amount_minor": 5999, "currency": "EUR"},
                 "promo": {"id": "launch", "name": "25% off", "percent_off": 25, "months": 6,
                           "monthly_price": {"amount_minor": 4499, "currency": "EUR"}}}
            ],
            "rule": {"name": "rules", "version": "1.2.3", "digest": "sha256:abc"}
        })
    );
    assert!(!line.contains(&b'\n'), "one record, one line");
}

#[test]
fn dead_letter_keeps_utf8_input_verbatim_and_other_bytes_as_base64() {
    let mut line = Vec::new();
    write_dead_letter(&mut line, Reason::InvalidRecord, "bad", None, None, "{\"ü\"".as_bytes(), None);
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v, json!({"reason": "invalid-record", "detail": "bad", "rule": null, "input": "{\"ü\""}));
    line.clear();
    write_dead_letter(&mut line, Reason::ModuleTrap, "boom", None, None, &[0xff, 0x00], None);
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["input"], "/wA=");
    assert_eq!(v["input_encoding"], "base64");
}

#[test]
fn a_huge_input_is_cut_in_its_dead_letter_with_size_and_digest() {
    use sha2::Digest;
    let mut line = Vec::new();
    // Invalid UTF-8, 1,000,000 bytes: base64 of all of it would be 1.33 MB.
    let input = vec![0xffu8; 1_000_000];
    write_dead_letter(&mut line, Reason::InvalidRecord, &"d".repeat(100_000), None, None, &input, None);
    assert!(line.len() < 100 * 1024, "dead letter is {} bytes", line.len());
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["input_truncated"], true);
    assert_eq!(v["input_bytes"], 1_000_000);
    assert_eq!(v["input_sha256"], format!("{:x}", sha2::Sha256::digest(&input)));
    assert_eq!(v["input_encoding"], "base64");
    assert!(v["detail"].as_str().unwrap().len() <= MAX_DETAIL);

    // Control characters escape to six bytes each: still far below 1 MiB.
    line.clear();
    write_dead_letter(&mut line, Reason::InvalidRecord, "x", None, None, &vec![1u8; 1_000_000], None);
    assert!(line.len() < 400 * 1024, "dead letter is {} bytes", line.len());

    // A UTF-8 input cut inside a character keeps whole characters, unencoded.
    line.clear();
    let text = "ü".repeat(MAX_DEAD_LETTER_INPUT);
    write_dead_letter(&mut line, Reason::InvalidRecord, "x", None, None, text.as_bytes(), None);
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v.get("input_encoding"), None);
    assert_eq!(v["input"].as_str().unwrap().len(), MAX_DEAD_LETTER_INPUT);

    // Small inputs carry no truncation fields.
    line.clear();
    write_dead_letter(&mut line, Reason::InvalidRecord, "x", None, None, b"{}", None);
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!((v.get("input_truncated"), v.get("input_bytes")), (None, None));
}

#[test]
fn stream_outputs_name_their_source_as_their_last_field() {
    let info = ModuleInfo {
        name: "rules".into(),
        version: semver::Version::new(1, 0, 0),
        digest: "sha256:abc".into(),
        signed_by: None,
        contract: crate::engine::Contract::V1_1,
    };
    let encoder = OfferEncoder::new(&catalog(), &info);
    let signup = SignUp::decode(br#"{"user_id": "u", "location": {"country": "DE"}}"#).unwrap();
    let source = RecordSource { shard_id: "shardId-1", sequence_number: "4900", sub_sequence_number: Some(3) };
    let mut line = Vec::new();
    encoder.write(&mut line, &signup, &[Offer { plan: 0, monthly_price_minor: 1, promo: None }], Some(&source));
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["source"], json!({"shard_id": "shardId-1", "sequence_number": "4900", "sub_sequence_number": 3}));
    assert_eq!(v["rule"]["name"], "rules");
    line.clear();
    let plain = RecordSource { sub_sequence_number: None, ..source };
    write_dead_letter(&mut line, Reason::InvalidRecord, "x", None, None, b"{}", Some(&plain));
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["source"], json!({"shard_id": "shardId-1", "sequence_number": "4900"}));
}
