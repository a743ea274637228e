//! The fleet as the registry sees it: per region, the desired revision,
//! the workers serving it, those serving something else and why, workers
//! gone silent, and how long the last publication took to reach every
//! worker. `offerd fleet status`, `GET /v1/fleet` and `offerd publish
//! --wait` all read it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{RegionState, Registry, RegistryError, WorkerReport};

/// A worker is silent after this many heartbeats without a report.
const SILENT_AFTER_HEARTBEATS: i64 = 3;

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub regions: Vec<RegionFleet>,
    /// Workers not heard of for three heartbeats (they serve nothing the
    /// registry knows of, or are gone).
    pub silent: Vec<String>,
    pub live: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RegionFleet {
    pub region: String,
    pub revision: u64,
    pub rule: String,
    pub module: String,
    pub publisher: String,
    pub published_at: String,
    pub serving: Vec<String>,
    /// Live workers not serving the desired revision: worker to why.
    pub elsewhere: BTreeMap<String, String>,
    /// Workers that refused the desired revision: worker to the reason.
    pub refused: BTreeMap<String, String>,
    /// From publication to the last live worker serving it, once all do.
    pub reached_all_after_ms: Option<i64>,
}

impl FleetStatus {
    /// The fleet now, from one read of the regions and one of the workers.
    /// A malformed region item is left out with a warning.
    ///
    /// # Errors
    /// The registry is unreachable.
    pub async fn read(registry: &dyn Registry) -> Result<FleetStatus, RegistryError> {
        let mut regions = Vec::new();
        for item in registry.regions().await? {
            match item {
                Ok(state) => regions.push(state),
                Err(e) => tracing::warn!(error = %e, "registry item left out of the fleet status"),
            }
        }
        let workers = registry.workers().await?;
        Ok(FleetStatus::of(&regions, &workers, super::now_ms()))
    }

    /// The fleet at `now_ms` from the regions' items and the workers' reports.
    pub fn of(regions: &[RegionState], workers: &[WorkerReport], now_ms: i64) -> Self {
        // Saturating: reports are read from a table anyone may write.
        let silent_after = |w: &WorkerReport| {
            i64::try_from(w.heartbeat_every_secs.max(1))
                .unwrap_or(i64::MAX)
                .saturating_mul(SILENT_AFTER_HEARTBEATS * 1000)
        };
        let (live, silent): (Vec<&WorkerReport>, Vec<&WorkerReport>) =
            workers.iter().partition(|w| now_ms.saturating_sub(w.heartbeat_at_ms) <= silent_after(w));
        let regions = regions
            .iter()
            .map(|state| {
                let desired = &state.current;
                let mut fleet = RegionFleet {
                    region: state.region.clone(),
                    revision: desired.revision,
                    rule: format!("{} {}", desired.rule_name, desired.rule_version),
                    module: desired.module.clone(),
                    publisher: desired.publisher.clone(),
                    published_at: super::format_ms(desired.published_at_ms),
                    serving: Vec::new(),
                    elsewhere: BTreeMap::new(),
                    refused: BTreeMap::new(),
                    reached_all_after_ms: None,
                };
                let mut last_since = desired.published_at_ms;
                for worker in &live {
                    let report = worker.regions.get(&state.region);
                    match report {
                        Some(r)
                            if r.serving == Some(desired.revision) && r.module.as_deref() == Some(&desired.module) =>
                        {
                            fleet.serving.push(worker.worker.clone());
                            last_since = last_since.max(r.since_ms.unwrap_or(desired.published_at_ms));
                        }
                        Some(r) if r.refused.as_ref().is_some_and(|f| f.revision == desired.revision) => {
                            let reason = r.refused.as_ref().map(|f| f.reason.clone()).unwrap_or_default();
                            fleet.refused.insert(worker.worker.clone(), reason);
                        }
                        Some(r) => {
                            let what = match r.serving {
                                Some(n) => format!("serving revision {n}, not yet {}", desired.revision),
                                None => "serving no registry revision yet".into(),
                            };
                            let what = if worker.unreachable_since_ms.is_some() {
                                format!("{what} (the registry is unreachable from it)")
                            } else {
                                what
                            };
                            fleet.elsewhere.insert(worker.worker.clone(), what);
                        }
                        None => {
                            fleet.elsewhere.insert(worker.worker.clone(), "has not reported this region".into());
                        }
                    }
                }
                if !fleet.serving.is_empty() && fleet.serving.len() == live.len() {
                    fleet.reached_all_after_ms = Some(last_since.saturating_sub(desired.published_at_ms).max(0));
                }
                fleet
            })
            .collect();
        FleetStatus {
            regions,
            silent: silent.iter().map(|w| w.worker.clone()).collect(),
            live: live.iter().map(|w| w.worker.clone()).collect(),
        }
    }

    pub fn region(&self, region: &str) -> Option<&RegionFleet> {
        self.regions.iter().find(|r| r.region == region)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Action, RefusedRevision, RegionReport, Revision};
    use super::*;

    fn state(revision: u64) -> RegionState {
        let current = Revision {
            revision,
            module: format!("sha256:{revision:064x}"),
            catalog: format!("sha256:{:064x}", 0),
            rule_name: "reference".into(),
            rule_version: "0.2.0".into(),
            signed_by: None,
            publisher: "ci@build".into(),
            published_at_ms: 10_000,
            action: Action::Publish,
        };
        RegionState { region: "europe".into(), current, history: Vec::new() }
    }

    fn worker(name: &str, heartbeat_at_ms: i64, report: RegionReport) -> WorkerReport {
        WorkerReport {
            worker: name.into(),
            kind: "host".into(),
            heartbeat_at_ms,
            heartbeat_every_secs: 10,
            unreachable_since_ms: None,
            regions: [("europe".to_owned(), report)].into(),
        }
    }

    fn serving(revision: u64, since_ms: i64) -> RegionReport {
        let module = Some(format!("sha256:{revision:064x}"));
        RegionReport { serving: Some(revision), module, since_ms: Some(since_ms), ..RegionReport::default() }
    }

    #[test]
    fn serving_refusing_lagging_and_silent_workers_are_told_apart() {
        let refused = RegionReport {
            refused: Some(RefusedRevision { revision: 2, reason: "not signed by a trusted key".into() }),
            ..serving(1, 0)
        };
        let workers = [
            worker("a", 40_000, serving(2, 11_500)),
            worker("b", 40_000, refused),
            worker("c", 40_000, serving(1, 0)),
            worker("gone", 5_000, serving(1, 0)),
        ];
        let fleet = FleetStatus::of(&[state(2)], &workers, 41_000);
        let europe = fleet.region("europe").unwrap();
        assert_eq!(europe.serving, ["a"]);
        assert_eq!(europe.refused["b"], "not signed by a trusted key");
        assert!(europe.elsewhere["c"].contains("serving revision 1"), "{:?}", europe.elsewhere);
        assert_eq!(fleet.silent, ["gone"]);
        assert_eq!(europe.reached_all_after_ms, None);
    }

    #[test]
    fn reaching_every_live_worker_is_timed_from_publication() {
        let workers = [worker("a", 40_000, serving(2, 10_400)), worker("b", 40_000, serving(2, 11_200))];
        let fleet = FleetStatus::of(&[state(2)], &workers, 41_000);
        assert_eq!(fleet.region("europe").unwrap().reached_all_after_ms, Some(1_200));
    }
}
