//! `offerd build`: a rule crate to a checked component, with nothing but
//! cargo and this binary. cargo compiles the crate for
//! `wasm32-unknown-unknown`; wit-component (built in) wraps the core module
//! into a component with no imports; then the module goes through the
//! publication gate against every catalog the crate carries.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use crate::catalog::Catalogs;
use crate::engine::{Engine, Limits};
use crate::{golden, rollout};

/// The core-module target: unlike `wasm32-wasip2` it pulls in no WASI
/// imports, so a module can reach nothing the contract does not pass it.
const TARGET: &str = "wasm32-unknown-unknown";

#[derive(Args)]
pub(super) struct BuildArgs {
    /// The rule crate's manifest.
    #[arg(long, value_name = "FILE", default_value = "Cargo.toml")]
    manifest_path: PathBuf,
    /// Build with the release profile (what production should run).
    #[arg(long)]
    release: bool,
    /// The component to write [default: <target-dir>/offer-rules/<crate>.wasm].
    #[arg(short = 'o', long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Catalogs to gate the module against (every region: init, the golden
    /// cases in `cases/<region>.json` beside the manifest, a smoke batch)
    /// [default: `catalogs/` beside the manifest, when it exists].
    #[arg(long, value_name = "DIR")]
    catalogs: Option<PathBuf>,
}

pub(super) fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let built = build(&args.manifest_path, args.release)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| built.target_dir.join("offer-rules").join(format!("{}.wasm", built.package)));
    let engine = Engine::new(Limits::default())?;
    // Written before the gate runs, so a refused module can still be examined.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::atomic_file::write(&out, &built.component).with_context(|| format!("writing {}", out.display()))?;
    let module = crate::engine::RuleModule::load(&engine, &built.component)
        .with_context(|| format!("{} does not meet the contract", out.display()))?;
    let info = module.info();
    println!(
        "built {}: {} bytes, {} {}, {}",
        out.display(),
        built.component.len(),
        info.name,
        info.version,
        info.digest
    );
    let crate_dir = built.manifest.parent().unwrap_or(Path::new("."));
    let catalogs_dir = args.catalogs.clone().unwrap_or_else(|| crate_dir.join("catalogs"));
    if args.catalogs.is_none() && !catalogs_dir.is_dir() {
        println!("no catalogs/ beside the manifest: gated on the contract only");
        return Ok(ExitCode::SUCCESS);
    }
    let catalogs = Catalogs::load(&catalogs_dir)?;
    let module = Arc::new(module);
    let mut refused = 0;
    for catalog in catalogs.regions() {
        let cases_file = crate_dir.join("cases").join(format!("{}.json", catalog.region));
        let cases = if cases_file.is_file() { golden::load(std::slice::from_ref(&cases_file))? } else { Vec::new() };
        match rollout::gate_module(module.clone(), Arc::new(catalog.clone()), &cases) {
            Ok(_) => println!("  {}: gate passed ({} golden cases)", catalog.region, cases.len()),
            Err(e) => {
                refused += 1;
                println!("  {}: REFUSED: {e}", catalog.region);
            }
        }
    }
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A component built from a crate.
pub(super) struct Built {
    pub component: Vec<u8>,
    pub package: String,
    pub manifest: PathBuf,
    pub target_dir: PathBuf,
}

/// Compiles the crate at `manifest` for [`TARGET`] and wraps its core module.
///
/// # Errors
/// cargo is missing or fails, the target is not installed (saying how to add
/// it), the crate is not a cdylib, or the module is not a wit-bindgen guest.
pub(super) fn build(manifest: &Path, release: bool) -> anyhow::Result<Built> {
    let manifest = std::fs::canonicalize(manifest).with_context(|| format!("finding {}", manifest.display()))?;
    let crate_dir = manifest.parent().unwrap_or(Path::new("/"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata = Command::new(&cargo)
        .current_dir(crate_dir)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("running cargo metadata (is cargo installed?)")?;
    if !metadata.status.success() {
        bail!("cargo metadata failed on {}:\n{}", manifest.display(), String::from_utf8_lossy(&metadata.stderr));
    }
    let metadata: Metadata = serde_json::from_slice(&metadata.stdout).context("reading cargo metadata's answer")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.manifest_path == manifest)
        .with_context(|| format!("{} names no package", manifest.display()))?;
    let lib = package.targets.iter().find(|t| t.kind.iter().any(|k| k == "cdylib")).with_context(|| {
        format!("{} is not a cdylib: add `crate-type = [\"cdylib\", \"rlib\"]` under [lib]", package.name)
    })?;
    check_target_installed(crate_dir)?;

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(crate_dir).args(["build", "--lib", "--target", TARGET, "--manifest-path"]).arg(&manifest);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {} for {TARGET} failed ({status})", package.name);
    }
    let profile = if release { "release" } else { "debug" };
    let core_path =
        metadata.target_directory.join(TARGET).join(profile).join(format!("{}.wasm", lib.name.replace('-', "_")));
    let core = std::fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|encoder| encoder.validate(true).encode())
        .with_context(|| {
            format!(
                "making a component of {} (does the crate call wit_bindgen::generate! and export!?)",
                core_path.display()
            )
        })?;
    Ok(Built { component, package: package.name, manifest, target_dir: metadata.target_directory })
}

/// Fails with the command that fixes it when rustc has no [`TARGET`].
fn check_target_installed(crate_dir: &Path) -> anyhow::Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .current_dir(crate_dir)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    anyhow::ensure!(
        sysroot.status.success(),
        "rustc --print sysroot failed: {}",
        String::from_utf8_lossy(&sysroot.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib").join("rustlib").join(TARGET).is_dir() {
        bail!("the {TARGET} target is not installed for {}: run `rustup target add {TARGET}`", sysroot.display());
    }
    Ok(())
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    target_directory: PathBuf,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}
