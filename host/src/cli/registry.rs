//! The registry from the command line: where it is (`--registry-…`, shared
//! by `publish`, `rollback`, `registry` and `fleet`), its history, the
//! fleet's status, and waiting until a revision serves everywhere.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::registry::aws::AwsRegistry;
use crate::registry::fleet::FleetStatus;
use crate::registry::{Action, Registry, format_ms};

#[derive(Args, Clone)]
pub(super) struct RegistryArgs {
    /// The registry's DynamoDB table (created if missing).
    #[arg(long, value_name = "TABLE", requires = "registry_bucket")]
    pub registry_table: Option<String>,
    /// The registry's S3 bucket.
    #[arg(long, value_name = "BUCKET", requires = "registry_table")]
    pub registry_bucket: Option<String>,
    /// Key prefix of the registry's objects [default: none].
    #[arg(long, value_name = "PREFIX", requires = "registry_table")]
    pub registry_prefix: Option<String>,
}

impl RegistryArgs {
    pub fn given(&self) -> bool {
        self.registry_table.is_some()
    }

    /// Opens the registry these flags name.
    ///
    /// # Errors
    /// A flag is missing, or the table or bucket cannot be used.
    pub async fn open(&self) -> anyhow::Result<AwsRegistry> {
        let (Some(table), Some(bucket)) = (&self.registry_table, &self.registry_bucket) else {
            anyhow::bail!("--registry-table and --registry-bucket are required");
        };
        let location = super::run_settings::registry_location(
            table.clone(),
            bucket.clone(),
            self.registry_prefix.clone().unwrap_or_default(),
        )
        .context("--registry-prefix")?;
        let sdk = crate::stream::aws::sdk_config().await?;
        let (dynamodb, s3) = crate::registry::aws::clients(&sdk);
        AwsRegistry::open(location, dynamodb, s3).await
    }
}

#[derive(Subcommand)]
pub(super) enum RegistryCommand {
    /// A region's revisions, newest first: who published what, when, and roll-backs.
    History(HistoryArgs),
}

#[derive(Args)]
pub(super) struct HistoryArgs {
    #[arg(long, value_name = "REGION")]
    region: String,
    /// The region's item as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Subcommand)]
pub(super) enum FleetCommand {
    /// Per region: the desired revision, the workers serving it, those
    /// serving something else and why, silent workers, how long the last
    /// publication took to reach every worker.
    Status(StatusArgs),
}

#[derive(Args)]
pub(super) struct StatusArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

pub(super) fn registry(command: &RegistryCommand) -> anyhow::Result<ExitCode> {
    let RegistryCommand::History(args) = command;
    runtime()?.block_on(async {
        let registry = args.registry.open().await?;
        let Some(state) = registry.region(&args.region).await? else {
            anyhow::bail!("{} has no revision in the {}", args.region, registry.describe());
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&state).expect("a region state always serialises"));
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:>8}  {:<25}  {:<20}  {:<24}  {:<14}  module", "revision", "published", "by", "rule", "action");
        for r in std::iter::once(&state.current).chain(&state.history) {
            let action = match r.action {
                Action::Publish => "publish".to_owned(),
                Action::Catalog => "catalog".to_owned(),
                Action::Rollback { to } => format!("rollback to {to}"),
            };
            let rule = format!("{} {}", r.rule_name, r.rule_version);
            let at = format_ms(r.published_at_ms);
            println!("{:>8}  {at:<25}  {:<20}  {rule:<24}  {action:<14}  {}", r.revision, r.publisher, r.module);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(super) fn fleet(command: &FleetCommand) -> anyhow::Result<ExitCode> {
    let FleetCommand::Status(args) = command;
    runtime()?.block_on(async {
        let registry = args.registry.open().await?;
        let status = FleetStatus::read(&registry).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status).expect("a fleet status always serialises"));
        } else {
            print_status(&status);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_status(status: &FleetStatus) {
    println!("live workers: {}", if status.live.is_empty() { "none".into() } else { status.live.join(", ") });
    if !status.silent.is_empty() {
        println!("silent workers: {}", status.silent.join(", "));
    }
    for r in &status.regions {
        let reached =
            r.reached_all_after_ms.map(|ms| format!(", reached every live worker in {ms} ms")).unwrap_or_default();
        println!(
            "{}: revision {} ({}, {}) by {} at {}{reached}",
            r.region, r.revision, r.rule, r.module, r.publisher, r.published_at
        );
        println!("  serving: {}", if r.serving.is_empty() { "none".into() } else { r.serving.join(", ") });
        for (worker, why) in &r.refused {
            println!("  refused by {worker}: {why}");
        }
        for (worker, what) in &r.elsewhere {
            println!("  {worker}: {what}");
        }
    }
}

/// Waits until every live worker serves `revision` of `region` (exit 0),
/// or one refused it or `timeout` passed (exit 1, naming the workers).
///
/// # Errors
/// The registry stayed unreachable until the timeout.
pub(super) async fn wait(
    registry: &dyn Registry,
    region: &str,
    revision: u64,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    loop {
        match FleetStatus::read(registry).await {
            Ok(status) => {
                let Some(fleet) = status.region(region).filter(|f| f.revision >= revision) else {
                    anyhow::bail!("{region} is not at revision {revision} in the registry");
                };
                if fleet.revision > revision {
                    eprintln!("{region} moved on to revision {} while waiting", fleet.revision);
                    return Ok(ExitCode::FAILURE);
                }
                if !fleet.refused.is_empty() {
                    for (worker, why) in &fleet.refused {
                        eprintln!("{worker} refused revision {revision} of {region}: {why}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
                if status.live.is_empty() {
                    eprintln!("no live worker follows the registry: revision {revision} of {region} serves nowhere");
                    return Ok(ExitCode::FAILURE);
                }
                if fleet.elsewhere.is_empty() {
                    let after = fleet
                        .reached_all_after_ms
                        .map(|ms| format!(" ({ms} ms after publication)"))
                        .unwrap_or_default();
                    eprintln!(
                        "revision {revision} of {region} serves on all {} live workers{after}",
                        fleet.serving.len()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                if Instant::now() >= deadline {
                    eprintln!("revision {revision} of {region} does not serve everywhere after {timeout:?}:");
                    for (worker, what) in &fleet.elsewhere {
                        eprintln!("  {worker}: {what}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("waiting for revision {revision} of {region}: {e}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
