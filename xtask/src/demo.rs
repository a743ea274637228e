//! `cargo xtask demo`: the main job end to end on local defaults. Starts
//! kinesis-local (unless `AWS_ENDPOINT_URL` is set), creates the streams,
//! runs `offerd run`, writes realistic sign-ups at a steady rate, shows live
//! progress from offerd's metrics, prints a few offers and stops offerd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use serde_json::Value;

use xtask::kinesis_local::{self, npm_ci};

/// Longest the demo waits for offerd to catch up after the last put.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Options {
    pub signups: usize,
    /// Sign-ups written per second.
    pub rate: usize,
}

/// The three streams of one demo run; named per run so a long-lived server
/// (`AWS_ENDPOINT_URL`) never mixes runs.
pub(crate) struct Streams {
    pub input: String,
    pub output: String,
    pub dead_letters: String,
}

/// The offerd binary this run of xtask starts, set by [`build_offerd`].
static OFFERD: OnceLock<PathBuf> = OnceLock::new();

/// Builds offerd: the dev build for the demo and the crash trials, the
/// release build for the benches that measure its CPU (the dev build leaves
/// the AWS SDK unoptimised).
pub(crate) fn build_offerd(release: bool) -> Result<()> {
    let root = xtask::workspace_root();
    let (args, binary): (&[&str], _) = if release {
        (&["build", "--quiet", "--release", "--package", "offerd"], root.join("target/release/offerd"))
    } else {
        (&["build", "--quiet", "--package", "offerd"], root.join("target/debug/offerd"))
    };
    xtask::cargo(args)?;
    let chosen = OFFERD.get_or_init(|| binary.clone());
    anyhow::ensure!(*chosen == binary, "offerd was already built as {}", chosen.display());
    Ok(())
}

fn offerd_binary() -> &'static Path {
    OFFERD.get().expect("build_offerd runs before offerd is started")
}

/// The `offerd` binary [`build_offerd`] built, to run one of its commands.
pub(crate) fn offerd_cli() -> Command {
    Command::new(offerd_binary())
}

pub fn run(options: &Options) -> Result<()> {
    let root = xtask::workspace_root();
    let work = root.join("target/demo");
    let modules = work.join("modules");
    std::fs::create_dir_all(&modules)?;
    xtask::ensure_guest_target()?;
    println!("building the reference rules module and offerd…");
    // Version 0.2.0 of the same rules, published into the running offerd
    // for one region half-way through.
    let v2 = work.join("europe-v2.wasm");
    std::fs::write(&v2, xtask::build_component_as("offer-rules", Some(V2))?)?;
    std::fs::write(modules.join("default.wasm"), xtask::build_component("offer-rules")?)?;
    let _ = std::fs::remove_file(modules.join("europe.wasm"));
    let token_file = work.join("admin-token");
    std::fs::write(&token_file, format!("demo-{}\n", demo_token()))?;
    build_offerd(false)?;

    // A local Kinesis unless the caller points at one.
    let (_server, endpoint) = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(endpoint) => (None, endpoint),
        Err(_) => {
            if !root.join("node_modules/kinesis-local/main.js").is_file() {
                npm_ci(&root)?;
            }
            let server = kinesis_local::start(&root)?;
            println!("kinesis-local listening on {}", server.endpoint);
            let endpoint = server.endpoint.clone();
            (Some(server), endpoint)
        }
    };
    // Local servers take any credentials; real ones come from the usual chain.
    let local = std::env::var("AWS_ENDPOINT_URL").is_err();
    let aws_env: Vec<(&str, String)> = if local { local_aws_env(&endpoint, None) } else { Vec::new() };
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let streams = Streams {
        input: format!("demo-{run_id}-signups"),
        output: format!("demo-{run_id}-offers"),
        dead_letters: format!("demo-{run_id}-dead-letters"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        for (name, shards) in [(&streams.input, 4), (&streams.output, 2), (&streams.dead_letters, 1)] {
            create_stream(&client, name, shards).await?;
        }
        println!("streams: {} (4 shards) → {} + {}", streams.input, streams.output, streams.dead_letters);
        let metrics_addr = free_addr()?;
        let checkpoints = work.join("checkpoints.json");
        let _ = std::fs::remove_file(&checkpoints);
        let admin_addr = free_addr()?;
        let admin = ["--admin-addr", &admin_addr, "--admin-token-file", token_file.to_str().context("UTF-8 path")?];
        let offerd =
            spawn_offerd(&root, &streams, Some(&modules), Some(&checkpoints), &metrics_addr, &aws_env, &admin)?;
        println!("admin API on http://{admin_addr} (bearer token in {})", token_file.display());
        let publish = Publish { root: &root, module: &v2, admin: &admin_addr, token_file: &token_file };
        let result = drive(&client, &streams, &root, options, &metrics_addr, &publish).await;
        stop(offerd)?;
        result?;
        show_samples(&client, &streams).await
    })
}

/// The environment that points `offerd` and this crate's SDK clients at local
/// servers, which take any credentials; DynamoDB's too when leases are used.
pub(crate) fn local_aws_env(kinesis: &str, dynamodb: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_ENDPOINT_URL", kinesis.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "local".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_owned()),
    ];
    if let Some(dynamodb) = dynamodb {
        env.push(("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.to_owned()));
    }
    env
}

pub(crate) async fn client(aws_env: &[(&str, String)]) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let get = |key: &str| aws_env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    if let Some(endpoint) = get("AWS_ENDPOINT_URL") {
        loader = loader
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new("demo", "demo", None, None, "demo"));
    }
    Client::new(&loader.load().await)
}

pub(crate) async fn create_stream(client: &Client, name: &str, shards: i32) -> Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_kinesis::error::DisplayErrorContext(e)))
        .with_context(|| format!("creating stream {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = client.describe_stream_summary().stream_name(name).send().await?;
        if d.stream_description_summary().is_some_and(|s| s.stream_status() == &StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("stream {name} did not become active within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn spawn_offerd(
    root: &Path,
    streams: &Streams,
    modules: Option<&Path>,
    checkpoints: Option<&Path>,
    metrics_addr: &str,
    aws_env: &[(&str, String)],
    extra: &[&str],
) -> Result<Child> {
    let mut command = offerd_command(streams, modules, metrics_addr, aws_env);
    command.arg("--catalogs").arg(root.join("catalogs")).args(extra);
    if let Some(checkpoints) = checkpoints {
        command.arg("--checkpoints").arg(checkpoints);
    }
    command.spawn().context("starting offerd")
}

/// `offerd run` (as [`build_offerd`] built it) on these streams and modules
/// (none: the caller gives a registry), without `--catalogs`: the caller
/// adds it and whatever else it needs.
pub(crate) fn offerd_command(
    streams: &Streams,
    modules: Option<&Path>,
    metrics_addr: &str,
    aws_env: &[(&str, String)],
) -> Command {
    let mut command = Command::new(offerd_binary());
    command
        .args(["run", "--input-stream", &streams.input, "--output-stream", &streams.output])
        .args(["--dead-letter-stream", &streams.dead_letters, "--metrics-addr", metrics_addr])
        .env("OFFERD_LOG", std::env::var("OFFERD_LOG").unwrap_or_else(|_| "warn".into()));
    if let Some(modules) = modules {
        command.arg("--modules").arg(modules);
    }
    for (key, value) in aws_env {
        command.env(key, value);
    }
    command
}

/// Writes the sign-ups at the configured rate while printing progress once a
/// second, then waits until every one came out as an offer or dead letter.
/// The mid-run publication of europe's v2 through `offerd publish`.
struct Publish<'a> {
    root: &'a Path,
    module: &'a Path,
    admin: &'a str,
    token_file: &'a Path,
}

impl Publish<'_> {
    /// Validates locally (europe's golden cases included), then uploads.
    fn run(&self) -> Result<()> {
        let status = offerd_cli()
            .args(["publish", "--region", "europe"])
            .arg(self.module)
            .arg("--catalogs")
            .arg(self.root.join("catalogs"))
            .arg("--cases")
            .arg(self.root.join("guest/cases/europe.json"))
            .args(["--admin-url", &format!("http://{}", self.admin), "--admin-token-file"])
            .arg(self.token_file)
            .status()?;
        if !status.success() {
            bail!("offerd publish failed ({status})");
        }
        Ok(())
    }
}

/// The rules version the demo publishes for europe mid-run.
pub(crate) const V2: &str = "0.2.0";

/// Not a secret worth more: the demo's API listens on loopback for its run only.
fn demo_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

async fn drive(
    client: &Client,
    streams: &Streams,
    root: &Path,
    options: &Options,
    metrics: &str,
    publish: &Publish<'_>,
) -> Result<()> {
    // One in fifty is malformed on purpose, to show the dead letters.
    let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 2026)?;
    let signups = generator.batch(options.signups, Some(50));
    println!(
        "writing {} sign-ups at {}/s (one in 50 malformed on purpose); progress from offerd's /metrics:",
        options.signups, options.rate
    );
    let started = Instant::now();
    let mut sent = 0;
    let mut last = Progress::default();
    let mut last_tick = Instant::now();
    let mut drained_by: Option<Instant> = None;
    let per_tick = (options.rate / 10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if sent < signups.len() {
            let end = (sent + per_tick).min(signups.len());
            put(client, &streams.input, &signups[sent..end]).await?;
            if sent < signups.len() / 2 && end >= signups.len() / 2 {
                println!("  publishing europe's rules v{V2} into the running offerd:");
                publish.run()?;
            }
            sent = end;
        }
        if last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let now = Progress::scrape(metrics).unwrap_or_default();
        let rate = (now.read - last.read) as f64 / last_tick.elapsed().as_secs_f64();
        let regions: Vec<String> = now.offers_by_rules.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!(
            "  {:>4.0}s  sent {sent:>6}  read {:>6} ({rate:>5.0}/s)  lag {:>5} ms  offers {:>6}  dead letters {:>4}  | {}",
            started.elapsed().as_secs_f64(),
            now.read,
            now.lag_ms,
            now.offers(),
            now.dead_letters,
            regions.join(", "),
        );
        (last, last_tick) = (now, Instant::now());
        if sent == signups.len() {
            if last.offers() + last.dead_letters >= signups.len() as u64 {
                println!(
                    "all {} sign-ups processed: {} offer records, {} dead letters",
                    signups.len(),
                    last.offers(),
                    last.dead_letters
                );
                return Ok(());
            }
            if drained_by.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT).elapsed() > Duration::ZERO {
                bail!("offerd processed {} of {} sign-ups", last.offers() + last.dead_letters, signups.len());
            }
        }
    }
}

pub(crate) async fn put(client: &Client, stream: &str, lines: &[String]) -> Result<()> {
    let mut entries: Vec<PutRecordsRequestEntry> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            // Sign-ups are keyed by user; malformed ones may have none.
            let key = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["user_id"].as_str().filter(|k| !k.is_empty()).map(str::to_owned))
                .unwrap_or_else(|| format!("malformed-{i}"));
            PutRecordsRequestEntry::builder().partition_key(key).data(Blob::new(line.as_bytes())).build()
        })
        .collect::<Result<_, _>>()?;
    while !entries.is_empty() {
        let out = client.put_records().stream_name(stream).set_records(Some(entries.clone())).send().await?;
        let results = out.records();
        entries = entries.into_iter().zip(results).filter(|(_, r)| r.error_code().is_some()).map(|(e, _)| e).collect();
    }
    Ok(())
}

/// What offerd's metrics say so far.
#[derive(Default)]
pub(crate) struct Progress {
    pub read: u64,
    /// Keyed by `<region> v<module version>`.
    pub offers_by_rules: BTreeMap<String, u64>,
    pub dead_letters: u64,
    lag_ms: i64,
}

impl Progress {
    pub fn offers(&self) -> u64 {
        self.offers_by_rules.values().sum()
    }

    pub fn scrape(addr: &str) -> Result<Self> {
        let text = metrics_text(addr)?;
        let mut progress = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let value: f64 = value.parse().unwrap_or(0.0);
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |key: &str| {
                labels.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.split('"').next())
            };
            match name {
                "offerd_records_read_total" => progress.read += value as u64,
                "offerd_dead_letters_total" => progress.dead_letters += value as u64,
                "offerd_millis_behind_latest" => progress.lag_ms = progress.lag_ms.max(value as i64),
                "offerd_offers_total" => {
                    let region =
                        format!("{} v{}", label("region").unwrap_or("?"), label("module_version").unwrap_or("?"));
                    *progress.offers_by_rules.entry(region).or_default() += value as u64;
                }
                _ => {}
            }
        }
        Ok(progress)
    }
}

/// offerd's `/metrics` page.
pub(crate) fn metrics_text(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr)?;
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of one series of offerd's metrics (name with labels, as printed).
pub(crate) fn metric(addr: &str, series: &str) -> Result<f64> {
    let text = metrics_text(addr)?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {series}"))
}

/// A loopback address nothing listens on yet.
pub(crate) fn free_addr() -> Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// SIGINT, then offerd must exit 0: in-flight batches finish and checkpoint.
pub(crate) fn stop(mut offerd: Child) -> Result<()> {
    Command::new("kill").args(["-INT", &offerd.id().to_string()]).status()?;
    let status = offerd.wait()?;
    if !status.success() {
        bail!("offerd exited with {status}");
    }
    println!("offerd stopped cleanly");
    Ok(())
}

async fn show_samples(client: &Client, streams: &Streams) -> Result<()> {
    let first = |stream: &str| {
        let stream = stream.to_owned();
        async move {
            let iterator = client
                .get_shard_iterator()
                .stream_name(&stream)
                .shard_id("shardId-000000000000")
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?;
            let out = client
                .get_records()
                .shard_iterator(iterator.shard_iterator().unwrap_or_default())
                .limit(3)
                .send()
                .await?;
            let values: Vec<Value> =
                out.records().iter().filter_map(|r| serde_json::from_slice(r.data().as_ref()).ok()).collect();
            anyhow::Ok(values)
        }
    };
    println!("\na few offer records from {}:", streams.output);
    for o in first(&streams.output).await? {
        let best = &o["offers"][0];
        println!(
            "  {} in {} ({}): {} for {:.2} {}, rule {} {}, from {} #{}",
            o["user_id"].as_str().unwrap_or("?"),
            o["country"].as_str().unwrap_or("?"),
            o["region"].as_str().unwrap_or("?"),
            best["name"],
            best["monthly_price"]["amount_minor"].as_u64().unwrap_or(0) as f64 / 100.0,
            best["monthly_price"]["currency"].as_str().unwrap_or("?"),
            o["rule"]["version"].as_str().unwrap_or("?"),
            o["rule"]["digest"].as_str().unwrap_or("?").get(..19).unwrap_or("?"),
            o["source"]["shard_id"].as_str().unwrap_or("?"),
            o["source"]["sequence_number"].as_str().unwrap_or("?"),
        );
    }
    if let Some(d) = first(&streams.dead_letters).await?.first() {
        println!("\na dead letter from {}:\n  {d}", streams.dead_letters);
    }
    Ok(())
}
