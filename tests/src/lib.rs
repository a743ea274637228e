//! Helpers for the integration tests: where the built modules are, and the
//! paths of the repository's catalogs and cases.

use std::path::{Path, PathBuf};

/// A component built by this crate's build script: `reference`, `misbehave`,
/// `slow-to-compile` (the reference rules with one huge function added),
/// `other-world`, `future-version` or `with-import`.
pub fn component(name: &str) -> PathBuf {
    Path::new(env!("OUT_DIR")).join(format!("{name}.wasm"))
}

/// A path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").join(path)
}
