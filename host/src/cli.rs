//! The `offerd` command line: parse, set up tracing, call the library.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::catalog::Catalogs;
use crate::engine::{Engine, Limits, ModuleCache};
use crate::enricher::{Enricher, Outcome};
use crate::registry::aws::AwsRegistry;
use crate::signing::TrustedKeys;
use crate::{admin, http_server, module_store, service, stream};
use run_settings::{RulesFrom, RunSettings};

mod build;
mod diff;
mod lease;
mod new_rule;
mod publish;
mod registry;
mod run_settings;
mod sign;
mod test;
mod wit;

/// Exit status when the set-up (files, modules, catalogs) is unusable.
const EXIT_SETUP: u8 = 2;

#[derive(Parser)]
#[command(
    name = "offerd",
    version,
    about = "Enriches sign-ups with regional offers computed by WebAssembly rule modules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrich JSON-lines sign-ups: one offer record or dead letter per input line.
    Enrich(EnrichArgs),
    /// Run golden cases against a module and a region's catalog.
    Test(test::TestArgs),
    /// Consume a Kinesis stream of sign-ups until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Validate a module for a region (contract, init with the catalog, golden
    /// cases, smoke batch), then install it into a module store, a running
    /// offerd, or the registry a fleet follows.
    Publish(publish::PublishArgs),
    /// Put a region of a running offerd, or of the registry, back on an earlier module.
    Rollback(publish::RollbackArgs),
    /// Compare two modules on the same sign-ups: offers added, removed,
    /// re-priced, re-ranked, rejections and failures; exit 1 when they differ.
    Diff(Box<diff::DiffArgs>),
    /// Write the WIT contract this offerd speaks, for a rule crate's `wit_bindgen::generate!`.
    Wit(wit::WitArgs),
    /// Create a standalone offer-rule crate: contract, a small real rule,
    /// native unit tests, catalogs and passing golden cases.
    NewRule(new_rule::NewRuleArgs),
    /// Build a rule crate into a component (cargo + built-in wit-component)
    /// and check it as a publication would be.
    Build(build::BuildArgs),
    /// Make an ed25519 key pair for signing modules.
    Keygen(sign::KeygenArgs),
    /// Sign a module (wasmsign2 format) so hosts with `--trusted-keys` accept it.
    Sign(sign::SignArgs),
    /// Inspect the module registry a fleet follows.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// What every worker following the registry serves.
    #[command(subcommand)]
    Fleet(registry::FleetCommand),
    /// Inspect the lease table that workers share a stream through.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
}

#[derive(Args)]
struct RunArgs {
    /// TOML file with any of the settings below as keys (`batch-size = 500`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: RunSettings,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The engine every module runs on: bounds on every call (production
/// defaults) and the keys modules must be signed by.
#[derive(Args, Clone)]
struct EngineArgs {
    /// Directory of trusted public keys (`<key-id>.pub`, from `offerd keygen`):
    /// when set, a module not signed by one of them is refused.
    #[arg(long, value_name = "DIR")]
    trusted_keys: Option<PathBuf>,
    /// Keep compiled modules in this directory (created mode 0700; it must
    /// be this user's alone), so a restart loads them without compiling.
    #[arg(long, value_name = "DIR")]
    module_cache: Option<PathBuf>,
    /// Longest a module call (a whole batch) may run.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().call_timeout.as_millis() as u64)]
    call_timeout_ms: u64,
    /// Most linear memory a module instance may hold.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().memory_bytes >> 20)]
    memory_limit_mib: usize,
    /// Time a batch (all its regions and chunks) may take before modules
    /// that failed in it get no more calls; their records not served by then
    /// fail as module-timeout.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().batch_budget.as_millis() as u64)]
    batch_budget_ms: u64,
    /// Largest module accepted.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().max_module_bytes >> 20)]
    max_module_mib: usize,
}

impl EngineArgs {
    fn engine(&self) -> anyhow::Result<Engine> {
        Ok(Engine::new(self.limits())?.trusting(self.trusted_keys()?).caching(self.module_cache()?))
    }

    fn module_cache(&self) -> anyhow::Result<Option<Arc<ModuleCache>>> {
        self.module_cache.as_deref().map(|dir| ModuleCache::open(dir).map(Arc::new)).transpose()
    }

    fn trusted_keys(&self) -> anyhow::Result<Option<Arc<TrustedKeys>>> {
        self.trusted_keys.as_deref().map(|dir| TrustedKeys::load(dir).map(Arc::new)).transpose()
    }

    fn limits(&self) -> Limits {
        Limits {
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            memory_bytes: self.memory_limit_mib << 20,
            batch_budget: Duration::from_millis(self.batch_budget_ms),
            max_module_bytes: self.max_module_mib << 20,
        }
    }
}

#[derive(Args)]
struct EnrichArgs {
    /// Module store: `<region>.wasm` per region, `default.wasm` for the rest.
    #[arg(long, value_name = "DIR")]
    modules: PathBuf,
    /// Catalog directory: `regions.toml` and `<region>.toml`.
    #[arg(long, value_name = "DIR")]
    catalogs: PathBuf,
    /// Sign-ups, one JSON object per line [default: stdin].
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Offer records [default: stdout].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Dead letters [default: stderr].
    #[arg(long, value_name = "FILE")]
    dead_letters: Option<PathBuf>,
    /// Records per module call.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `offerd` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OFFERD_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let result = match cli.command {
        Command::Enrich(args) => enrich(&args),
        Command::Test(args) => test::run(&args),
        Command::Run(args) => run(*args),
        Command::Publish(args) => publish::publish(&args),
        Command::Rollback(args) => publish::rollback(&args),
        Command::Lease(command) => lease::run(&command),
        Command::Registry(command) => registry::registry(&command),
        Command::Fleet(command) => registry::fleet(&command),
        Command::Wit(args) => wit::run(&args),
        Command::Diff(args) => diff::run(&args),
        Command::NewRule(args) => new_rule::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Keygen(args) => sign::keygen(&args),
        Command::Sign(args) => sign::sign(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn create(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    Ok(Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?))
}

fn enrich(args: &EnrichArgs) -> anyhow::Result<ExitCode> {
    let catalogs = Arc::new(Catalogs::load(&args.catalogs)?);
    let engine = args.engine.engine()?;
    let loaded = module_store::load(&engine, &args.modules, &catalogs)?;
    let enricher = Enricher::new(catalogs, loaded);

    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => {
            Box::new(BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?))
        }
        None => Box::new(io::stdin().lock()),
    };
    let mut output = BufWriter::new(match &args.output {
        Some(path) => create(path)?,
        None => Box::new(io::stdout().lock()),
    });
    let mut dead_letters = BufWriter::new(match &args.dead_letters {
        Some(path) => create(path)?,
        None => Box::new(io::stderr()),
    });

    let mut lines = LineBatches { input, batch_size: args.batch_size as usize };
    let (mut offers, mut dead) = (0u64, BTreeMap::<&str, u64>::new());
    while let Some(batch) = lines.next_batch().context("reading sign-ups")? {
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        for outcome in enricher.enrich(&refs).outcomes {
            match outcome {
                Outcome::Offer { line, .. } => {
                    offers += 1;
                    output.write_all(&line)?;
                    output.write_all(b"\n")?;
                }
                Outcome::DeadLetter { reason, line } => {
                    *dead.entry(reason.as_str()).or_default() += 1;
                    dead_letters.write_all(&line)?;
                    dead_letters.write_all(b"\n")?;
                }
            }
        }
    }
    output.flush().context("writing offers")?;
    dead_letters.flush().context("writing dead letters")?;
    tracing::info!(offers, dead_letters = dead.values().sum::<u64>(), by_reason = ?dead, "enrich done");
    Ok(ExitCode::SUCCESS)
}

/// Reads lines as bytes (input need not be UTF-8), without the line ending.
struct LineBatches {
    input: Box<dyn BufRead>,
    batch_size: usize,
}

/// Longest line kept whole: one byte past the largest sign-up, so an
/// over-long line is still refused as too large, without holding a hostile
/// multi-gigabyte line in memory.
const MAX_LINE: usize = crate::signup::MAX_RECORD_BYTES + 1;

impl LineBatches {
    fn next_batch(&mut self) -> io::Result<Option<Vec<Vec<u8>>>> {
        let mut batch = Vec::with_capacity(self.batch_size);
        while batch.len() < self.batch_size {
            let Some(mut line) = self.next_line()? else { break };
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            batch.push(line);
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// The next line without its newline, cut at [`MAX_LINE`] bytes (the
    /// rest of it is skipped); `None` at the end.
    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let mut any = false;
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Ok(any.then_some(line));
            }
            any = true;
            let (chunk, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = end.unwrap_or(buf.len());
            self.input.consume(used);
            if end.is_some() {
                return Ok(Some(line));
            }
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings.resolve(args.config.as_deref())?;
    let trusted_keys = args.engine.trusted_keys()?;
    let module_cache = args.engine.module_cache()?;
    let admin_token = settings.admin_token_file.as_deref().map(admin::read_token).transpose()?;
    let admin_tls = settings.admin_tls.as_ref().map(|(cert, key)| crate::tls::server_config(cert, key)).transpose()?;
    http_server::raise_descriptor_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let sdk = stream::aws::sdk_config().await?;
        let checkpoints = match settings.leases {
            None => service::Checkpoints::File(settings.checkpoints),
            Some(leases) => {
                // Every lease write answers within half a lease, retries
                // included, or fails: a renewal stuck in the SDK must not
                // outlive the lease it renews.
                let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(leases.duration / 2)
                    .operation_attempt_timeout(leases.renew_every)
                    .build();
                let config = aws_sdk_dynamodb::config::Builder::from(&sdk).timeout_config(timeouts).build();
                service::Checkpoints::Leases { settings: leases, client: aws_sdk_dynamodb::Client::from_conf(config) }
            }
        };
        let rules = match settings.rules {
            RulesFrom::Registry(registry) => {
                let (dynamodb, s3) = crate::registry::aws::clients(&sdk);
                let opened = AwsRegistry::open(registry.location, dynamodb, s3).await?;
                service::Rules::Registry(service::Following {
                    registry: Arc::new(opened),
                    state_dir: registry.state_dir,
                    poll_every: registry.poll_every,
                    worker: settings.worker_id.clone(),
                })
            }
            RulesFrom::Modules(modules) => service::Rules::Directory(modules),
        };
        let service_settings = service::Settings {
            stream: settings.stream,
            rules,
            catalogs: settings.catalogs,
            checkpoints,
            limits: args.engine.limits(),
            trusted_keys,
            module_cache,
            stall_after: settings.stall_after,
        };
        let mut listeners = service::Listeners::default();
        if let Some(addr) = settings.metrics_addr {
            listeners.metrics = Some(http_server::bind(addr, "--metrics-addr").await?);
        }
        if let (Some(addr), Some(token)) = (settings.admin_addr, admin_token) {
            let listener = http_server::bind(addr, "--admin-addr").await?;
            listeners.admin = Some(service::AdminEndpoint { listener, token, tls: admin_tls });
        }
        let client = aws_sdk_kinesis::Client::new(&sdk);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing a SIGTERM handler")?;
        let signal = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        service::run(service_settings, listeners, client, signal).await?;
        tracing::info!("stopped cleanly");
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_line_is_cut_and_the_next_lines_are_read_whole() {
        let mut input = vec![b'x'; 10 * MAX_LINE];
        input.extend_from_slice(b"\nsecond\r\nthird");
        let mut lines = LineBatches { input: Box::new(io::Cursor::new(input)), batch_size: 10 };
        let batch = lines.next_batch().unwrap().unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].len(), MAX_LINE);
        assert_eq!(batch[1], b"second");
        assert_eq!(batch[2], b"third");
        assert!(lines.next_batch().unwrap().is_none());
    }
}
