//! `offerd wit`: the contract this binary speaks, written as a WIT directory
//! that a rule author's crate reads as it is with
//! `wit_bindgen::generate!({ path: "wit", world: "offer-rules" })`, so that
//! no crate copies files from this repository.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

/// Every contract version this binary accepts, oldest first: (version, WIT).
/// The host's own bindings are generated from the newest.
const CONTRACTS: &[(&str, &str)] = &[
    ("1.0.0", include_str!("../../../wit/1.0.0/offers-rules.wit")),
    ("1.1.0", include_str!("../../../wit/offers-rules.wit")),
];

/// The file name inside the written directory.
pub(super) const FILE: &str = "offers-rules.wit";

/// The newest contract this binary speaks: (version, WIT).
pub(super) fn newest() -> (&'static str, &'static str) {
    CONTRACTS[CONTRACTS.len() - 1]
}

#[derive(Args)]
pub(super) struct WitArgs {
    /// Directory to write `offers-rules.wit` into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "wit")]
    out: PathBuf,
    /// A contract version this binary still accepts [default: the newest].
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
}

pub(super) fn run(args: &WitArgs) -> anyhow::Result<ExitCode> {
    let (version, wit) = match &args.version {
        None => newest(),
        Some(wanted) => match CONTRACTS.iter().find(|(v, _)| v == wanted) {
            Some(contract) => *contract,
            None => {
                let known: Vec<&str> = CONTRACTS.iter().map(|(v, _)| *v).collect();
                bail!("this offerd speaks offers:rules {}, not {wanted}", known.join(", "));
            }
        },
    };
    if args.out.is_file() {
        bail!("{} is a file; --out names a directory", args.out.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join(FILE);
    crate::atomic_file::write(&path, wit.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} (offers:rules@{version}, world offer-rules)", path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_contract_declares_the_version_it_is_listed_under() {
        for (version, wit) in CONTRACTS {
            assert!(wit.contains(&format!("package offers:rules@{version};")), "{version}");
            assert!(wit.contains("world offer-rules"), "{version}");
        }
    }
}
