//! A worker following the registry: one read of every region per poll; on a
//! new revision, fetch the bytes, verify them, gate and swap the region
//! exactly as a local publication does (one switch point per shard, other
//! regions untouched), remember it in the local state, and report what
//! serves. A refused revision is reported once and not retried; an
//! unreachable registry leaves what serves serving and is polled with
//! backoff until it answers.
//!
//! A revision is known by its number *and* its digests: a registry
//! recreated or restored counts from 1 again, and the same number with
//! other bytes is news.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::state::StateDir;
use super::{
    MAX_CATALOG_BYTES, ObjectKind, RefusedRevision, RegionReport, RegionState, Registry, RegistryError, WorkerReport,
    now_ms,
};
use crate::catalog::Catalogs;
use crate::metrics::Metrics;
use crate::rollout::Rollout;

/// Longest pause between polls while the registry is unreachable: a fleet
/// polling once a second at most a few times less often, and a publication
/// made during an outage served within this long of its end.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Longest a stopping worker waits to take itself out of the fleet.
const FORGET_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one object may take to arrive, body included (the SDK's
/// operation timeout does not cover a body that trickles).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest reason kept in a report: a report must fit a DynamoDB item, and
/// reasons can quote hostile catalog values.
const MAX_REASON_BYTES: usize = 1024;

pub struct FollowSettings {
    pub worker: String,
    pub poll_every: Duration,
    pub heartbeat_every: Duration,
}

pub struct Follower {
    registry: Arc<dyn Registry>,
    rollout: Arc<Rollout>,
    /// Routing: which regions exist and their countries.
    routing: Arc<Catalogs>,
    state: StateDir,
    metrics: Arc<Metrics>,
    settings: FollowSettings,
    report: Mutex<Report>,
}

#[derive(Default)]
struct Report {
    regions: BTreeMap<String, RegionReport>,
    unreachable_since_ms: Option<i64>,
    /// Warnings given once (a malformed item, a revision going backwards),
    /// not at every poll.
    warned: HashSet<String>,
    changed: bool,
}

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// The registry answered and every object needed arrived; so many
    /// regions changed what they serve.
    Answered { swapped: usize },
    /// The table, or an object of a new revision, could not be read.
    Unreachable,
}

/// What following one region's item did.
enum Followed {
    Unchanged,
    Swapped,
    /// Its objects could not be fetched: tried again at the next poll.
    Pending,
}

/// Why a revision does not serve (yet).
enum Apply {
    Unreachable(String),
    /// Never served here: bad bytes, a bad catalog, or this worker's gate.
    Refused(String),
}

impl From<RegistryError> for Apply {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unreachable(e) => Apply::Unreachable(e),
            other => Apply::Refused(other.to_string()),
        }
    }
}

impl Follower {
    /// A follower of `registry` for `rollout`, which serves what `state`
    /// kept from before: reported as those revisions where the digests
    /// match what serves, degraded until the registry answers.
    pub fn new(
        registry: Arc<dyn Registry>,
        rollout: Arc<Rollout>,
        routing: Arc<Catalogs>,
        state: StateDir,
        metrics: Arc<Metrics>,
        settings: FollowSettings,
    ) -> Self {
        let mut report = Report { changed: true, ..Report::default() };
        for (region, served) in state.served_revisions() {
            let active = rollout.enricher().active(&region).map(|a| a.rules.module().info().digest.clone());
            if active.as_deref() == Some(served.module.as_str()) {
                let entry = RegionReport {
                    serving: Some(served.revision),
                    module: Some(served.module),
                    catalog: Some(served.catalog),
                    since_ms: Some(now_ms()),
                    refused: None,
                    degraded: true,
                };
                report.regions.insert(region, entry);
            }
        }
        Self { registry, rollout, routing, state, metrics, settings, report: Mutex::new(report) }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().expect("the report lock is never held across a panic")
    }

    /// Reads the registry once and applies every region that changed.
    pub async fn poll(&self) -> Poll {
        let items = match self.registry.regions().await {
            Ok(items) => items,
            Err(e) => {
                self.unreachable(&e.to_string());
                return Poll::Unreachable;
            }
        };
        {
            // Answered: what serves is what the registry knows of now, not
            // the local state's guess.
            let mut report = self.report();
            for region in report.regions.values_mut() {
                region.degraded = false;
            }
        }
        let (mut swapped, mut pending) = (0, false);
        for item in items {
            match item {
                Ok(state) => match self.follow(state).await {
                    Followed::Swapped => swapped += 1,
                    Followed::Pending => pending = true,
                    Followed::Unchanged => {}
                },
                Err(e) => self.warn_once(e.to_string(), "registry item skipped; other regions unaffected"),
            }
        }
        if pending {
            self.unreachable("an object of a new revision could not be fetched");
            return Poll::Unreachable;
        }
        self.metrics.registry_poll("ok");
        self.metrics.registry_unreachable(false);
        let mut report = self.report();
        if let Some(since) = report.unreachable_since_ms.take() {
            tracing::info!(down_since = %super::format_ms(since), "registry reachable again");
            report.changed = true;
        }
        Poll::Answered { swapped }
    }

    fn unreachable(&self, why: &str) {
        self.metrics.registry_poll("unreachable");
        self.metrics.registry_unreachable(true);
        let mut report = self.report();
        if report.unreachable_since_ms.is_none() {
            tracing::warn!(registry = %self.registry.describe(), error = %why, "registry unreachable; what serves keeps serving");
            report.unreachable_since_ms = Some(now_ms());
            report.changed = true;
        }
    }

    fn warn_once(&self, what: String, consequence: &str) {
        if self.report().warned.insert(what.clone()) {
            tracing::warn!(%what, "{consequence}");
        }
    }

    /// Applies `state` if it is news to this worker.
    async fn follow(&self, state: RegionState) -> Followed {
        let region = state.region.clone();
        let current = &state.current;
        let revision = current.revision;
        if self.routing.region(&region).is_none() {
            self.warn_once(format!("registry region {region:?} is not defined in regions.toml"), "ignored");
            return Followed::Unchanged;
        }
        self.metrics.registry_revision(&region, revision);
        let known = self.report().regions.get(&region).cloned().unwrap_or_default();
        let same_bytes = known.module.as_deref() == Some(current.module.as_str())
            && known.catalog.as_deref() == Some(current.catalog.as_str());
        if known.serving == Some(revision) && same_bytes {
            return Followed::Unchanged;
        }
        if known.refused.as_ref().is_some_and(|r| r.revision == revision) {
            return Followed::Unchanged;
        }
        if let Some(serving) = known.serving
            && revision < serving
        {
            self.warn_once(
                format!(
                    "{region}: the registry's revision went backwards (serving {serving}, registry says {revision})"
                ),
                "ignored; if the registry was recreated, restart with an empty --registry-state directory",
            );
            return Followed::Unchanged;
        }
        match self.apply(&state).await {
            Ok(()) => {
                let lag = now_ms().saturating_sub(current.published_at_ms).max(0) as f64 / 1000.0;
                self.metrics.registry_applied(lag);
                tracing::info!(region, revision, module = %current.module, publisher = %current.publisher, "registry revision serving");
                let mut report = self.report();
                let entry = RegionReport {
                    serving: Some(revision),
                    module: Some(current.module.clone()),
                    catalog: Some(current.catalog.clone()),
                    since_ms: Some(now_ms()),
                    refused: None,
                    degraded: false,
                };
                report.regions.insert(region, entry);
                report.changed = true;
                Followed::Swapped
            }
            Err(Apply::Unreachable(e)) => {
                tracing::warn!(region, revision, error = %e, "cannot fetch the revision's objects yet");
                Followed::Pending
            }
            Err(Apply::Refused(reason)) => {
                tracing::warn!(region, revision, %reason, "registry revision refused; what serves keeps serving");
                let mut report = self.report();
                let entry = report.regions.entry(region).or_insert(known);
                entry.refused = Some(RefusedRevision { revision, reason: bounded(reason) });
                report.changed = true;
                Followed::Unchanged
            }
        }
    }

    /// Fetches, verifies, gates and swaps one revision, then keeps it in the
    /// local state.
    async fn apply(&self, state: &RegionState) -> Result<(), Apply> {
        let region = &state.region;
        let current = &state.current;
        let limit = self.rollout.max_module_bytes() as u64;
        let module: Arc<[u8]> = self.fetch(ObjectKind::Module, &current.module, limit).await?.into();
        let catalog_bytes = self.fetch(ObjectKind::Catalog, &current.catalog, MAX_CATALOG_BYTES).await?;
        let label = std::path::PathBuf::from(format!("{region}.toml ({})", current.catalog));
        let catalog =
            self.routing.parse_region(region, &label, &catalog_bytes).map_err(|e| Apply::Refused(e.to_string()))?;
        let rollout = self.rollout.clone();
        let (region_owned, bytes) = (region.clone(), module.clone());
        tokio::task::spawn_blocking(move || rollout.apply(&region_owned, bytes, catalog))
            .await
            .map_err(|e| Apply::Refused(format!("the gate panicked: {e}")))?
            .map_err(|e| Apply::Refused(format!("refused by the gate: {e}")))?;
        if let Err(e) = self.state.served(region, current.revision, &module, &catalog_bytes) {
            tracing::error!(region, error = %e, "cannot keep the serving revision in the local state; a restart may serve another");
        }
        Ok(())
    }

    async fn fetch(&self, kind: ObjectKind, digest: &str, limit: u64) -> Result<Vec<u8>, Apply> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.registry.object(kind, digest, limit)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Apply::Unreachable(format!("{digest} did not arrive within {FETCH_TIMEOUT:?}"))),
        }
    }

    /// The report this worker sends, and whether it changed since the last one sent.
    fn take_report(&self) -> (WorkerReport, bool) {
        let mut report = self.report();
        let changed = std::mem::take(&mut report.changed);
        let worker = WorkerReport {
            worker: self.settings.worker.clone(),
            kind: "host".into(),
            heartbeat_at_ms: now_ms(),
            heartbeat_every_secs: self.settings.heartbeat_every.as_secs().max(1),
            unreachable_since_ms: report.unreachable_since_ms,
            regions: report.regions.clone(),
        };
        (worker, changed)
    }

    /// Since when the registry has been unreachable, if it is.
    pub fn unreachable_since_ms(&self) -> Option<i64> {
        self.report().unreachable_since_ms
    }

    /// Polls until `stopping`, backing off while the registry is
    /// unreachable; reports on every change and every heartbeat. A stop
    /// ends a poll or report in flight. On a clean stop, takes this worker
    /// out of the fleet.
    pub async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut wait = self.settings.poll_every;
        let mut last_report = None::<Instant>;
        let mut report_failed = false;
        loop {
            let (report, changed) = self.take_report();
            let due = last_report.is_none_or(|t: Instant| t.elapsed() >= self.settings.heartbeat_every);
            if changed || due {
                let sent = tokio::select! {
                    sent = self.registry.report(&report) => sent,
                    _ = stopping.wait_for(|stop| *stop) => break,
                };
                match sent {
                    Ok(()) => {
                        self.metrics.registry_reported();
                        last_report = Some(Instant::now());
                        report_failed = false;
                    }
                    Err(e) => {
                        if !report_failed {
                            tracing::warn!(error = %e, "cannot report to the registry; retrying at every poll");
                        }
                        report_failed = true;
                        self.report().changed = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopping.wait_for(|stop| *stop) => break,
            }
            let polled = tokio::select! {
                polled = self.poll() => polled,
                _ = stopping.wait_for(|stop| *stop) => break,
            };
            wait = match polled {
                Poll::Answered { .. } => self.settings.poll_every,
                Poll::Unreachable => (wait * 2).min(MAX_BACKOFF.max(self.settings.poll_every)),
            };
        }
        let forgotten = tokio::time::timeout(FORGET_TIMEOUT, self.registry.forget_worker(&self.settings.worker)).await;
        if !matches!(forgotten, Ok(Ok(()))) {
            tracing::warn!("could not take this worker out of the registry's fleet; it goes silent instead");
        }
    }
}

/// `reason` cut to [`MAX_REASON_BYTES`] at a character boundary.
fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str(" …");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_REASON_BYTES + " …".len() && cut.ends_with(" …"), "{}", cut.len());
    }
}
