//! `offerd publish` and `offerd rollback`: validate a module where it is
//! built, then install it into a module store or a running offerd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;

use super::EngineArgs;
use crate::catalog::Catalogs;
use crate::module_store::ModuleStore;
use crate::rollout;
use crate::{admin, golden};

#[derive(Args)]
pub(super) struct PublishArgs {
    /// The region the module is for.
    #[arg(long, value_name = "REGION")]
    region: String,
    /// The component to publish.
    #[arg(value_name = "FILE")]
    module: PathBuf,
    /// Catalog directory to validate against (`regions.toml`, `<region>.toml`).
    #[arg(long, value_name = "DIR")]
    catalogs: PathBuf,
    /// Golden cases the module must pass; with --to, installed beside it as
    /// `<region>.cases.json` so every later publication is gated on them too.
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Install into this module store (a running offerd watching it picks it up).
    #[arg(long, value_name = "DIR", conflicts_with = "admin_url", required_unless_present = "admin_url")]
    to: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
pub(super) struct RollbackArgs {
    /// The region to put back on its previous module.
    #[arg(long, value_name = "REGION")]
    region: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct AdminArgs {
    /// The admin API of a running offerd (`https://offerd.internal:9101`, or
    /// `http://127.0.0.1:9101` on loopback).
    #[arg(long, value_name = "URL", requires = "admin_token_file")]
    admin_url: Option<String>,
    /// File holding the admin API's bearer token.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Also trust the PEM certificates in this file for https:// (a private
    /// CA, or the admin API's own self-signed certificate).
    #[arg(long, value_name = "FILE")]
    admin_ca: Option<PathBuf>,
}

/// How long an admin call may take in all: a publication is compiled and
/// gated (golden cases, smoke batch) before it answers.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let region = &args.region;
    let catalog = Catalogs::load_region_file(&args.catalogs.join(format!("{region}.toml")))?;
    let bytes = std::fs::read(&args.module).with_context(|| format!("reading {}", args.module.display()))?;
    let cases = match &args.cases {
        Some(file) => golden::load(std::slice::from_ref(file))?,
        None => Vec::new(),
    };
    let engine = args.engine.engine()?;
    let rules = rollout::gate(&engine, &bytes, Arc::new(catalog), &cases)
        .with_context(|| format!("{} refused for {region}", args.module.display()))?;
    let info = rules.module().info();
    eprintln!(
        "validated {} {} ({}) for {region}: {} golden cases passed",
        info.name,
        info.version,
        info.digest,
        cases.len()
    );
    if let Some(dir) = &args.to {
        let store = ModuleStore::open(dir)?;
        // Cases first: the watcher gates the module on them as it arrives.
        if let Some(file) = &args.cases {
            let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let target = store.cases_file(region);
            crate::atomic_file::write(&target, &text).with_context(|| format!("writing {}", target.display()))?;
        }
        store.install(region, &bytes).with_context(|| format!("installing {region}.wasm into {}", dir.display()))?;
        eprintln!("installed into {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (url, token) = args.admin.target()?;
    let path = format!("/v1/regions/{region}/module");
    runtime()?.block_on(call(&args.admin, &url, &token, Method::PUT, &path, bytes))
}

pub(super) fn rollback(args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let (url, token) = args.admin.target()?;
    let path = format!("/v1/regions/{}/rollback", args.region);
    runtime()?.block_on(call(&args.admin, &url, &token, Method::POST, &path, Vec::new()))
}

impl AdminArgs {
    fn target(&self) -> anyhow::Result<(String, String)> {
        let (Some(url), Some(token_file)) = (&self.admin_url, &self.admin_token_file) else {
            bail!("--admin-url and --admin-token-file are required");
        };
        Ok((url.trim_end_matches('/').to_owned(), admin::read_token(token_file)?))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

/// One admin API call; prints the answer, exit status 0 only for a 2xx.
async fn call(
    admin: &AdminArgs,
    url: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<ExitCode> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("--admin-url {url:?}: give an http:// or https:// URL");
    }
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(crate::tls::client_config(admin.admin_ca.as_deref())?)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let response = client
        .request(method, format!("{url}{path}"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .with_context(|| format!("calling {url}{path}"))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("reading the answer of {url}{path}"))?;
    if status.is_success() {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{status}: {text}");
        Ok(ExitCode::FAILURE)
    }
}
