//! Metrics in the Prometheus text format, and the health endpoints, served
//! on `--metrics-addr`. Counters are updated once per batch, never per record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::engine::ModuleInfo;
use crate::enricher::RegionTally;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    region: String,
    module: String,
    version: String,
    digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    region: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
    module_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseEventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseRequestLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryRegionLabels {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    reason: &'static str,
}

/// Everything `offerd run` reports.
pub struct Metrics {
    registry: Registry,
    records_read: Family<ShardLabels, Counter>,
    offers: Family<RegionLabels, Counter>,
    module_failures: Family<RegionLabels, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    batch_seconds: Histogram,
    millis_behind: Family<ShardLabels, Gauge>,
    shards_reading: Gauge,
    subscriptions: Family<ShardLabels, Counter>,
    active_module: Family<ModuleLabels, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    gate_seconds: Histogram,
    put_retried: Family<StreamLabels, Counter>,
    put_rejected: Family<StreamLabels, Counter>,
    shard_failures: Family<ShardLabels, Counter>,
    last_checkpoint: Family<ShardLabels, Gauge>,
    leases_held: Gauge,
    lease_events: Family<LeaseEventLabels, Counter>,
    lease_renewal_seconds: Histogram,
    lease_requests: Family<LeaseRequestLabels, Counter>,
    registry_revision: Family<RegistryRegionLabels, Gauge>,
    registry_polls: Family<PollLabels, Counter>,
    registry_reports: Counter,
    registry_publication_to_serving: Histogram,
    registry_unreachable: Gauge,
    /// Unix milliseconds since which the registry has been unreachable, for `/healthz`.
    registry_down_since_ms: Mutex<Option<i64>>,
    lease_items_malformed: Gauge,
    /// Lease items nobody can use, as `key (why)`, for `/healthz`.
    malformed_leases: Mutex<Vec<String>>,
    /// Offers and module failures per region, for the admin API.
    region_totals: Mutex<HashMap<String, (u64, u64)>>,
    /// Set once every shard reader has started; cleared on shutdown.
    ready: AtomicBool,
    shards: Mutex<HashMap<String, ShardProgress>>,
    /// A shard behind the tip with no checkpoint for this long makes
    /// `/readyz` fail.
    stall_after: Duration,
}

/// What `/readyz` and the lag gauge need to know of one running shard.
struct ShardProgress {
    /// `MillisBehindLatest` of the last read.
    behind_ms: i64,
    read_at: Instant,
    /// Last checkpoint, or last read that found the shard caught up.
    progress_at: Instant,
}

/// After this long without a read, a shard's lag gauge grows with the time
/// since its last read instead of showing that read's figure.
const STALE_READ: Duration = Duration::from_secs(5);

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Metrics {
    /// `stall_after`: see [`Self::stalled_shards`].
    pub fn new(stall_after: Duration) -> Self {
        let mut registry = Registry::with_prefix("offerd");
        let registry_revision = Family::<RegistryRegionLabels, Gauge>::default();
        registry.register(
            "registry_revision",
            "The registry's current revision of each region, as last read",
            registry_revision.clone(),
        );
        let registry_polls = Family::<PollLabels, Counter>::default();
        registry.register(
            "registry_polls",
            "Reads of the registry, by result (ok, unreachable)",
            registry_polls.clone(),
        );
        let registry_reports = Counter::default();
        registry.register(
            "registry_reports",
            "Reports of what this worker serves written to the registry (changes and heartbeats)",
            registry_reports.clone(),
        );
        // 50 ms to about 27 min.
        let registry_publication_to_serving = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register(
            "registry_publication_to_serving_seconds",
            "From a revision's publication (publisher's clock) to serving on this worker",
            registry_publication_to_serving.clone(),
        );
        let registry_unreachable = Gauge::default();
        registry.register(
            "registry_unreachable",
            "1 while the registry this worker follows does not answer",
            registry_unreachable.clone(),
        );
        let lease_items_malformed = Gauge::default();
        registry.register(
            "lease_items_malformed",
            "Items of the lease table that are not usable leases: their shards go unserved",
            lease_items_malformed.clone(),
        );
        let records_read = Family::<ShardLabels, Counter>::default();
        let offers = Family::<RegionLabels, Counter>::default();
        let module_failures = Family::<RegionLabels, Counter>::default();
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        // 1 ms to about 16 s.
        let batch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let millis_behind = Family::<ShardLabels, Gauge>::default();
        let shards_reading = Gauge::default();
        let subscriptions = Family::<ShardLabels, Counter>::default();
        let active_module = Family::<ModuleLabels, Gauge>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        // 1 ms to about 16 s.
        let gate_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let put_retried = Family::<StreamLabels, Counter>::default();
        let put_rejected = Family::<StreamLabels, Counter>::default();
        let shard_failures = Family::<ShardLabels, Counter>::default();
        let last_checkpoint = Family::<ShardLabels, Gauge>::default();
        let leases_held = Gauge::default();
        let lease_events = Family::<LeaseEventLabels, Counter>::default();
        // 1 ms to about 4 s.
        let lease_renewal_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register("leases_held", "Shard leases this worker holds (with --lease-table)", leases_held.clone());
        registry.register(
            "lease_events",
            "Shard leases taken (unowned or expired), stolen (from a more loaded worker), lost (to another worker) \
             and released (at shutdown)",
            lease_events.clone(),
        );
        let lease_requests = Family::<LeaseRequestLabels, Counter>::default();
        registry.register(
            "lease_table_requests",
            "Requests to the lease table: writes (renewals, checkpoints, takes, hand-offs) and scans",
            lease_requests.clone(),
        );
        registry.register(
            "lease_renewal_seconds",
            "Time of one renewal round of every lease held",
            lease_renewal_seconds.clone(),
        );
        registry.register(
            "put_entries_retried",
            "PutRecords entries that failed with a retryable error (throttling, service faults) and were sent again",
            put_retried.clone(),
        );
        registry.register(
            "put_entries_rejected",
            "PutRecords entries Kinesis refused for good (replaced by an output-rejected dead letter)",
            put_rejected.clone(),
        );
        registry.register(
            "shard_failures",
            "Shard readers that stopped with an error and were restarted from the checkpoint after a backoff",
            shard_failures.clone(),
        );
        registry.register(
            "shard_last_checkpoint_timestamp_seconds",
            "Unix time of each shard's last checkpoint",
            last_checkpoint.clone(),
        );
        registry.register(
            "active_module",
            "1 for the module serving each region (name, version, digest)",
            active_module.clone(),
        );
        registry.register("reloads", "Publications activated (ok) or refused, by region", reloads.clone());
        registry.register(
            "gate_seconds",
            "Time to compile and gate a publication (world, init, golden cases, smoke batch)",
            gate_seconds.clone(),
        );
        registry.register("records_read", "Records read from the input stream", records_read.clone());
        registry.register("offers", "Offer records published, by region and module version", offers.clone());
        registry.register(
            "module_failures",
            "Records a region's module trapped, timed out, ran out of memory on, or rejected",
            module_failures.clone(),
        );
        registry.register(
            "dead_letters",
            "Records published to the dead-letter stream, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time from a batch read to its checkpoint (enrich, publish, checkpoint)",
            batch_seconds.clone(),
        );
        registry.register(
            "millis_behind_latest",
            "How far the last read of a shard was behind the tip of the stream",
            millis_behind.clone(),
        );
        registry.register("shards_reading", "Shard readers running", shards_reading.clone());
        registry.register(
            "fan_out_subscriptions",
            "SubscribeToShard calls that opened a subscription (enhanced fan-out)",
            subscriptions.clone(),
        );
        Self {
            registry,
            records_read,
            offers,
            module_failures,
            dead_letters,
            batch_seconds,
            millis_behind,
            shards_reading,
            subscriptions,
            active_module,
            reloads,
            gate_seconds,
            put_retried,
            put_rejected,
            shard_failures,
            last_checkpoint,
            leases_held,
            lease_events,
            lease_renewal_seconds,
            lease_requests,
            registry_revision,
            registry_polls,
            registry_reports,
            registry_publication_to_serving,
            registry_unreachable,
            registry_down_since_ms: Mutex::default(),
            lease_items_malformed,
            malformed_leases: Mutex::default(),
            region_totals: Mutex::default(),
            ready: AtomicBool::new(false),
            shards: Mutex::default(),
            stall_after,
        }
    }

    /// Counts a read; `millis_behind_latest` is `None` when nothing was asked.
    pub fn read(&self, shard_id: &str, records: usize, millis_behind_latest: Option<i64>) {
        let labels = ShardLabels { shard_id: shard_id.to_owned() };
        self.records_read.get_or_create(&labels).inc_by(records as u64);
        if let Some(ms) = millis_behind_latest {
            self.millis_behind.get_or_create(&labels).set(ms);
            let now = Instant::now();
            let mut shards = self.shards.lock().expect("the shards lock is never held across a panic");
            let shard = shards.entry(shard_id.to_owned()).or_insert(ShardProgress {
                behind_ms: ms,
                read_at: now,
                progress_at: now,
            });
            shard.behind_ms = ms;
            shard.read_at = now;
            if ms == 0 {
                shard.progress_at = now;
            }
        }
    }

    /// Shards that are behind (or have not read at all) and have not
    /// checkpointed for `stall_after`: what makes `/readyz` fail.
    pub fn stalled_shards(&self) -> Vec<String> {
        self.stalled_at(Instant::now())
    }

    fn progressed_at(&self, shard_id: &str, at: Instant) {
        if let Some(shard) = self.shards.lock().expect("the shards lock is never held across a panic").get_mut(shard_id)
        {
            shard.progress_at = at;
        }
    }

    fn stalled_at(&self, now: Instant) -> Vec<String> {
        let shards = self.shards.lock().expect("the shards lock is never held across a panic");
        let since = |at: Instant| now.saturating_duration_since(at);
        let mut stalled: Vec<String> = shards
            .iter()
            .filter(|(_, s)| {
                since(s.progress_at) > self.stall_after && (s.behind_ms > 0 || since(s.read_at) > self.stall_after)
            })
            .map(|(id, _)| id.clone())
            .collect();
        stalled.sort();
        stalled
    }

    /// Counts a processed batch once its outputs are acknowledged.
    pub fn batch_done(&self, tallies: &[RegionTally], dead_letters: &[&'static str], seconds: f64) {
        let mut totals = self.region_totals.lock().expect("the totals lock is never held across a panic");
        for t in tallies {
            let total = totals.entry(t.region.clone()).or_default();
            total.0 += t.offers;
            total.1 += t.failures;
            let labels = RegionLabels { region: t.region.clone(), module_version: t.module_version.clone() };
            if t.offers > 0 {
                self.offers.get_or_create(&labels).inc_by(t.offers);
            }
            if t.failures > 0 {
                self.module_failures.get_or_create(&labels).inc_by(t.failures);
            }
        }
        for reason in dead_letters {
            self.dead_letters.get_or_create(&DeadLetterLabels { reason }).inc();
        }
        self.batch_seconds.observe(seconds);
    }

    /// Offers and module failures of `region` so far.
    pub fn region_counts(&self, region: &str) -> (u64, u64) {
        let totals = self.region_totals.lock().expect("the totals lock is never held across a panic");
        totals.get(region).copied().unwrap_or_default()
    }

    /// Marks `module` as serving `region` (or no longer serving it).
    pub fn module_active(&self, region: &str, module: &ModuleInfo, active: bool) {
        let labels = ModuleLabels {
            region: region.to_owned(),
            module: module.name.clone(),
            version: module.version.to_string(),
            digest: module.digest.clone(),
        };
        if active {
            self.active_module.get_or_create(&labels).set(1);
        } else {
            self.active_module.remove(&labels);
        }
    }

    pub fn reload(&self, region: &str, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { region: region.to_owned(), result }).inc();
    }

    pub fn gate_seconds(&self, seconds: f64) {
        self.gate_seconds.observe(seconds);
    }

    pub fn subscribed(&self, shard_id: &str) {
        self.subscriptions.get_or_create(&ShardLabels { shard_id: shard_id.to_owned() }).inc();
    }

    /// A reader started. Its progress carries over from earlier runs: a
    /// shard that fails and restarts over and over makes no progress.
    pub fn shard_started(&self, shard_id: &str) {
        self.shards_reading.inc();
        let now = Instant::now();
        // Behind until a read says otherwise: a reader that never reads stalls.
        let progress = ShardProgress { behind_ms: 1, read_at: now, progress_at: now };
        self.shards
            .lock()
            .expect("the shards lock is never held across a panic")
            .entry(shard_id.to_owned())
            .or_insert(progress);
    }

    /// A reader returned; `drained`: its shard is read to its end, for good.
    pub fn shard_stopped(&self, shard_id: &str, drained: bool) {
        self.shards_reading.dec();
        self.millis_behind.remove(&ShardLabels { shard_id: shard_id.to_owned() });
        if drained {
            self.shards.lock().expect("the shards lock is never held across a panic").remove(shard_id);
        }
    }

    pub fn put_entries_retried(&self, stream: &str, entries: usize) {
        self.put_retried.get_or_create(&StreamLabels { stream: stream.to_owned() }).inc_by(entries as u64);
    }

    pub fn put_entries_rejected(&self, stream: &str, entries: usize) {
        self.put_rejected.get_or_create(&StreamLabels { stream: stream.to_owned() }).inc_by(entries as u64);
    }

    pub fn shard_failed(&self, shard_id: &str) {
        self.shard_failures.get_or_create(&ShardLabels { shard_id: shard_id.to_owned() }).inc();
    }

    pub fn checkpointed(&self, shard_id: &str) {
        self.progressed_at(shard_id, Instant::now());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.last_checkpoint.get_or_create(&ShardLabels { shard_id: shard_id.to_owned() }).set(now as i64);
    }

    pub fn leases_held(&self, held: usize) {
        self.leases_held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// `event`: `taken`, `stolen`, `lost` or `released`.
    pub fn lease_event(&self, event: &'static str) {
        self.lease_events.get_or_create(&LeaseEventLabels { event }).inc();
    }

    /// `kind`: `write` or `scan`.
    pub fn lease_request(&self, kind: &'static str) {
        self.lease_requests.get_or_create(&LeaseRequestLabels { kind }).inc();
    }

    pub fn lease_renewal_seconds(&self, seconds: f64) {
        self.lease_renewal_seconds.observe(seconds);
    }

    pub fn registry_revision(&self, region: &str, revision: u64) {
        let labels = RegistryRegionLabels { region: region.to_owned() };
        self.registry_revision.get_or_create(&labels).set(i64::try_from(revision).unwrap_or(i64::MAX));
    }

    /// `result`: `ok` or `unreachable`.
    pub fn registry_poll(&self, result: &'static str) {
        self.registry_polls.get_or_create(&PollLabels { result }).inc();
    }

    pub fn registry_reported(&self) {
        self.registry_reports.inc();
    }

    pub fn registry_applied(&self, seconds_since_publication: f64) {
        self.registry_publication_to_serving.observe(seconds_since_publication);
    }

    pub fn registry_unreachable(&self, unreachable: bool) {
        self.registry_unreachable.set(i64::from(unreachable));
        let mut since = self.registry_down_since_ms.lock().expect("never held across a panic");
        match (unreachable, *since) {
            (true, None) => *since = Some(crate::registry::now_ms()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    /// The lease items last scanned that are not usable leases, as `key (why)`.
    pub fn malformed_leases(&self, items: Vec<String>) {
        self.lease_items_malformed.set(i64::try_from(items.len()).unwrap_or(i64::MAX));
        *self.malformed_leases.lock().expect("never held across a panic") = items;
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        // A shard whose reads stopped falls further behind by the second.
        for (id, shard) in self.shards.lock().expect("the shards lock is never held across a panic").iter() {
            let since = shard.read_at.elapsed();
            if since > STALE_READ {
                let lag = shard.behind_ms.saturating_add(since.as_millis() as i64);
                self.millis_behind.get_or_create(&ShardLabels { shard_id: id.clone() }).set(lag);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (every
/// shard reader started, not shutting down, no shard stalled) on `listener`
/// until `shutdown`.
///
/// # Errors
/// The listener's address cannot be read.
pub fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(prometheus_text))
        .route("/healthz", get(health))
        .route("/readyz", get(readiness))
        .with_state(metrics);
    crate::http_server::spawn(listener, "/metrics, /healthz, /readyz", app, None, shutdown)
}

async fn prometheus_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
}

/// The process answers: `ok`, degraded while the registry it follows is
/// unreachable (records keep flowing on what serves) or lease items cannot
/// be used (their shards go unserved).
async fn health(State(metrics): State<Arc<Metrics>>) -> String {
    let mut degraded = Vec::new();
    if let Some(since) = *metrics.registry_down_since_ms.lock().expect("never held across a panic") {
        degraded.push(format!("the registry is unreachable since {}", crate::registry::format_ms(since)));
    }
    let malformed = metrics.malformed_leases.lock().expect("never held across a panic");
    if !malformed.is_empty() {
        degraded.push(format!("shards unserved, their lease items unusable: {}", malformed.join("; ")));
    }
    if degraded.is_empty() { "ok\n".into() } else { format!("ok, degraded: {}\n", degraded.join("; ")) }
}

async fn readiness(State(metrics): State<Arc<Metrics>>) -> (StatusCode, String) {
    if !metrics.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into());
    }
    let stalled = metrics.stalled_shards();
    if stalled.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let stall = metrics.stall_after.as_secs();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled (behind, no checkpoint for {stall} s): {}\n", stalled.join(" ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard is stalled when it is behind (or has stopped reading) and has
    /// not checkpointed for the stall time; restarts do not reset that.
    #[test]
    fn readiness_names_shards_behind_without_progress() {
        let metrics = Metrics::new(Duration::from_secs(60));
        let later = |secs| Instant::now() + Duration::from_secs(secs);
        metrics.shard_started("behind");
        metrics.read("behind", 10, Some(5_000));
        metrics.shard_started("checkpointing");
        metrics.read("checkpointing", 10, Some(5_000));
        assert!(metrics.stalled_at(later(30)).is_empty());
        assert_eq!(metrics.stalled_at(later(61)), ["behind", "checkpointing"]);
        // Checkpointed 50 s in: 11 s without progress at 61 s.
        metrics.progressed_at("checkpointing", later(50));
        assert_eq!(metrics.stalled_at(later(61)), ["behind"]);
        // A shard that fails and restarts keeps its last progress.
        metrics.shard_stopped("behind", false);
        metrics.shard_started("behind");
        assert_eq!(metrics.stalled_at(later(61)), ["behind"]);
        // Caught up at its last read, but reading stopped: stalled too.
        metrics.shard_started("caught-up");
        metrics.read("caught-up", 0, Some(0));
        assert_eq!(metrics.stalled_at(later(30)), Vec::<String>::new());
        assert_eq!(metrics.stalled_at(later(200)), ["behind", "caught-up", "checkpointing"]);
        metrics.checkpointed("checkpointing");
        // A drained shard is gone for good.
        metrics.shard_stopped("behind", true);
        assert_eq!(metrics.stalled_at(later(200)), ["caught-up", "checkpointing"]);
        assert_eq!(metrics.stalled_at(later(30)), Vec::<String>::new());
    }
}
