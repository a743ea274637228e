//! `offerd run` settings: command-line flags, or the same keys in a TOML file
//! given with `--config`; a flag wins over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use crate::config_file;
use crate::registry::aws::Location;
use crate::stream::lease::LeaseSettings;
use crate::stream::{RunConfig, StartAt};

/// AWS settings come from the standard chain: AWS_REGION, credentials, AWS_ENDPOINT_URL.
/// Every flag can also be given as a key of `--config FILE` (`input-stream = "signups"`).
#[derive(Args, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RunSettings {
    /// Stream of sign-ups.
    #[arg(long, value_name = "NAME")]
    input_stream: Option<String>,
    /// Stream the offer records go to (partition key: user_id).
    #[arg(long, value_name = "NAME")]
    output_stream: Option<String>,
    /// Stream the dead letters go to [default: <input-stream>-dead-letters].
    #[arg(long, value_name = "NAME")]
    dead_letter_stream: Option<String>,
    /// Module store: `<region>.wasm` per region, `default.wasm` for the rest
    /// (without a registry).
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Follow the module registry with this DynamoDB table (created if
    /// missing) instead of a module store; needs --registry-bucket.
    #[arg(long, value_name = "TABLE", conflicts_with = "modules")]
    registry_table: Option<String>,
    /// The registry's S3 bucket (module and catalog bytes).
    #[arg(long, value_name = "BUCKET")]
    registry_bucket: Option<String>,
    /// Key prefix of the registry's objects in the bucket [default: none].
    #[arg(long, value_name = "PREFIX")]
    registry_prefix: Option<String>,
    /// How often the registry is read [default: 1000].
    #[arg(long, value_name = "MS")]
    registry_poll_ms: Option<u64>,
    /// Where the revisions this worker served are kept, to serve them when
    /// it restarts while the registry is unreachable [default: offerd-registry-state].
    #[arg(long, value_name = "DIR")]
    registry_state: Option<PathBuf>,
    /// Catalog directory: `regions.toml` and `<region>.toml`.
    #[arg(long, value_name = "DIR")]
    catalogs: Option<PathBuf>,
    /// Checkpoint file, created if missing [default: offerd-checkpoints.json].
    #[arg(long, value_name = "PATH")]
    checkpoints: Option<PathBuf>,
    /// Share the stream with other workers through this DynamoDB lease table
    /// (Kinesis Client Library schema; created if missing) instead of a
    /// checkpoint file.
    #[arg(long, value_name = "NAME", conflicts_with = "checkpoints")]
    lease_table: Option<String>,
    /// This worker's name in the lease table and the registry's fleet,
    /// unique among its workers [default: <host name>-<pid>].
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
    /// A lease whose counter has not moved for this long is taken over
    /// [default: 3000].
    #[arg(long, value_name = "MS", requires = "lease_table")]
    lease_duration_ms: Option<u64>,
    /// How often held leases are renewed [default: 1000].
    #[arg(long, value_name = "MS", requires = "lease_table")]
    lease_renew_ms: Option<u64>,
    /// Seconds a finished parent shard's lease stays once all its children
    /// have started, before it is deleted [default: 300].
    #[arg(long, value_name = "SECONDS", requires = "lease_table")]
    finished_lease_retention_secs: Option<u64>,
    /// Where shards without a checkpoint start: trim-horizon, latest or an
    /// RFC 3339 time [default: trim-horizon].
    #[arg(long, value_name = "WHERE")]
    start_at: Option<String>,
    /// Most records per batch and per GetRecords call, 1 to 10,000 [default: 500].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// How long a shard may gather records before a batch smaller than
    /// --batch-size is processed [default: 0, process every read].
    #[arg(long, value_name = "MS")]
    batch_window_ms: Option<u64>,
    /// Longest pause between GetRecords calls on a shard that keeps
    /// returning nothing: 250 ms after the first empty read, doubling with
    /// each further one up to this, back to 200 ms at the first record.
    /// It bounds the latency of the first record after a quiet spell
    /// [default: 1000].
    #[arg(long, value_name = "MS")]
    max_idle_poll_ms: Option<u64>,
    /// Read with enhanced fan-out (SubscribeToShard) as this stream consumer,
    /// registered if missing, instead of polling with GetRecords.
    #[arg(long, value_name = "NAME")]
    consumer_name: Option<String>,
    /// Seconds a fan-out subscription is used before a fresh one is opened;
    /// the service ends each after 300 [default: 290].
    #[arg(long, value_name = "SECONDS", hide = true)]
    resubscribe_after_secs: Option<u64>,
    /// KPL aggregates holding more user records go to the dead letters
    /// whole [default: 10000].
    #[arg(long, value_name = "N")]
    max_aggregate_records: Option<usize>,
    /// Seconds a batch's throttled or failing writes are retried before its
    /// shard restarts from the checkpoint [default: 60].
    #[arg(long, value_name = "SECONDS")]
    put_retry_budget_secs: Option<u64>,
    /// /readyz fails while a shard is behind the tip of the stream and has
    /// not checkpointed for this long [default: 60].
    #[arg(long, value_name = "SECONDS")]
    stall_after_secs: Option<u64>,
    /// Serve the admin API (publish, rollback, status) here; needs --admin-token-file.
    #[arg(long, value_name = "HOST:PORT", requires = "admin_token_file")]
    admin_addr: Option<SocketAddr>,
    /// File holding the admin API's bearer token.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve the admin API over TLS with this PEM certificate chain (needs --admin-tls-key).
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The PEM private key of --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Allow the admin API without TLS on an address that is not loopback
    /// (the bearer token then crosses the network in clear).
    #[arg(long)]
    #[serde(default)]
    admin_allow_plaintext: bool,
    /// Serve Prometheus metrics on /metrics and health on /healthz, /readyz.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
}

/// Settings resolved: every required one present, every value checked.
pub(super) struct Resolved {
    pub stream: RunConfig,
    pub rules: RulesFrom,
    pub worker_id: String,
    pub catalogs: PathBuf,
    /// Without a lease table.
    pub checkpoints: PathBuf,
    pub leases: Option<LeaseSettings>,
    pub metrics_addr: Option<SocketAddr>,
    pub stall_after: Duration,
    pub admin_addr: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    /// Certificate chain and key of the admin API, if it serves TLS.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
}

/// Where `offerd run` takes its rules from.
pub(super) enum RulesFrom {
    Modules(PathBuf),
    Registry(RegistrySettings),
}

/// How `offerd run` follows a registry.
pub(super) struct RegistrySettings {
    pub location: Location,
    pub state_dir: PathBuf,
    pub poll_every: Duration,
}

impl RunSettings {
    /// Flags over the keys of `config`, if given. Relative paths in the file
    /// are relative to the file.
    pub fn resolve(self, config: Option<&Path>) -> anyhow::Result<Resolved> {
        let file = match config {
            Some(path) => {
                let mut file: RunSettings = config_file::parse(path)?;
                let base = path.parent().unwrap_or(Path::new(""));
                let paths = [
                    &mut file.modules,
                    &mut file.registry_state,
                    &mut file.catalogs,
                    &mut file.checkpoints,
                    &mut file.admin_token_file,
                    &mut file.admin_tls_cert,
                    &mut file.admin_tls_key,
                ];
                for p in paths.into_iter().flatten() {
                    *p = base.join(&*p);
                }
                file
            }
            None => RunSettings::default(),
        };
        let origin = |key: &str| match config {
            Some(path) => format!("--{key} (or {key} in {})", path.display()),
            None => format!("--{key}"),
        };
        let required = |v: Option<String>, key: &str| v.with_context(|| format!("{} is required", origin(key)));
        let required_path = |v: Option<PathBuf>, key: &str| v.with_context(|| format!("{} is required", origin(key)));

        let input_stream = required(self.input_stream.or(file.input_stream), "input-stream")?;
        let output_stream = required(self.output_stream.or(file.output_stream), "output-stream")?;
        let dead_letter_stream = self
            .dead_letter_stream
            .or(file.dead_letter_stream)
            .unwrap_or_else(|| format!("{input_stream}-dead-letters"));
        let start_at = match self.start_at.or(file.start_at) {
            None => StartAt::TrimHorizon,
            Some(text) => parse_start_at(&text).with_context(|| format!("{}: {text:?}", origin("start-at")))?,
        };
        let batch_size = self.batch_size.or(file.batch_size).unwrap_or(500);
        if !(1..=10_000).contains(&batch_size) {
            bail!("{}: {batch_size} is not in 1..=10000 (the GetRecords limit)", origin("batch-size"));
        }
        let batch_window = Duration::from_millis(self.batch_window_ms.or(file.batch_window_ms).unwrap_or(0));
        if batch_window > Duration::from_secs(300) {
            bail!(
                "{}: {} ms is over the 300,000 ms Lambda also allows",
                origin("batch-window-ms"),
                batch_window.as_millis()
            );
        }
        let max_idle_poll = self.max_idle_poll_ms.or(file.max_idle_poll_ms).unwrap_or(1000);
        if !(200..=60_000).contains(&max_idle_poll) {
            bail!(
                "{}: {max_idle_poll} ms is not in 200..=60000 (Kinesis allows five GetRecords calls a second per shard)",
                origin("max-idle-poll-ms")
            );
        }
        let resubscribe_after =
            Duration::from_secs(self.resubscribe_after_secs.or(file.resubscribe_after_secs).unwrap_or(290));
        if !(Duration::from_secs(1)..Duration::from_secs(300)).contains(&resubscribe_after) {
            bail!("{}: must be 1 to 299 (the service ends a subscription at 300)", origin("resubscribe-after-secs"));
        }
        let max_aggregate_records = self
            .max_aggregate_records
            .or(file.max_aggregate_records)
            .unwrap_or(crate::stream::kpl::DEFAULT_MAX_RECORDS);
        if max_aggregate_records == 0 {
            bail!("{}: must be at least 1", origin("max-aggregate-records"));
        }
        let put_retry_budget = Duration::from_secs(
            self.put_retry_budget_secs
                .or(file.put_retry_budget_secs)
                .unwrap_or(crate::stream::sink::RETRY_BUDGET.as_secs()),
        );
        let worker_id = match self.worker_id.or(file.worker_id) {
            Some(id) => id,
            None => format!("{}-{}", crate::host_name(), std::process::id()),
        };
        if worker_id.is_empty() || worker_id.len() > 256 {
            bail!("{}: must be 1 to 256 bytes", origin("worker-id"));
        }
        let modules = self.modules.or(file.modules);
        let registry =
            match (self.registry_table.or(file.registry_table), self.registry_bucket.or(file.registry_bucket)) {
                (None, None) => None,
                (Some(_), None) => bail!("{} is required with registry-table", origin("registry-bucket")),
                (None, Some(_)) => bail!("{} is required with registry-bucket", origin("registry-table")),
                (Some(_), Some(_)) if modules.is_some() => {
                    bail!(
                        "{} and {} exclude each other: a registry worker has no module store",
                        origin("registry-table"),
                        origin("modules")
                    )
                }
                (Some(table), Some(bucket)) => {
                    let poll = self.registry_poll_ms.or(file.registry_poll_ms).unwrap_or(1000);
                    if !(100..=600_000).contains(&poll) {
                        bail!("{}: {poll} ms is not in 100..=600000", origin("registry-poll-ms"));
                    }
                    let prefix = self.registry_prefix.or(file.registry_prefix).unwrap_or_default();
                    Some(RegistrySettings {
                        location: registry_location(table, bucket, prefix)
                            .with_context(|| origin("registry-prefix"))?,
                        state_dir: self
                            .registry_state
                            .or(file.registry_state)
                            .unwrap_or_else(|| "offerd-registry-state".into()),
                        poll_every: Duration::from_millis(poll),
                    })
                }
            };
        let rules = match (registry, modules) {
            (Some(registry), _) => RulesFrom::Registry(registry),
            (None, Some(modules)) => RulesFrom::Modules(modules),
            (None, None) => {
                bail!("{} is required (or a registry: registry-table and registry-bucket)", origin("modules"))
            }
        };
        let checkpoints = self.checkpoints.or(file.checkpoints);
        let leases = match self.lease_table.or(file.lease_table) {
            None => None,
            Some(_) if checkpoints.is_some() => {
                bail!("{} and {} exclude each other", origin("lease-table"), origin("checkpoints"))
            }
            Some(table) => {
                let duration = self.lease_duration_ms.or(file.lease_duration_ms).unwrap_or(3000);
                let renew = self.lease_renew_ms.or(file.lease_renew_ms).unwrap_or(1000);
                if renew == 0 || renew.saturating_mul(2) > duration {
                    bail!(
                        "{} = {renew} ms must be at least 1 and at most half of {} = {duration} ms, so that a lease \
                         is renewed at least twice before it expires",
                        origin("lease-renew-ms"),
                        origin("lease-duration-ms")
                    );
                }
                Some(LeaseSettings {
                    table,
                    worker_id: worker_id.clone(),
                    duration: Duration::from_millis(duration),
                    renew_every: Duration::from_millis(renew),
                    finished_retention: Duration::from_secs(
                        self.finished_lease_retention_secs.or(file.finished_lease_retention_secs).unwrap_or(300),
                    ),
                })
            }
        };
        let admin_addr = self.admin_addr.or(file.admin_addr);
        let admin_token_file = self.admin_token_file.or(file.admin_token_file);
        if admin_addr.is_some() && admin_token_file.is_none() {
            bail!("{} is required with admin-addr", origin("admin-token-file"));
        }
        let admin_tls = match (self.admin_tls_cert.or(file.admin_tls_cert), self.admin_tls_key.or(file.admin_tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => bail!("{} is required with admin-tls-cert", origin("admin-tls-key")),
            (None, Some(_)) => bail!("{} is required with admin-tls-key", origin("admin-tls-cert")),
        };
        if let Some(addr) = admin_addr
            && !addr.ip().is_loopback()
            && admin_tls.is_none()
            && !(self.admin_allow_plaintext || file.admin_allow_plaintext)
        {
            bail!(
                "{}: {addr} is not a loopback address; serve the admin API over TLS (admin-tls-cert, admin-tls-key) \
                 or allow plaintext explicitly (admin-allow-plaintext)",
                origin("admin-addr")
            );
        }
        Ok(Resolved {
            stream: RunConfig {
                input_stream,
                output_stream,
                dead_letter_stream,
                start_at,
                batch_size,
                batch_window,
                max_idle_poll: Duration::from_millis(max_idle_poll),
                consumer_name: self.consumer_name.or(file.consumer_name),
                resubscribe_after,
                max_aggregate_records,
                put_retry_budget,
            },
            rules,
            worker_id,
            catalogs: required_path(self.catalogs.or(file.catalogs), "catalogs")?,
            checkpoints: checkpoints.unwrap_or_else(|| "offerd-checkpoints.json".into()),
            leases,
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            stall_after: Duration::from_secs(self.stall_after_secs.or(file.stall_after_secs).unwrap_or(60).max(1)),
            admin_addr,
            admin_token_file,
            admin_tls,
        })
    }
}

/// A registry's location, its prefix without surrounding slashes.
///
/// # Errors
/// The prefix holds an empty segment, `.` or `..`.
pub(super) fn registry_location(table: String, bucket: String, prefix: String) -> anyhow::Result<Location> {
    let prefix = prefix.trim_matches('/').to_owned();
    if !prefix.is_empty() && prefix.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        bail!("{prefix:?}: a key prefix of non-empty segments without . or ..");
    }
    Ok(Location { table, bucket, prefix })
}

fn parse_start_at(text: &str) -> anyhow::Result<StartAt> {
    Ok(match text {
        "trim-horizon" => StartAt::TrimHorizon,
        "latest" => StartAt::Latest,
        time => {
            let t = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .context("expected trim-horizon, latest or an RFC 3339 time such as 2026-11-26T09:00:00Z")?;
            StartAt::Timestamp(SystemTime::from(t))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> RunSettings {
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            settings: RunSettings,
        }
        <Probe as clap::Parser>::try_parse_from(std::iter::once("offerd").chain(args.iter().copied())).unwrap().settings
    }

    #[test]
    fn flags_override_the_file_and_paths_in_the_file_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offerd.toml");
        std::fs::write(
            &file,
            "input-stream = \"signups\"\noutput-stream = \"offers\"\nmodules = \"mods\"\ncatalogs = \"/abs/catalogs\"\n\
             batch-size = 100\nmax-idle-poll-ms = 2000\nstart-at = \"2026-11-26T09:00:00Z\"\nmetrics-addr = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let r = flags(&["--output-stream", "other", "--batch-window-ms", "50"]).resolve(Some(&file)).unwrap();
        assert_eq!(r.stream.input_stream, "signups");
        assert_eq!(r.stream.output_stream, "other");
        assert_eq!(r.stream.dead_letter_stream, "signups-dead-letters");
        assert_eq!(r.stream.batch_size, 100);
        assert_eq!(r.stream.batch_window, Duration::from_millis(50));
        assert_eq!(r.stream.max_idle_poll, Duration::from_secs(2));
        assert!(matches!(&r.rules, RulesFrom::Modules(m) if *m == dir.path().join("mods")));
        assert_eq!(r.catalogs, Path::new("/abs/catalogs"));
        assert_eq!(r.metrics_addr, Some("127.0.0.1:9000".parse().unwrap()));
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_683_600);
        assert_eq!(r.stream.start_at, StartAt::Timestamp(expected));
    }

    #[test]
    fn bad_settings_say_what_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offerd.toml");
        std::fs::write(&file, "input-stream = \"signups\"\nbatch-size = \"many\"\n").unwrap();
        let err = format!("{:#}", flags(&[]).resolve(Some(&file)).err().unwrap());
        assert!(err.contains("offerd.toml: batch-size: invalid type") && err.contains("(line 2)"), "{err}");

        std::fs::write(&file, "input-stream = \"signups\"\nbatch-sise = 5\n").unwrap();
        let err = format!("{:#}", flags(&[]).resolve(Some(&file)).err().unwrap());
        assert!(err.contains("unknown field `batch-sise`"), "{err}");

        let err = format!("{:#}", flags(&["--input-stream", "s"]).resolve(None).err().unwrap());
        assert_eq!(err, "--output-stream is required");

        let base = ["--input-stream", "s", "--output-stream", "o", "--modules", "m", "--catalogs", "c"];
        let err =
            format!("{:#}", flags(&[&base[..], &["--start-at", "yesterday"]].concat()).resolve(None).err().unwrap());
        assert!(err.starts_with("--start-at: \"yesterday\": expected trim-horizon, latest or an RFC 3339"), "{err}");
        let err = format!("{:#}", flags(&[&base[..], &["--batch-size", "0"]].concat()).resolve(None).err().unwrap());
        assert!(err.contains("--batch-size: 0 is not in 1..=10000"), "{err}");
        let err =
            format!("{:#}", flags(&[&base[..], &["--max-idle-poll-ms", "100"]].concat()).resolve(None).err().unwrap());
        assert!(err.contains("--max-idle-poll-ms: 100 ms is not in 200..=60000"), "{err}");
    }

    /// The admin API's bearer token never crosses a network in clear unless asked.
    #[test]
    fn a_plaintext_admin_api_binds_to_loopback_only_unless_allowed() {
        let base = ["--input-stream", "s", "--output-stream", "o", "--modules", "m", "--catalogs", "c"];
        let admin = |addr: &str, more: &[&str]| {
            let args = [&base[..], &["--admin-addr", addr, "--admin-token-file", "t"], more].concat();
            flags(&args).resolve(None)
        };
        assert!(admin("127.0.0.1:9101", &[]).is_ok());
        assert!(admin("[::1]:9101", &[]).is_ok());
        let err = format!("{:#}", admin("0.0.0.0:9101", &[]).err().unwrap());
        assert!(err.contains("0.0.0.0:9101 is not a loopback address") && err.contains("admin-tls-cert"), "{err}");
        assert!(admin("0.0.0.0:9101", &["--admin-allow-plaintext"]).is_ok());
        let tls = admin("0.0.0.0:9101", &["--admin-tls-cert", "c.pem", "--admin-tls-key", "k.pem"]).unwrap();
        assert_eq!(tls.admin_tls, Some(("c.pem".into(), "k.pem".into())));
    }
}
