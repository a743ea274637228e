//! `offerd keygen` and `offerd sign`: the key pair a team signs its modules
//! with, and the signature production checks with `--trusted-keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::signing;

#[derive(Args)]
pub(super) struct KeygenArgs {
    /// Directory for `<key-id>.key` (secret, mode 0600) and `<key-id>.pub`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
pub(super) struct SignArgs {
    /// The secret key (`<key-id>.key` from `offerd keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The module to sign.
    #[arg(value_name = "MODULE")]
    module: PathBuf,
    /// Where to write the signed module [default: MODULE, replaced].
    #[arg(short = 'o', long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let id = signing::keygen(&args.out)?;
    let dir = args.out.display();
    println!(
        "key id {id}\nsecret {dir}/{id}.key (keep it out of version control)\npublic {dir}/{id}.pub (give it to the hosts' --trusted-keys directory)"
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn sign(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let limit = crate::engine::Limits::default().max_module_bytes as u64;
    let module = crate::config_file::read_limited(&args.module, limit)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let (signed, id) =
        signing::sign(&args.key, &module).with_context(|| format!("signing {}", args.module.display()))?;
    let out = args.out.as_ref().unwrap_or(&args.module);
    crate::atomic_file::write(out, &signed).with_context(|| format!("writing {}", out.display()))?;
    println!("signed {} with key {id}: {}", out.display(), crate::engine::digest(&signed));
    Ok(ExitCode::SUCCESS)
}
