//! `offerd publish` and `offerd rollback`: validate a module where it is
//! built, then install it into a module store or a running offerd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;

use super::EngineArgs;
use super::registry::{RegistryArgs, runtime};
use crate::catalog::Catalogs;
use crate::module_store::ModuleStore;
use crate::{admin, golden};
use crate::{registry, rollout};

#[derive(Args)]
pub(super) struct PublishArgs {
    /// The region the module is for.
    #[arg(long, value_name = "REGION")]
    region: String,
    /// The component to publish; with a registry, may be left out to
    /// publish a new --catalog for the module that serves.
    #[arg(value_name = "FILE", required_unless_present = "catalog")]
    module: Option<PathBuf>,
    /// With a registry: the region's catalog to publish with the module
    /// [default: the one the region has, or <catalogs>/<region>.toml for its first revision].
    #[arg(long, value_name = "FILE", requires = "registry_table")]
    catalog: Option<PathBuf>,
    /// Catalog directory to validate against (`regions.toml`, `<region>.toml`).
    #[arg(long, value_name = "DIR")]
    catalogs: PathBuf,
    /// Golden cases the module must pass; with --to, installed beside it as
    /// `<region>.cases.json` so every later publication is gated on them too.
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Install into this module store (a running offerd watching it picks it up).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["admin_url", "registry_table"],
        required_unless_present_any = ["admin_url", "registry_table"]
    )]
    to: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    revision: RevisionArgs,
    /// With a registry: refuse unless the region is at this revision (0:
    /// none yet), so a pipeline never overwrites a change it has not seen.
    #[arg(long, value_name = "N", requires = "registry_table")]
    expect_revision: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Who changes a registry and whether to wait for the fleet.
#[derive(Args)]
struct RevisionArgs {
    /// Recorded with the revision [default: user@host].
    #[arg(long, value_name = "NAME", requires = "registry_table")]
    publisher: Option<String>,
    /// Return when every live worker serves the new revision (exit 0), or
    /// one refused it or the time ran out (exit 1, naming the workers).
    #[arg(long, requires = "registry_table")]
    wait: bool,
    #[arg(long, value_name = "SECONDS", default_value_t = 30, requires = "wait")]
    wait_timeout_secs: u64,
}

impl RevisionArgs {
    fn publisher(&self) -> String {
        self.publisher.clone().unwrap_or_else(registry::publish::default_publisher)
    }
}

#[derive(Args)]
pub(super) struct RollbackArgs {
    /// The region to put back on its previous module.
    #[arg(long, value_name = "REGION")]
    region: String,
    /// With a registry: the revision to go back to [default: the one before the current one].
    #[arg(long = "to", value_name = "REVISION", requires = "registry_table")]
    to_revision: Option<u64>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    revision: RevisionArgs,
}

#[derive(Args)]
struct AdminArgs {
    /// The admin API of a running offerd (`https://offerd.internal:9101`, or
    /// `http://127.0.0.1:9101` on loopback).
    #[arg(long, value_name = "URL", requires = "admin_token_file", conflicts_with = "registry_table")]
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
    let cases = match &args.cases {
        Some(file) => golden::load(std::slice::from_ref(file))?,
        None => Vec::new(),
    };
    let engine = args.engine.engine()?;
    let read = |file: &std::path::Path| std::fs::read(file).with_context(|| format!("reading {}", file.display()));
    if args.registry.given() {
        let catalogs = Catalogs::load(&args.catalogs)?;
        let publication = registry::publish::Publication {
            region: region.clone(),
            module: args.module.as_deref().map(read).transpose()?,
            catalog: args.catalog.as_deref().map(read).transpose()?,
            publisher: args.revision.publisher(),
            expect_revision: args.expect_revision,
        };
        return runtime()?.block_on(async {
            let registry = args.registry.open().await?;
            let published =
                registry::publish::publish(&registry, &engine, &catalogs, &args.catalogs, &cases, publication).await?;
            let current = &published.state.current;
            if published.changed {
                eprintln!(
                    "{region} is at revision {}: {} {} ({}), catalog {}",
                    current.revision, current.rule_name, current.rule_version, current.module, current.catalog
                );
            } else {
                eprintln!("{region} serves these bytes already, at revision {}: nothing published", current.revision);
            }
            println!("{}", serde_json::to_string(current).expect("a revision always serialises"));
            finish(&registry, region, current.revision, &args.revision).await
        });
    }
    let Some(module) = &args.module else { bail!("give the module to publish") };
    let catalog = Catalogs::load_region_file(&args.catalogs.join(format!("{region}.toml")))?;
    let bytes = read(module)?;
    let rules = rollout::gate(&engine, &bytes, Arc::new(catalog), &cases)
        .with_context(|| format!("{} refused for {region}", module.display()))?;
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
    if args.registry.given() {
        return runtime()?.block_on(async {
            let registry = args.registry.open().await?;
            let state =
                registry::publish::rollback(&registry, &args.region, args.to_revision, args.revision.publisher())
                    .await?;
            let current = &state.current;
            eprintln!(
                "{} is at revision {}: back to {} {} ({})",
                args.region, current.revision, current.rule_name, current.rule_version, current.module
            );
            println!("{}", serde_json::to_string(current).expect("a revision always serialises"));
            finish(&registry, &args.region, current.revision, &args.revision).await
        });
    }
    let (url, token) = args.admin.target()?;
    let path = format!("/v1/regions/{}/rollback", args.region);
    runtime()?.block_on(call(&args.admin, &url, &token, Method::POST, &path, Vec::new()))
}

/// Exit 0, or with `--wait`, the fleet's answer.
async fn finish(
    registry: &dyn crate::registry::Registry,
    region: &str,
    revision: u64,
    args: &RevisionArgs,
) -> anyhow::Result<ExitCode> {
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    super::registry::wait(registry, region, revision, std::time::Duration::from_secs(args.wait_timeout_secs)).await
}

impl AdminArgs {
    fn target(&self) -> anyhow::Result<(String, String)> {
        let (Some(url), Some(token_file)) = (&self.admin_url, &self.admin_token_file) else {
            bail!("--admin-url and --admin-token-file are required");
        };
        Ok((url.trim_end_matches('/').to_owned(), admin::read_token(token_file)?))
    }
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
