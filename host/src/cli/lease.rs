//! `offerd lease list`: who reads which shard, from where, as the lease
//! table says.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::stream;
use crate::stream::lease::{LeaseTable, Scanned};

#[derive(Subcommand)]
pub(super) enum LeaseCommand {
    /// Every lease: shard, owner, counter, checkpoint, parents, children,
    /// and a hand-off asked for.
    List(ListArgs),
}

#[derive(Args)]
pub(super) struct ListArgs {
    /// The lease table (as given to `offerd run --lease-table`).
    #[arg(long, value_name = "NAME")]
    table: String,
    /// One JSON object per lease instead of columns.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(command: &LeaseCommand) -> anyhow::Result<ExitCode> {
    let LeaseCommand::List(args) = command;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let Scanned { mut leases, mut malformed } = runtime.block_on(async {
        let sdk = stream::aws::sdk_config().await?;
        LeaseTable::existing(aws_sdk_dynamodb::Client::new(&sdk), &args.table).await?.scan().await
    })?;
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    malformed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = std::io::stdout().lock();
    if args.json {
        for l in &leases {
            let line = json!({
                "shard_id": l.key, "owner": l.owner, "counter": l.counter, "checkpoint": l.checkpoint,
                "checkpoint_sub_sequence": l.sub_sequence, "owner_switches_since_checkpoint": l.owner_switches,
                "parents": l.parents, "children": l.children, "handoff_to": l.handoff_to,
            });
            writeln!(out, "{line}")?;
        }
        for m in &malformed {
            writeln!(out, "{}", json!({ "shard_id": m.key, "malformed": m.why }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24} {:<24} {:>8}  {:<24} {:<36} handoff to",
        "shard", "owner", "counter", "checkpoint", "parents"
    )?;
    for l in &leases {
        writeln!(
            out,
            "{:<24} {:<24} {:>8}  {:<24} {:<36} {}",
            l.key,
            l.owner.as_deref().unwrap_or("-"),
            l.counter,
            abbreviate(&l.checkpoint),
            if l.parents.is_empty() { "-".to_owned() } else { l.parents.join(",") },
            l.handoff_to.as_deref().unwrap_or("-"),
        )?;
    }
    for m in &malformed {
        writeln!(out, "{:<24} UNUSABLE, its shard is not read: {}", m.key, m.why)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A 56-digit sequence number as its first and last digits.
fn abbreviate(checkpoint: &str) -> String {
    if checkpoint.len() > 24 && checkpoint.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}…{}", &checkpoint[..10], &checkpoint[checkpoint.len() - 10..])
    } else {
        checkpoint.to_owned()
    }
}
