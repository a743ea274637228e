//! `offerd wit`: the contract the binary speaks, written where a rule crate
//! reads it; versions it does not speak are refused.

use super::offerd;
use offerd_tests::repo;

#[test]
fn the_contract_is_written_as_the_host_compiles_it_and_unknown_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("my-rule/wit");
    let written = offerd(&["wit", "--out", out.to_str().unwrap()], b"");
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    assert_eq!(
        std::fs::read(out.join("offers-rules.wit")).unwrap(),
        std::fs::read(repo("wit/offers-rules.wit")).unwrap(),
        "the WIT the host's bindings are generated from"
    );
    let pinned = offerd(&["wit", "--out", out.to_str().unwrap(), "--version", "1.0.0"], b"");
    assert!(pinned.status.success());
    let refused = offerd(&["wit", "--out", out.to_str().unwrap(), "--version", "2.0.0"], b"");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("speaks offers:rules 1.0.0, 1.1.0, not 2.0.0"), "{stderr}");
}
