//! Builds every module the tests load, from source, on every test build: the
//! reference rules, the misbehaving guest, and components that break the
//! contract in one way each. Nothing is prebuilt, nothing can be skipped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
use wit_parser::{ManglingAndAbi, Resolve};

/// Size of the one function in `slow-to-compile.wasm`: about a second of
/// compiling on one core of the test machine.
const SLOW_COMPILE_OPERATIONS: usize = 2_000_000;

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = xtask::workspace_root();
    for dir in ["guest/src", "guest/Cargo.toml", "wit", "tests/guests/misbehave"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    std::fs::write(out.join("reference.wasm"), xtask::build_component("offer-rules")?)?;
    std::fs::write(out.join("misbehave.wasm"), xtask::build_component("misbehave-rules")?)?;
    std::fs::write(
        out.join("misbehave-1-1.wasm"),
        xtask::build_component_with_features("misbehave-rules", "contract-1-1")?,
    )?;
    let reference = std::fs::read(out.join("reference.wasm"))?;
    let slow = xtask::component_edits::with_huge_function(&reference, SLOW_COMPILE_OPERATIONS);
    std::fs::write(out.join("slow-to-compile.wasm"), slow)?;

    let contract = std::fs::read_to_string(root.join("wit/offers-rules.wit"))?;
    let other = "package acme:billing@1.0.0;\nworld billing { export charge: func(cents: u64) -> bool; }\n";
    dummy(&out.join("other-world.wasm"), other, "billing")?;
    let future = contract.replace("package offers:rules@1.1.0;", "package offers:rules@2.0.0;");
    anyhow::ensure!(future != contract, "wit/offers-rules.wit is no longer at 1.1.0: update this build script");
    dummy(&out.join("future-version.wasm"), &future, "offer-rules")?;
    let with_import =
        contract.replace("    export rules;", "    import log: func(message: string);\n    export rules;");
    dummy(&out.join("with-import.wasm"), &with_import, "offer-rules")?;
    Ok(())
}

/// A component of `world` whose functions all trap: enough to test refusals.
fn dummy(path: &Path, wit: &str, world: &str) -> Result<()> {
    let mut resolve = Resolve::default();
    let package = resolve.push_str("test.wit", wit)?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    let component = ComponentEncoder::default().module(&module)?.validate(true).encode()?;
    std::fs::write(path, component).with_context(|| format!("writing {}", path.display()))
}
