//! The module registry: one place a fleet of offerd processes follows, so a
//! publication reaches every worker and a roll-back is one write.
//!
//! Control state is one item per region (the desired module and catalog
//! digests, who published and when, a `revision` counter and the last
//! [`HISTORY`] revisions); bytes are immutable, content-addressed objects.
//! Every change of a region is a conditional write on its revision: two
//! publishers racing, exactly one wins and the other is told who won.
//! Workers also report what they serve into the registry ([`WorkerReport`]),
//! which is how `offerd fleet status` and `offerd publish --wait` see the
//! fleet.
//!
//! [`Registry`] is the seam: [`aws::AwsRegistry`] keeps the control state in
//! DynamoDB and the bytes in S3; [`memory::MemoryRegistry`] keeps everything
//! in memory, for tests of races, refusals and outages without servers.

pub mod aws;
pub mod fleet;
pub mod follow;
pub mod memory;
pub mod publish;
pub mod state;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Revisions kept in a region's history, besides the current one.
pub const HISTORY: usize = 20;

/// Largest catalog object read; as for catalog files.
pub const MAX_CATALOG_BYTES: u64 = crate::config_file::MAX_FILE_BYTES;

/// What a region should serve, as of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    /// `sha256:<hex>` of the component.
    pub module: String,
    /// `sha256:<hex>` of the region's catalog file.
    pub catalog: String,
    pub rule_name: String,
    pub rule_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    pub publisher: String,
    /// Unix milliseconds, by the publisher's clock.
    pub published_at_ms: i64,
    /// How this revision came to be.
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    Publish,
    /// A new catalog for the module that served.
    Catalog,
    /// Back to the module and catalog of an earlier revision.
    Rollback {
        to: u64,
    },
}

/// A region's item: the current revision and the ones before it, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    pub region: String,
    pub current: Revision,
    #[serde(default)]
    pub history: Vec<Revision>,
}

impl RegionState {
    /// The state after `next` becomes current: the current revision goes to
    /// the history, which keeps the newest [`HISTORY`].
    pub fn advanced(previous: Option<&RegionState>, region: &str, next: Revision) -> RegionState {
        let mut history = Vec::new();
        if let Some(p) = previous {
            history.push(p.current.clone());
            history.extend(p.history.iter().cloned());
        }
        history.truncate(HISTORY);
        RegionState { region: region.to_owned(), current: next, history }
    }

    /// The revision numbered `n`, current or in the history.
    pub fn revision(&self, n: u64) -> Option<&Revision> {
        std::iter::once(&self.current).chain(&self.history).find(|r| r.revision == n)
    }
}

/// Which kind of object: where it lives under the prefix, its extension
/// and largest size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Module,
    Catalog,
}

impl ObjectKind {
    /// `modules/sha256-<hex>.wasm` or `catalogs/sha256-<hex>.toml`.
    ///
    /// # Errors
    /// `digest` is not `sha256:` and 64 lower-case hex digits (an item written
    /// by hand, say): never turned into a key.
    pub fn key(self, digest: &str) -> Result<String, String> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .ok_or_else(|| format!("{digest:?} is not a sha256:<64 hex digits> digest"))?;
        Ok(match self {
            ObjectKind::Module => format!("modules/sha256-{hex}.wasm"),
            ObjectKind::Catalog => format!("catalogs/sha256-{hex}.toml"),
        })
    }
}

/// What one worker serves, as it reports it to the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: String,
    /// `lambda` or `host`: what kind of process reports.
    #[serde(default = "host_kind")]
    pub kind: String,
    /// Unix milliseconds, by the worker's clock.
    pub heartbeat_at_ms: i64,
    /// Seconds between heartbeats: a worker not heard of for three is silent.
    pub heartbeat_every_secs: u64,
    /// Since when the registry has been unreachable, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since_ms: Option<i64>,
    pub regions: BTreeMap<String, RegionReport>,
}

fn host_kind() -> String {
    "host".into()
}

/// One region on one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionReport {
    /// The revision served; `None` when what serves did not come from the
    /// registry (nothing published yet).
    pub serving: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// Unix milliseconds at which `serving` started serving here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// A newer revision this worker refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedRevision>,
    /// Served from the local state while the registry was unreachable at start-up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRevision {
    pub revision: u64,
    pub reason: String,
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store did not answer, or answered with an error: try again later.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// The region moved on since the revision the change was based on.
    #[error("{}", conflict_message(.expected, .winner.as_deref()))]
    Conflict { expected: Option<u64>, winner: Option<Box<RegionState>> },
    /// An object that is missing, too large, or whose bytes do not match
    /// its digest: never served.
    #[error("object {key}: {reason}")]
    BadObject { key: String, reason: String },
    /// An item that does not parse.
    #[error("region {region}: malformed registry item: {reason}")]
    Malformed { region: String, reason: String },
}

fn conflict_message(expected: &Option<u64>, winner: Option<&RegionState>) -> String {
    let expected = match expected {
        Some(n) => format!("expected revision {n}"),
        None => "expected no revision yet".into(),
    };
    match winner {
        Some(w) => format!(
            "the region moved on ({expected}): revision {} ({} {}, {}) was published by {} at {}",
            w.current.revision,
            w.current.rule_name,
            w.current.rule_version,
            w.current.module,
            w.current.publisher,
            format_ms(w.current.published_at_ms)
        ),
        None => format!("the region moved on ({expected}) and has no revision now"),
    }
}

/// Unix milliseconds as RFC 3339, for messages.
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// A region's item, or why it could not be read.
pub type RegionItem = Result<RegionState, RegistryError>;

/// The registry's operations. Every method is one or a few requests and
/// bounded in time by the implementation.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Names the registry in messages (`table T, bucket B/P`).
    fn describe(&self) -> String;

    /// Every region's item, in one request where the store allows. A
    /// malformed item is an `Err` in the list, the others unaffected.
    async fn regions(&self) -> Result<Vec<RegionItem>, RegistryError>;

    /// One region's item, if it has one.
    async fn region(&self, region: &str) -> Result<Option<RegionState>, RegistryError>;

    /// Makes `next` the region's state if its current revision is still
    /// `expected` (`None`: it has none yet).
    async fn advance(&self, next: &RegionState, expected: Option<u64>) -> Result<(), RegistryError>;

    /// Stores `bytes` under their digest unless already there.
    async fn put_object(&self, kind: ObjectKind, bytes: &[u8]) -> Result<String, RegistryError>;

    /// The bytes stored under `digest`, refused when over `limit` bytes
    /// (before reading them whole) or when they do not match the digest.
    async fn object(&self, kind: ObjectKind, digest: &str, limit: u64) -> Result<Vec<u8>, RegistryError>;

    /// Records what a worker serves.
    async fn report(&self, report: &WorkerReport) -> Result<(), RegistryError>;

    /// Removes a worker that stopped cleanly.
    async fn forget_worker(&self, worker: &str) -> Result<(), RegistryError>;

    /// Every worker's last report.
    async fn workers(&self) -> Result<Vec<WorkerReport>, RegistryError>;
}

/// Checks fetched bytes against the digest they were stored under.
///
/// # Errors
/// They do not match.
pub fn verify(key: &str, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let actual = crate::engine::digest(bytes);
    if actual == digest {
        Ok(())
    } else {
        Err(RegistryError::BadObject { key: key.to_owned(), reason: format!("its bytes are {actual}, not {digest}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(n: u64) -> Revision {
        Revision {
            revision: n,
            module: format!("sha256:{:064x}", n),
            catalog: format!("sha256:{:064x}", 1000 + n),
            rule_name: "reference".into(),
            rule_version: format!("0.{n}.0"),
            signed_by: None,
            publisher: "ci@build".into(),
            published_at_ms: 1_700_000_000_000 + n as i64,
            action: Action::Publish,
        }
    }

    #[test]
    fn history_keeps_the_newest_twenty_newest_first() {
        let mut state: Option<RegionState> = None;
        for n in 1..=30 {
            state = Some(RegionState::advanced(state.as_ref(), "europe", revision(n)));
        }
        let state = state.unwrap();
        assert_eq!(state.current.revision, 30);
        let kept: Vec<u64> = state.history.iter().map(|r| r.revision).collect();
        assert_eq!(kept, (10..30).rev().collect::<Vec<_>>());
        assert!(state.revision(10).is_some() && state.revision(9).is_none());
    }

    #[test]
    fn only_well_formed_digests_become_keys() {
        let hex = "ab".repeat(32);
        assert_eq!(ObjectKind::Module.key(&format!("sha256:{hex}")).unwrap(), format!("modules/sha256-{hex}.wasm"));
        assert_eq!(ObjectKind::Catalog.key(&format!("sha256:{hex}")).unwrap(), format!("catalogs/sha256-{hex}.toml"));
        for bad in ["", "sha256:", "md5:abc", &format!("sha256:{}", "AB".repeat(32)), "sha256:../../etc/passwd"] {
            assert!(ObjectKind::Module.key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_conflict_names_the_winner() {
        let winner = RegionState::advanced(None, "europe", revision(7));
        let e = RegistryError::Conflict { expected: Some(6), winner: Some(Box::new(winner)) };
        let text = e.to_string();
        assert!(
            text.contains("expected revision 6") && text.contains("revision 7") && text.contains("ci@build"),
            "{text}"
        );
    }
}
