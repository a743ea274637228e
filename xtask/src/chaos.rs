//! `cargo xtask chaos`: crash trials. `offerd run` is killed with SIGKILL at
//! moments while sign-ups stream in — a third at random, a third as soon as
//! a checkpoint write has begun (its temporary file exists), a third while a
//! module publication is being gated and swapped — and restarted each time;
//! a last run drains the stream. Then every input record is looked for in the
//! outputs and dead letters: records lost (must be 0) and duplicates per crash
//! (at most one batch per shard).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use serde_json::Value;

use crate::demo::{Streams, client, create_stream, free_addr, spawn_offerd, stop};
use xtask::kinesis_local::{self, npm_ci};

pub struct Options {
    pub kills: usize,
    pub signups: usize,
    /// Sign-ups written per second while the kills happen.
    pub rate: usize,
}

const SHARDS: i32 = 2;
const BATCH_SIZE: usize = 50;
const TOKEN: &str = "chaos-admin-token";

/// Where an input record is: (shard id, sequence number).
pub(crate) type Source = (String, String);

pub fn run(options: &Options) -> Result<()> {
    let root = xtask::workspace_root();
    let work = root.join("target/chaos");
    let modules = work.join("modules");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&modules)?;
    xtask::ensure_guest_target()?;
    println!("building the rules (two versions to swap between) and offerd…");
    let v1 = xtask::build_component("offer-rules")?;
    let v2 = xtask::build_component_as("offer-rules", Some("0.2.0"))?;
    std::fs::write(modules.join("default.wasm"), &v1)?;
    let token_file = work.join("admin-token");
    std::fs::write(&token_file, TOKEN)?;
    crate::demo::build_offerd(false)?;
    if !root.join("node_modules/kinesis-local/main.js").is_file() {
        npm_ci(&root)?;
    }
    let server = kinesis_local::start(&root)?;
    let aws_env = crate::demo::local_aws_env(&server.endpoint, None);
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let streams = Streams {
        input: format!("chaos-{run_id}-signups"),
        output: format!("chaos-{run_id}-offers"),
        dead_letters: format!("chaos-{run_id}-dead-letters"),
    };
    let checkpoints = work.join("checkpoints.json");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(&aws_env).await;
        for (name, shards) in [(&streams.input, SHARDS), (&streams.output, 2), (&streams.dead_letters, 1)] {
            create_stream(&client, name, shards).await?;
        }
        let mut generator = xtask::signups::Generator::new(&root.join("catalogs/geonames/cities15000.csv"), 7)?;
        let signups = generator.batch(options.signups, Some(50));
        let producer = tokio::spawn(produce(client.clone(), streams.input.clone(), signups, options.rate));

        let batch = BATCH_SIZE.to_string();
        let spawn = |admin: &str| {
            let extra = ["--batch-size", &batch, "--admin-addr", admin, "--admin-token-file"];
            let token = token_file.to_str().context("UTF-8 path")?;
            let metrics = free_addr()?;
            spawn_offerd(&root, &streams, Some(&modules), Some(&checkpoints), &metrics, &aws_env, &[&extra[..], &[token]].concat())
        };
        let mut swaps_killed = 0;
        let mut mid_checkpoint = 0;
        for kill in 0..options.kills {
            let admin = free_addr()?;
            let child = spawn(&admin)?;
            tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..2200))).await;
            // Every third kill lands while a publication is being gated or swapped.
            if kill % 3 == 2 {
                let module = if kill % 2 == 0 { &v2 } else { &v1 };
                let publication = tokio::task::spawn_blocking({
                    let (admin, module) = (admin.clone(), module.clone());
                    move || put_module(&admin, "europe", &module)
                });
                tokio::time::sleep(Duration::from_millis(fastrand::u64(..150))).await;
                kill_9(child)?;
                let _ = publication.await;
                swaps_killed += 1;
            } else if kill % 3 == 1 {
                // Killed as soon as a checkpoint write has begun: counted when
                // its temporary file is still there, so the kill came before
                // the rename.
                kill_at_checkpoint_write(child, &checkpoints)?;
                if !checkpoint_leftovers(&checkpoints)?.is_empty() {
                    mid_checkpoint += 1;
                }
            } else {
                kill_9(child)?;
            }
            println!("  kill {:>2}/{}: SIGKILL", kill + 1, options.kills);
        }
        let sources = producer.await.context("the producer panicked")??;
        println!("{} sign-ups written; a last run drains the stream", sources.len());
        let child = spawn(&free_addr()?)?;
        let outcome = drain(&client, &streams, &sources).await;
        stop(child)?;
        let (covered, outputs) = outcome?;
        let leftovers = checkpoint_leftovers(&checkpoints)?;
        if !leftovers.is_empty() {
            bail!("temporary checkpoint files left after the last run: {leftovers:?}");
        }
        let lost = sources.len() - covered;
        let duplicates = outputs - covered;
        let bound = options.kills * SHARDS as usize * BATCH_SIZE;
        println!(
            "{} kills ({swaps_killed} during a publication, {mid_checkpoint} inside a checkpoint write): {} records in, {lost} lost, {duplicates} duplicates \
             ({:.1} per crash; bound one batch per shard per crash = {bound} in all)",
            options.kills,
            sources.len(),
            duplicates as f64 / options.kills.max(1) as f64,
        );
        if lost > 0 {
            bail!("{lost} records lost");
        }
        if duplicates > bound {
            bail!("{duplicates} duplicates, more than one batch per shard per crash");
        }
        Ok(())
    })
}

fn kill_9(mut child: Child) -> Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Kills `child` the moment a temporary file of `checkpoints` appears (a
/// write has begun), or after 5 s.
fn kill_at_checkpoint_write(child: Child, checkpoints: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while checkpoint_leftovers(checkpoints)?.is_empty() && Instant::now() < deadline {
        std::hint::spin_loop();
    }
    kill_9(child)
}

/// Temporary files of a checkpoint write (`.<name>.*.tmp` beside it).
fn checkpoint_leftovers(checkpoints: &Path) -> Result<Vec<String>> {
    let prefix = format!(".{}.", checkpoints.file_name().and_then(|n| n.to_str()).context("a UTF-8 file name")?);
    let dir = checkpoints.parent().context("the checkpoint file is in a directory")?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            found.push(name);
        }
    }
    Ok(found)
}

/// A PUT of a module through the admin API; its answer does not matter (the
/// process may be killed mid-gate).
fn put_module(admin: &str, region: &str, module: &[u8]) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(admin)?;
    write!(
        conn,
        "PUT /v1/regions/{region}/module HTTP/1.0\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        module.len()
    )?;
    conn.write_all(module)?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    Ok(())
}

/// Writes `lines` at `rate` per second; returns where each landed.
pub(crate) async fn produce(client: Client, stream: String, lines: Vec<String>, rate: usize) -> Result<Vec<Source>> {
    let mut sources = Vec::with_capacity(lines.len());
    let per_tick = (rate / 10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for (n, chunk) in lines.chunks(per_tick).enumerate() {
        tick.tick().await;
        let entries: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .enumerate()
            .map(|(i, line)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{n}-{i}"))
                    .data(Blob::new(line.as_bytes()))
                    .build()
                    .expect("key and data are set")
            })
            .collect();
        let out = client.put_records().stream_name(&stream).set_records(Some(entries)).send().await?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            bail!("the producer's PutRecords failed for some entries");
        }
        for r in out.records() {
            sources.push((
                r.shard_id().unwrap_or_default().to_owned(),
                r.sequence_number().unwrap_or_default().to_owned(),
            ));
        }
    }
    Ok(sources)
}

/// Reads outputs and dead letters until every source is covered or two
/// minutes pass: (sources covered, outputs read).
pub(crate) async fn drain(client: &Client, streams: &Streams, sources: &[Source]) -> Result<(usize, usize)> {
    let wanted: HashSet<&Source> = sources.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut seen: HashMap<Source, usize> = HashMap::new();
        for stream in [&streams.output, &streams.dead_letters] {
            for v in read_all(client, stream).await? {
                let source = &v["source"];
                let key = (
                    source["shard_id"].as_str().unwrap_or_default().to_owned(),
                    source["sequence_number"].as_str().unwrap_or_default().to_owned(),
                );
                *seen.entry(key).or_default() += 1;
            }
        }
        let covered = wanted.iter().filter(|s| seen.contains_key(**s)).count();
        if covered == wanted.len() || Instant::now() > deadline {
            return Ok((covered, seen.values().sum()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read_all(client: &Client, stream: &str) -> Result<Vec<Value>> {
    let shards = client.list_shards().stream_name(stream).send().await?;
    let mut all = Vec::new();
    for shard in shards.shards() {
        let it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?;
        let mut iterator = it.shard_iterator().map(str::to_owned);
        while let Some(it) = iterator {
            let out = client.get_records().shard_iterator(it).send().await?;
            all.extend(out.records().iter().filter_map(|r| serde_json::from_slice::<Value>(r.data().as_ref()).ok()));
            if out.records().is_empty() {
                break;
            }
            iterator = out.next_shard_iterator().map(str::to_owned);
        }
    }
    Ok(all)
}
