//! Builds offer-rule modules: a Rust crate compiled to `wasm32-unknown-unknown`
//! and wrapped into a component with no imports. Used by `cargo xtask` and by
//! the test crate's build script, so tests and users get the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The core-module target: unlike `wasm32-wasip2` it pulls in no WASI imports,
/// so a module can reach nothing the contract does not pass it.
pub const GUEST_TARGET: &str = "wasm32-unknown-unknown";

/// The workspace root (this crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace").to_path_buf()
}

/// Compiles workspace `package` for [`GUEST_TARGET`] in its own target
/// directory (a build script must not wait on the lock of the build that runs
/// it) and returns the component's bytes.
///
/// # Errors
/// When cargo fails (missing target: `rustup target add wasm32-unknown-unknown`)
/// or the module does not encode as a component.
pub fn build_component(package: &str) -> Result<Vec<u8>> {
    build_component_as(package, None)
}

/// As [`build_component`], with the reference rules' reported version set
/// to `version` (`OFFER_RULES_VERSION`) instead of the package's.
///
/// # Errors
/// As [`build_component`].
pub fn build_component_as(package: &str, version: Option<&str>) -> Result<Vec<u8>> {
    build(package, version, "guest", None)
}

/// As [`build_component`], with cargo features of the package turned on
/// (the reference rules' `contract-1-0`: the same rules at contract 1.0.0).
///
/// # Errors
/// As [`build_component`].
pub fn build_component_with_features(package: &str, features: &str) -> Result<Vec<u8>> {
    build(package, None, "guest", Some(features))
}

/// As [`build_component`], but without optimisation (the dev profile): a
/// several times larger module with much more code, for measuring compile
/// time on modules of production size.
///
/// # Errors
/// As [`build_component`].
pub fn build_component_unoptimised(package: &str) -> Result<Vec<u8>> {
    build(package, None, "dev", None)
}

fn build(package: &str, version: Option<&str>, profile: &str, features: Option<&str>) -> Result<Vec<u8>> {
    let root = workspace_root();
    let target_dir = root.join("target").join("guests");
    // Builds of one package with other features (or another version) write
    // the same output file: held from the build until the file is read, so
    // that a test build and a bench running at once never read each
    // other's module. Cargo serialises the builds themselves anyway.
    std::fs::create_dir_all(&target_dir)?;
    let lock = std::fs::File::create(target_dir.join(".offerd-guest-build.lock"))?;
    lock.lock().context("locking the guest build")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "--package", package, "--target", GUEST_TARGET, "--profile", profile])
        .arg("--target-dir")
        .arg(&target_dir);
    if let Some(features) = features {
        cmd.args(["--features", features]);
    }
    without_outer_build_flags(&mut cmd);
    match version {
        Some(v) => cmd.env("OFFER_RULES_VERSION", v),
        None => cmd.env_remove("OFFER_RULES_VERSION"),
    };
    let status = cmd.status().with_context(|| format!("running cargo to build {package}"))?;
    if !status.success() {
        bail!(
            "building {package} for {GUEST_TARGET} failed ({status}); is the target installed? `rustup target add {GUEST_TARGET}`"
        );
    }
    // Cargo names the dev profile's directory `debug`.
    let profile_dir = if profile == "dev" { "debug" } else { profile };
    let core_path = target_dir.join(GUEST_TARGET).join(profile_dir).join(format!("{}.wasm", package.replace('-', "_")));
    let core = std::fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    componentize(&core).with_context(|| format!("making a component of {}", core_path.display()))
}

/// Removes the flags cargo gives a build script or test for the outer
/// (native) build, so that they do not leak into a nested guest build.
pub fn without_outer_build_flags(cmd: &mut Command) -> &mut Command {
    for var in
        ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CARGO_MAKEFLAGS"]
    {
        cmd.env_remove(var);
    }
    cmd
}

/// Adds [`GUEST_TARGET`] through rustup; a no-op when it is installed.
///
/// # Errors
/// rustup is missing or fails.
pub fn ensure_guest_target() -> Result<()> {
    let status = Command::new("rustup").args(["target", "add", GUEST_TARGET]).status().context("running rustup")?;
    if !status.success() {
        bail!("`rustup target add {GUEST_TARGET}` failed ({status})");
    }
    Ok(())
}

/// Runs cargo in the workspace root with `args`, failing on a non-zero exit.
///
/// # Errors
/// cargo cannot start or exits non-zero.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with extra environment variables.
///
/// # Errors
/// cargo cannot start or exits non-zero.
pub fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo).current_dir(workspace_root()).args(args).envs(env.iter().copied()).status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Wraps a core module carrying wit-bindgen's component-type section.
///
/// # Errors
/// When the module is not a wit-bindgen guest or fails validation.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default().module(core)?.validate(true).encode()
}

/// Every row of a CSV file with a header.
///
/// # Errors
/// The file is missing, or a row does not fit `T`.
pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    csv::Reader::from_path(path)
        .with_context(|| format!("opening {}", path.display()))?
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

pub mod component_edits;
pub mod dynalite;
pub mod kinesalite;
pub mod kinesis_local;
pub mod local_server;
pub mod moto;
pub mod signups;
