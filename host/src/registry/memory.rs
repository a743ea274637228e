//! A registry in memory, for tests of publishing and following: races,
//! refusals, tampered objects and outages without servers. Each client
//! ([`MemoryRegistry::client`]) shares the same state and can be cut off on
//! its own, as one worker losing its network is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{ObjectKind, RegionItem, RegionState, Registry, RegistryError, WorkerReport, verify};

#[derive(Default)]
struct Shared {
    regions: Mutex<BTreeMap<String, Result<RegionState, String>>>,
    objects: Mutex<HashMap<String, Vec<u8>>>,
    workers: Mutex<BTreeMap<String, WorkerReport>>,
    polls: AtomicU64,
    fetches: AtomicU64,
}

#[derive(Default)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
    cut_off: AtomicBool,
}

impl MemoryRegistry {
    /// Another client of the same registry, reachable until cut off.
    pub fn client(&self) -> MemoryRegistry {
        MemoryRegistry { shared: self.shared.clone(), cut_off: AtomicBool::new(false) }
    }

    /// While cut off, every call of this client fails as unreachable.
    pub fn cut_off(&self, cut_off: bool) {
        self.cut_off.store(cut_off, Ordering::SeqCst);
    }

    /// Reads of every region so far, by any client.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::SeqCst)
    }

    /// Objects read so far, by any client.
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Replaces the bytes stored under an object's key, as a hostile or
    /// broken writer to the bucket would.
    pub fn tamper(&self, kind: ObjectKind, digest: &str, bytes: Vec<u8>) {
        let key = kind.key(digest).expect("tests tamper with well-formed digests");
        self.shared.objects.lock().unwrap().insert(key, bytes);
    }

    /// An item that does not parse, as one written by hand might.
    pub fn write_malformed(&self, region: &str, reason: &str) {
        self.shared.regions.lock().unwrap().insert(region.to_owned(), Err(reason.to_owned()));
    }

    /// Writes a state without any condition (a revision going backwards, say).
    pub fn force(&self, state: RegionState) {
        self.shared.regions.lock().unwrap().insert(state.region.clone(), Ok(state));
    }

    pub fn report_of(&self, worker: &str) -> Option<WorkerReport> {
        self.shared.workers.lock().unwrap().get(worker).cloned()
    }

    fn check_up(&self) -> Result<(), RegistryError> {
        if self.cut_off.load(Ordering::SeqCst) {
            Err(RegistryError::Unreachable("this client of the in-memory registry is cut off".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    fn describe(&self) -> String {
        "in-memory registry".into()
    }

    async fn regions(&self) -> Result<Vec<RegionItem>, RegistryError> {
        self.shared.polls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        Ok(self
            .shared
            .regions
            .lock()
            .unwrap()
            .iter()
            .map(|(region, item)| {
                item.clone().map_err(|reason| RegistryError::Malformed { region: region.clone(), reason })
            })
            .collect())
    }

    async fn region(&self, region: &str) -> Result<Option<RegionState>, RegistryError> {
        self.check_up()?;
        match self.shared.regions.lock().unwrap().get(region) {
            None => Ok(None),
            Some(Ok(state)) => Ok(Some(state.clone())),
            Some(Err(reason)) => Err(RegistryError::Malformed { region: region.to_owned(), reason: reason.clone() }),
        }
    }

    async fn advance(&self, next: &RegionState, expected: Option<u64>) -> Result<(), RegistryError> {
        self.check_up()?;
        let mut regions = self.shared.regions.lock().unwrap();
        let current = regions.get(&next.region).and_then(|r| r.as_ref().ok());
        if current.map(|s| s.current.revision) != expected {
            let winner = current.cloned().map(Box::new);
            return Err(RegistryError::Conflict { expected, winner });
        }
        regions.insert(next.region.clone(), Ok(next.clone()));
        Ok(())
    }

    async fn put_object(&self, kind: ObjectKind, bytes: &[u8]) -> Result<String, RegistryError> {
        self.check_up()?;
        let digest = crate::engine::digest(bytes);
        let key = kind.key(&digest).expect("a computed digest is well-formed");
        self.shared.objects.lock().unwrap().entry(key).or_insert_with(|| bytes.to_vec());
        Ok(digest)
    }

    async fn object(&self, kind: ObjectKind, digest: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
        self.check_up()?;
        self.shared.fetches.fetch_add(1, Ordering::SeqCst);
        let key = kind.key(digest).map_err(|reason| RegistryError::BadObject { key: digest.into(), reason })?;
        let bytes = self.shared.objects.lock().unwrap().get(&key).cloned();
        let bytes = bytes.ok_or_else(|| RegistryError::BadObject { key: key.clone(), reason: "missing".into() })?;
        if bytes.len() as u64 > limit {
            return Err(RegistryError::BadObject { key, reason: format!("over the {limit}-byte cap") });
        }
        verify(&key, digest, &bytes)?;
        Ok(bytes)
    }

    async fn report(&self, report: &WorkerReport) -> Result<(), RegistryError> {
        self.check_up()?;
        self.shared.workers.lock().unwrap().insert(report.worker.clone(), report.clone());
        Ok(())
    }

    async fn forget_worker(&self, worker: &str) -> Result<(), RegistryError> {
        self.check_up()?;
        self.shared.workers.lock().unwrap().remove(worker);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerReport>, RegistryError> {
        self.check_up()?;
        Ok(self.shared.workers.lock().unwrap().values().cloned().collect())
    }
}
