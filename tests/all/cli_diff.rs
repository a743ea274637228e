//! `offerd diff`: two modules on the same sign-ups under the production
//! engine; what changes per record and in total; exit 1 when anything does.

use serde_json::Value;

use super::{catalogs, lines, offerd};
use offerd_tests::component;

fn diff(from: &str, to: &str, input: &std::path::Path) -> std::process::Output {
    let (from, to) = (component(from), component(to));
    offerd(
        &[
            "diff",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
            "--catalogs",
            catalogs().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
        b"",
    )
}

#[test]
fn a_module_that_reprices_rejects_and_traps_is_reported_record_by_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("signups.jsonl");
    // The misbehaving module obeys the postal code: one cheap offer, a rejection, a trap.
    let signups: Vec<String> = ["ok", "reject", "trap"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(r#"{{"user_id": "u{i}", "location": {{"country": "DE", "postal_code": "{c}", "lat": 52.52, "lon": 13.4}}}}"#)
        })
        .collect();
    std::fs::write(&input, signups.join("\n")).unwrap();

    let same = diff("reference", "reference", &input);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    assert_eq!(lines(&same.stdout), [serde_json::json!({"totals": {"records": 3}})]);

    let changed = diff("reference", "misbehave", &input);
    assert_eq!(changed.status.code(), Some(1), "{}", String::from_utf8_lossy(&changed.stderr));
    let out: Vec<Value> = lines(&changed.stdout);
    assert_eq!(out.len(), 4, "{out:?}");
    let first = &out[0];
    assert_eq!(first["user_id"], "u0");
    assert_eq!(first["repriced"][0]["to"], "100 EUR", "{first}");
    assert!(!first["removed"].as_array().unwrap().is_empty(), "{first}");
    assert_eq!(out[1]["outcome"], serde_json::json!({"from": "offers", "to": "rule-rejected"}));
    assert_eq!(out[2]["outcome"], serde_json::json!({"from": "offers", "to": "module-trap"}));
    let totals = &out[3]["totals"];
    assert_eq!(totals["records_changed"], 3);
    assert_eq!(totals["dead_letters_appear"], 2);
    assert_eq!(totals["failures_to"], 1);
    assert_eq!(totals["offers_repriced"], 1);
}
