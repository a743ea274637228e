//! `cargo xtask <chore>`: see `--help`.

mod bench_leases;
mod bench_memory;
mod bench_registry;
mod bench_stream;
mod catalogs;
mod chaos;
mod demo;
mod demo_workers;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project chores")]
struct Cli {
    #[command(subcommand)]
    chore: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Build the reference rules into a module store: `<out>/default.wasm`.
    Modules {
        #[arg(long, default_value = "modules")]
        out: PathBuf,
    },
    /// Regenerate `catalogs/` from the GeoNames files in `catalogs/geonames/`.
    Catalogs,
    /// The main job end to end on local defaults: start a local Kinesis
    /// (unless AWS_ENDPOINT_URL is set), create the streams, run `offerd run`,
    /// write realistic sign-ups (some malformed), show live progress and a few
    /// offers, stop offerd cleanly.
    Demo {
        /// How many sign-ups to write.
        #[arg(long, default_value_t = 3000)]
        signups: usize,
        /// Sign-ups written per second.
        #[arg(long, default_value_t = 300)]
        rate: usize,
        /// Run this many workers sharing the stream through a lease table
        /// (dynalite): one is stopped with SIGTERM half-way, one killed with
        /// -9 later, and every sign-up is checked to come out.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// `offerd run` end to end against kinesis-local: put → output latency
    /// under steady load, backlog records/s, offerd CPU time per record.
    BenchStream {
        /// Sign-ups per second in the steady phase.
        #[arg(long, default_value_t = 200)]
        rate: usize,
        /// Length of the steady phase.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Sign-ups in the backlog phase.
        #[arg(long, default_value_t = 5000)]
        burst: usize,
        /// Passed to `offerd run`: how long a shard gathers records into one batch.
        #[arg(long, default_value_t = 0)]
        batch_window_ms: u64,
    },
    /// Several workers through leases (kinesis-local, dynalite): failover
    /// time after kill -9 (p50, p99), lease-table requests per worker per
    /// second at 8 and 64 shards, and host CPU per record with 1 and 3
    /// workers through kinesalite.
    BenchLeases {
        /// Failover trials.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Sign-ups in the CPU-per-record phase (through kinesalite).
        #[arg(long, default_value_t = 40_000)]
        backlog: usize,
    },
    /// Resident memory of `offerd run` through kinesalite: 5 regions, 50
    /// regions sharing a module, 50 regions with a module each, then 16
    /// shards; per-region and per-shard cost.
    BenchMemory,
    /// A fleet following one registry (kinesalite, dynalite, moto):
    /// publication → every worker serving (p50, p99), registry requests per
    /// worker per second when idle, idle CPU per worker with and without the
    /// registry.
    BenchRegistry {
        /// Publications timed.
        #[arg(long, default_value_t = 20)]
        publications: usize,
        /// Seconds of idle measured.
        #[arg(long, default_value_t = 20)]
        idle_secs: u64,
    },
    /// Crash trials: SIGKILL `offerd run` at random moments under load (some
    /// during a module publication), restart it each time, drain, and count
    /// records lost and duplicated.
    Chaos {
        /// How many times offerd is killed.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// How many sign-ups are written during the kills.
        #[arg(long, default_value_t = 3000)]
        signups: usize,
        /// Sign-ups written per second.
        #[arg(long, default_value_t = 100)]
        rate: usize,
    },
    /// The whole test suite, as CI runs it: format, lints, every test.
    Test,
}

fn main() -> Result<()> {
    match Cli::parse().chore {
        Chore::Modules { out } => {
            let component = xtask::build_component("offer-rules")?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let path = out.join("default.wasm");
            std::fs::write(&path, &component).with_context(|| format!("writing {}", path.display()))?;
            println!("{} ({} bytes)", path.display(), component.len());
            Ok(())
        }
        Chore::Catalogs => catalogs::generate(&xtask::workspace_root().join("catalogs")),
        Chore::Demo { signups, rate, workers: None } => demo::run(&demo::Options { signups, rate }),
        Chore::Demo { signups, rate, workers: Some(workers) } => {
            demo_workers::run(&demo_workers::Options { workers, signups, rate })
        }
        Chore::BenchStream { rate, seconds, burst, batch_window_ms } => {
            bench_stream::run(&bench_stream::Options { rate, seconds, burst, batch_window_ms })
        }
        Chore::BenchLeases { trials, backlog } => bench_leases::run(&bench_leases::Options { trials, backlog }),
        Chore::BenchMemory => bench_memory::run(),
        Chore::BenchRegistry { publications, idle_secs } => {
            bench_registry::run(&bench_registry::Options { publications, idle_secs })
        }
        Chore::Chaos { kills, signups, rate } => chaos::run(&chaos::Options { kills, signups, rate }),
        Chore::Test => test(),
    }
}

/// Installs the guest target if rustup is there, then runs the checks in order.
///
/// The stream tests need a Kinesis API and the lease tests a DynamoDB API:
/// kinesis-local and dynalite are installed with npm and started on loopback
/// here; tests find them through `OFFERD_TEST_KINESIS_ENDPOINT` and
/// `OFFERD_TEST_DYNAMODB_ENDPOINT`, and isolate themselves by account (Kinesis)
/// and table name (DynamoDB).
fn test() -> Result<()> {
    let root = xtask::workspace_root();
    xtask::ensure_guest_target()?;
    xtask::kinesis_local::npm_ci(&root)?;
    xtask::cargo(&["fmt", "--all", "--check"])?;
    xtask::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    xtask::moto::install(&root)?;
    let kinesis = xtask::kinesis_local::start(&root)?;
    let dynamodb = xtask::dynalite::start(&root)?;
    let s3 = xtask::moto::start(&root)?;
    xtask::cargo_with_env(
        &["test", "--workspace"],
        &[
            ("OFFERD_TEST_KINESIS_ENDPOINT", &kinesis.endpoint),
            ("OFFERD_TEST_DYNAMODB_ENDPOINT", &dynamodb.endpoint),
            ("OFFERD_TEST_S3_ENDPOINT", &s3.endpoint),
        ],
    )
}
