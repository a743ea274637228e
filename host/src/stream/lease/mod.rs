//! Several workers on one stream: shard leases in a DynamoDB table in the
//! Kinesis Client Library's schema ([`table`]). A worker reads only the
//! shards it holds a lease on; it renews them every `renew_every` by moving
//! their counters, takes its fair share ([`balance`]), and sees another
//! worker's lease as expired when its counter has not moved for a lease
//! duration, timed on its own clock. Every checkpoint is a conditional write
//! on the lease as held, so a worker that lost a lease (paused, cut off)
//! cannot move that shard's checkpoint afterwards.
//!
//! Balancing never interrupts a batch: a worker below its share asks the
//! owner of a lease for it (`offerdHandoffTo`), and the owner hands it over
//! once the shard's batch in flight is checkpointed — so a worker joining or
//! leaving repeats nothing. Only an owner that ignores the request for
//! [`HANDOFF_PATIENCE`] lease durations (a KCL worker, an older offerd) has
//! the lease taken from it.
//!
//! Renewal runs apart from everything else a worker does with the table:
//! a scan, a round of takes or deletions, however slow (hundreds of leases,
//! a throttled or slow table), never delays it, and each lease renews on
//! its own, so one hung call holds up no other. A worker gives a lease up
//! only when a write is refused (another worker took it), never because its
//! own writes failed for a while: during an outage of the table nobody can
//! take it, and a shard that did move can no longer checkpoint here.
//! Likewise a worker that could not scan for a while does not count that
//! time against other workers' leases: after an outage everyone keeps what
//! they held.

mod balance;
mod lineage;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::Shard;
use tokio::sync::watch;

use super::StartAt;
use super::checkpoint::{Checkpoint, CheckpointStore};
use super::feed::Position;
use crate::metrics::Metrics;
pub use table::{Lease, LeaseError, LeaseTable, Malformed, SHARD_END, Scanned};

/// Lease durations a worker waits for a requested hand-off before it takes
/// the lease anyway: well beyond an honest stop (a batch's writes, the
/// checkpoint), so that a cooperating owner is never overrun.
const HANDOFF_PATIENCE: u32 = 10;
/// Most takes, hand-off requests or deletions one round makes: the rest
/// wait for the next round, so a cold start on hundreds of leases or a
/// reshard of hundreds of shards never makes one round long.
const WRITES_PER_ROUND: usize = 64;
/// Most of those in flight at once.
const WRITES_AT_ONCE: usize = 16;

/// How a worker takes part.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub table: String,
    /// Unique among the workers of the table.
    pub worker_id: String,
    /// A lease whose counter has not moved for this long is expired.
    pub duration: Duration,
    /// How often held leases are renewed and the table scanned.
    pub renew_every: Duration,
    /// How long a finished parent's lease stays once all its children have
    /// started, before it is deleted.
    pub finished_retention: Duration,
}

/// A lease this worker holds.
struct Held {
    /// The counter when this worker took the lease: a shard reader started
    /// under another acquisition is stale and stops.
    epoch: u64,
    /// The counter as this worker last wrote it; every write is conditional on it.
    counter: u64,
    /// Last successful write (renewal, take or checkpoint), timed from its request.
    renewed: Instant,
    checkpoint: String,
    /// The KCL's position inside a KPL aggregate at `checkpoint`; 0 once
    /// this worker checkpointed.
    sub_sequence: u64,
    /// When a lease at `LATEST` was first taken (pinned then): its reader
    /// starts there, not at a fresh `LATEST`.
    start_timestamp_ms: Option<i64>,
    /// Serialises this lease's writes (renewal and checkpoint), which are
    /// conditional on the counter the other one moves.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// The worker that asked for this lease: the shard stops at its next
    /// batch boundary and the lease goes to it.
    handoff_to: Option<String>,
    /// Renewals failed in a row: the first is a warning, the rest (every
    /// quarter renewal period while the table is unreachable) are not.
    renew_failures: u32,
}

/// What the maintenance loop remembers between rounds, timed on this
/// worker's clock.
#[derive(Default)]
struct Observed {
    /// Per lease: the counter last seen and when it was first seen.
    counters: HashMap<String, (u64, Instant)>,
    /// Per lease: the hand-off request last seen and when it was first seen.
    requests: HashMap<String, (String, Instant)>,
    /// Hand-offs this worker asked for, and when.
    asked: HashMap<String, Instant>,
    /// Finished parents whose children have all started, and since when.
    removable: HashMap<String, Instant>,
}

/// This worker's leases, and the table as last scanned.
pub struct Leases {
    table: LeaseTable,
    me: String,
    duration: Duration,
    renew_every: Duration,
    finished_retention: Duration,
    metrics: Arc<Metrics>,
    held: Mutex<HashMap<String, Held>>,
    /// Every lease as last scanned.
    seen: Mutex<HashMap<String, Lease>>,
    /// The stream's shards as last listed: leases of other keys (aged-out
    /// shards, foreign items) are neither taken nor counted.
    listed: Mutex<HashSet<String>>,
    /// Bumped whenever the set of held leases changes.
    changed: watch::Sender<()>,
    /// Unusable lease items as last scanned, and why: each is warned about once.
    malformed: Mutex<HashMap<String, String>>,
}

impl Leases {
    #[must_use]
    pub fn new(table: LeaseTable, settings: &LeaseSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            table,
            me: settings.worker_id.clone(),
            duration: settings.duration,
            renew_every: settings.renew_every,
            finished_retention: settings.finished_retention,
            metrics,
            held: Mutex::default(),
            seen: Mutex::default(),
            listed: Mutex::default(),
            changed: watch::Sender::new(()),
            malformed: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().expect("the lease map is never held across a panic")
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.seen.lock().expect("the lease cache is never held across a panic")
    }

    pub fn worker_id(&self) -> &str {
        &self.me
    }

    /// The acquisition this worker holds the lease under, if it does.
    pub fn epoch(&self, shard_id: &str) -> Option<u64> {
        self.held().get(shard_id).map(|h| h.epoch)
    }

    /// Whether another worker asked for this held lease.
    pub fn handing_off(&self, shard_id: &str) -> bool {
        self.held().get(shard_id).is_some_and(|h| h.handoff_to.is_some())
    }

    /// Held leases another worker asked for.
    pub fn handoffs(&self) -> Vec<String> {
        self.held().iter().filter(|(_, h)| h.handoff_to.is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// Wakes whenever a lease is taken, lost or asked for.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Hands a lease over to the worker that asked for it; call once its
    /// shard has stopped here (its last batch checkpointed).
    pub async fn hand_over(&self, shard_id: &str) {
        let Some((writing, to)) =
            self.held().get(shard_id).and_then(|h| Some((h.writing.clone(), h.handoff_to.clone()?)))
        else {
            return;
        };
        let _writing = writing.lock().await;
        let Some(counter) = self.held().get(shard_id).map(|h| h.counter) else {
            return;
        };
        self.metrics.lease_request("write");
        match self.table.hand_over(shard_id, &self.me, counter, &to).await {
            Ok(_) => {
                self.held().remove(shard_id);
                tracing::info!(shard_id, to, "lease handed over");
                self.metrics.lease_event("handed_over");
                self.metrics.leases_held(self.held().len());
                self.changed.send_replace(());
            }
            Err(LeaseError::Lost(_)) => self.lose(shard_id, "taken by another worker before the hand-over"),
            Err(LeaseError::Other(e)) => {
                tracing::warn!(shard_id, error = %format!("{e:#}"), "handing a lease over failed; retrying");
            }
        }
    }

    /// Renews held leases (see [`Self::renew_loop`]) and, every half
    /// `renew_every`, scans the table and takes (an expired lease is seen and
    /// taken sooner), until `end` turns true; takes nothing more once
    /// `stopping` is true.
    pub async fn maintain(self: Arc<Self>, stopping: watch::Receiver<bool>, end: watch::Receiver<bool>) {
        tokio::join!(self.renew_loop(end.clone()), self.scan_loop(stopping, end));
    }

    /// Renews each held lease once `renew_every` is three quarters gone
    /// since its last write (a checkpoint counts), each on its own: a
    /// renewal in flight is not started again, and no other waits for it.
    async fn renew_loop(&self, mut end: watch::Receiver<bool>) {
        use futures_util::StreamExt;
        let mut tick = tokio::time::interval(self.renew_every / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewing = futures_util::stream::FuturesUnordered::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let due: Vec<String> = self
                        .held()
                        .iter()
                        .filter(|(key, h)| h.renewed.elapsed() >= self.renew_every * 3 / 4 && !in_flight.contains(*key))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in due {
                        in_flight.insert(key.clone());
                        renewing.push(async move {
                            self.renew(&key).await;
                            key
                        });
                    }
                }
                Some(key) = renewing.next(), if !renewing.is_empty() => {
                    in_flight.remove(&key);
                }
                _ = end.wait_for(|end| *end) => return,
            }
        }
    }

    /// Renews one held lease; drops it only if another worker took it.
    async fn renew(&self, key: &str) {
        let Some(writing) = self.held().get(key).map(|h| h.writing.clone()) else { return };
        let _writing = writing.lock().await;
        // Read after the lock: a checkpoint may have moved the counter meanwhile.
        let Some((counter, renewed)) = self.held().get(key).map(|h| (h.counter, h.renewed)) else { return };
        if renewed.elapsed() < self.renew_every * 3 / 4 {
            return;
        }
        let sent = Instant::now();
        self.metrics.lease_request("write");
        let result = self.table.renew(key, &self.me, counter).await;
        self.metrics.lease_renewal_seconds(sent.elapsed().as_secs_f64());
        match result {
            Ok(next) => {
                if let Some(h) = self.held().get_mut(key) {
                    if h.renew_failures > 0 {
                        tracing::info!(shard_id = key, failures = h.renew_failures, "lease renewed again");
                    }
                    h.counter = next;
                    h.renewed = sent;
                    h.renew_failures = 0;
                }
            }
            Err(LeaseError::Lost(_)) => self.lose(key, "taken by another worker"),
            Err(LeaseError::Other(e)) => {
                let failures = self.held().get_mut(key).map_or(0, |h| {
                    h.renew_failures += 1;
                    h.renew_failures
                });
                // Kept: nobody can take it while the table is unreachable,
                // and if it did move, the next checkpoint here is refused.
                let (error, unrenewed_for) = (format!("{e:#}"), renewed.elapsed());
                if failures == 1 {
                    tracing::warn!(
                        shard_id = key,
                        error,
                        ?unrenewed_for,
                        "renewing a lease failed; keeping it and retrying"
                    );
                } else {
                    tracing::debug!(shard_id = key, error, ?unrenewed_for, failures, "renewing a lease failed again");
                }
            }
        }
    }

    /// Scans the table every half `renew_every`; takes and removes finished
    /// leases unless `stopping`.
    async fn scan_loop(&self, stopping: watch::Receiver<bool>, mut end: watch::Receiver<bool>) {
        let mut observed = Observed::default();
        let mut tick = tokio::time::interval(self.renew_every / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_scan: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = end.wait_for(|end| *end) => return,
            }
            self.metrics.lease_request("scan");
            let leases = match self.table.scan().await {
                Ok(Scanned { leases, malformed }) => {
                    self.note_malformed(malformed);
                    leases
                }
                Err(e) => {
                    if last_scan.is_some_and(|at| at.elapsed() < self.renew_every) {
                        tracing::warn!(error = %format!("{e:#}"), "scanning the lease table failed; retrying");
                    } else {
                        tracing::debug!(error = %format!("{e:#}"), "scanning the lease table failed again");
                    }
                    continue;
                }
            };
            let now = Instant::now();
            if last_scan.is_some_and(|at| now - at > self.renew_every * 2) {
                // This worker was blind for a while (the table unreachable, or
                // this process paused): a counter it did not see move may have
                // moved, or its owner could not write either. Every owner gets
                // a whole lease duration from now.
                tracing::info!(blind_for = ?(now - last_scan.unwrap_or(now)), "the lease table is readable again");
                observed.counters.values_mut().for_each(|(_, since)| *since = now);
                observed.requests.values_mut().for_each(|(_, since)| *since = now);
                observed.asked.values_mut().for_each(|since| *since = now);
            }
            last_scan = Some(now);
            *self.seen() = leases.iter().map(|l| (l.key.clone(), l.clone())).collect();
            self.note_handoff_requests(&leases);
            // Only the stream's listed shards take part (all of them until
            // the first listing).
            let leases: Vec<Lease> = {
                let listed = self.listed.lock().expect("the shard list is never held across a panic");
                leases.into_iter().filter(|l| listed.is_empty() || listed.contains(&l.key)).collect()
            };
            let keys: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
            observed.counters.retain(|key, _| keys.contains(key.as_str()));
            observed.requests.retain(|key, _| keys.contains(key.as_str()));
            for lease in &leases {
                let entry = observed.counters.entry(lease.key.clone()).or_insert((lease.counter, now));
                if entry.0 != lease.counter {
                    *entry = (lease.counter, now);
                }
                match &lease.handoff_to {
                    Some(to) => {
                        let entry = observed.requests.entry(lease.key.clone()).or_insert((to.clone(), now));
                        if entry.0 != *to {
                            *entry = (to.clone(), now);
                        }
                    }
                    None => {
                        observed.requests.remove(&lease.key);
                    }
                }
            }
            observed
                .asked
                .retain(|key, _| leases.iter().any(|l| l.key == *key && l.handoff_to.as_deref() == Some(&self.me)));
            if *stopping.borrow() {
                continue;
            }
            self.remove_finished(&leases, &mut observed.removable).await;
            self.take_round(&leases, &mut observed).await;
        }
    }

    fn lose(&self, key: &str, why: &str) {
        if self.held().remove(key).is_some() {
            tracing::warn!(shard_id = key, why, "lease lost; the shard stops here");
            self.metrics.lease_event("lost");
            self.metrics.leases_held(self.held().len());
            self.changed.send_replace(());
        }
    }

    /// Deletes the lease of a finished parent once every child has a lease
    /// that started (held, or checkpointed) and `finished_retention` has
    /// passed since this worker first saw that, as the KCL cleans up.
    async fn remove_finished(&self, leases: &[Lease], removable: &mut HashMap<String, Instant>) {
        let now = Instant::now();
        let started = |l: &Lease| l.owner.is_some() || !is_start_sentinel(&l.checkpoint);
        let ready: HashSet<&str> = leases
            .iter()
            .filter(|l| l.checkpoint == SHARD_END)
            .filter(|parent| {
                let children: Vec<&Lease> = leases.iter().filter(|l| l.parents.contains(&parent.key)).collect();
                !children.is_empty() && children.iter().all(|c| started(c))
            })
            .map(|l| l.key.as_str())
            .collect();
        removable.retain(|key, _| ready.contains(key.as_str()));
        let due: Vec<&str> = ready
            .into_iter()
            .filter(|key| removable.entry((*key).to_owned()).or_insert(now).elapsed() >= self.finished_retention)
            .take(WRITES_PER_ROUND)
            .collect();
        let deletions: Vec<_> = due.iter().map(|key| self.delete_finished(key)).collect();
        at_most(WRITES_AT_ONCE, deletions).await;
        for key in due {
            removable.remove(key);
        }
    }

    async fn delete_finished(&self, key: &str) {
        self.metrics.lease_request("write");
        match self.table.delete_finished(key).await {
            Ok(true) => tracing::info!(shard_id = key, "finished parent's lease removed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(shard_id = key, error = %format!("{e:#}"), "removing a finished lease failed"),
        }
    }

    /// Reports lease items nobody can use: a warning the first time this
    /// worker sees each (or its reason changes), a metric and `/healthz` while
    /// they last. Nobody takes them, so their shards stay unserved.
    fn note_malformed(&self, malformed: Vec<Malformed>) {
        let mut reported = self.malformed.lock().expect("never held across a panic");
        for item in &malformed {
            if reported.get(&item.key) != Some(&item.why) {
                tracing::warn!(
                    shard_id = item.key,
                    why = item.why,
                    "a lease item is unusable; its shard goes unserved until it is repaired"
                );
            }
        }
        *reported = malformed.iter().map(|m| (m.key.clone(), m.why.clone())).collect();
        self.metrics.malformed_leases(malformed.into_iter().map(|m| format!("{} ({})", m.key, m.why)).collect());
    }

    /// Marks held leases that another worker asked for; the run loop stops
    /// their shards and hands them over.
    fn note_handoff_requests(&self, leases: &[Lease]) {
        let mut asked = false;
        for lease in leases {
            let Some(to) = lease.handoff_to.as_deref().filter(|to| *to != self.me) else { continue };
            if let Some(held) = self.held().get_mut(&lease.key)
                && held.handoff_to.is_none()
            {
                tracing::info!(shard_id = lease.key, to, "hand-off asked for: stopping after the batch in flight");
                held.handoff_to = Some(to.to_owned());
                asked = true;
            }
        }
        if asked {
            self.changed.send_replace(());
        }
    }

    /// One round of taking:
    /// - leases handed over to this worker, and leases under its id that
    ///   nobody renews (left by an earlier run of it);
    /// - its share by [`balance::to_take`]: available leases at once, a live
    ///   worker's by asking it for a hand-off;
    /// - a lease whose owner ignored the request for [`HANDOFF_PATIENCE`]
    ///   lease durations, by taking it.
    async fn take_round(&self, leases: &[Lease], observed: &mut Observed) {
        let expired_for =
            |l: &Lease| observed.counters.get(&l.key).is_some_and(|(_, since)| since.elapsed() > self.duration);
        let patience = self.duration * HANDOFF_PATIENCE;
        let expired: HashSet<&str> = leases
            .iter()
            .filter(|l| l.owner.as_deref().is_some_and(|o| o != self.me) && expired_for(l))
            .map(|l| l.key.as_str())
            .collect();
        // A request left by a worker that is gone: nobody counts it, anyone may replace it.
        let stale_requests: HashSet<&str> = leases
            .iter()
            .filter(|l| observed.requests.get(&l.key).is_some_and(|(_, since)| since.elapsed() > patience * 2))
            .map(|l| l.key.as_str())
            .collect();
        let mine_unheld: Vec<&Lease> = leases
            .iter()
            .filter(|l| {
                l.owner.as_deref() == Some(&self.me) && l.checkpoint != SHARD_END && self.epoch(&l.key).is_none()
            })
            .filter(|l| l.handoff_to.as_deref() == Some(&self.me) || expired_for(l))
            .collect();
        let ignored: Vec<&Lease> =
            leases.iter().filter(|l| observed.asked.get(&l.key).is_some_and(|at| at.elapsed() > patience)).collect();
        let mut writes: Vec<Write> = mine_unheld.into_iter().map(|l| Write::Take(l, "taken")).collect();
        for lease in balance::to_take(&self.me, leases, &expired, &stale_requests) {
            let live = lease.owner.as_deref().is_some_and(|o| o != self.me) && !expired.contains(lease.key.as_str());
            writes.push(if live {
                Write::Ask(lease, lease.handoff_to.as_deref().filter(|_| stale_requests.contains(lease.key.as_str())))
            } else {
                Write::Take(lease, "taken")
            });
        }
        for lease in ignored {
            tracing::warn!(shard_id = lease.key, owner = lease.owner.as_deref(), "hand-off ignored: taking the lease");
            writes.push(Write::Take(lease, "stolen"));
        }
        writes.truncate(WRITES_PER_ROUND);
        let done = at_most(WRITES_AT_ONCE, writes.iter().map(|write| self.write(write)).collect::<Vec<_>>()).await;
        let mut took = false;
        for (key, taken, asked) in done {
            if taken {
                observed.asked.remove(key);
                took = true;
            }
            if asked {
                observed.asked.insert(key.to_owned(), Instant::now());
            }
        }
        if took {
            self.metrics.leases_held(self.held().len());
            self.changed.send_replace(());
        }
    }

    /// Makes one write of a round: the lease's key, whether it was taken,
    /// whether a hand-off was asked for.
    async fn write<'a>(&self, write: &Write<'a>) -> (&'a str, bool, bool) {
        match *write {
            Write::Take(lease, event) => (lease.key.as_str(), self.take(lease, event).await, false),
            Write::Ask(lease, stale) => (lease.key.as_str(), false, self.ask(lease, stale).await),
        }
    }

    /// Asks the live owner of `lease` to hand it over; whether the request
    /// is written.
    async fn ask(&self, lease: &Lease, stale: Option<&str>) -> bool {
        self.metrics.lease_request("write");
        match self.table.request_handoff(lease, &self.me, stale).await {
            Ok(()) => {
                tracing::info!(shard_id = lease.key, from = lease.owner.as_deref(), "hand-off asked for");
                self.metrics.lease_event("handoff_asked");
                true
            }
            Err(LeaseError::Lost(_)) => {
                tracing::debug!(shard_id = lease.key, "lease moved before a hand-off was asked");
                false
            }
            Err(LeaseError::Other(e)) => {
                tracing::warn!(shard_id = lease.key, error = %format!("{e:#}"), "asking for a hand-off failed");
                false
            }
        }
    }

    /// Takes one lease as seen; whether it did.
    async fn take(&self, lease: &Lease, event: &'static str) -> bool {
        let sent = Instant::now();
        self.metrics.lease_request("write");
        match self.table.take(lease, &self.me).await {
            Ok(taken) => {
                tracing::info!(shard_id = lease.key, from = lease.owner.as_deref(), event, "lease taken");
                let counter = taken.counter;
                self.held().insert(
                    lease.key.clone(),
                    Held {
                        epoch: counter,
                        counter,
                        renewed: sent,
                        checkpoint: taken.checkpoint,
                        sub_sequence: taken.sub_sequence,
                        start_timestamp_ms: taken.start_timestamp_ms,
                        writing: Arc::default(),
                        handoff_to: None,
                        renew_failures: 0,
                    },
                );
                self.metrics.lease_event(event);
                true
            }
            Err(LeaseError::Lost(_)) => {
                tracing::debug!(shard_id = lease.key, "lease moved before it was taken");
                false
            }
            Err(LeaseError::Other(e)) => {
                tracing::warn!(shard_id = lease.key, error = %format!("{e:#}"), "taking a lease failed");
                false
            }
        }
    }

    /// Creates a lease for every listed shard without one, and records new
    /// children on their parents' leases. A descendant of a shard being read
    /// starts at its trim horizon, so a split or merge skips nothing; a new
    /// table's shards at `start_at`. A shard with a leased descendant (its
    /// own lease removed once finished) gets none, however many generations
    /// back ([`lineage`]).
    ///
    /// # Errors
    /// The table cannot be scanned or written.
    pub async fn sync_shards(&self, shards: &[Shard], start_at: StartAt) -> anyhow::Result<()> {
        *self.listed.lock().expect("the shard list is never held across a panic") =
            shards.iter().map(|s| s.shard_id().to_owned()).collect();
        self.metrics.lease_request("scan");
        let leases = self.table.scan().await?.leases;
        let existing: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        let leased: HashMap<&str, &[String]> = leases.iter().map(|l| (l.key.as_str(), l.parents.as_slice())).collect();
        let mut new_children: HashMap<&str, Vec<String>> = HashMap::new();
        for lineage::Planned { shard, parents, from_trim_horizon } in lineage::plan(shards, &leased) {
            let (checkpoint, start_timestamp_ms) = if from_trim_horizon {
                ("TRIM_HORIZON", None)
            } else {
                match start_at {
                    StartAt::TrimHorizon => ("TRIM_HORIZON", None),
                    StartAt::Latest => ("LATEST", Some(unix_ms(SystemTime::now()))),
                    StartAt::Timestamp(t) => ("AT_TIMESTAMP", Some(unix_ms(t))),
                }
            };
            let lease = Lease {
                key: shard.shard_id().to_owned(),
                owner: None,
                counter: 0,
                checkpoint: checkpoint.to_owned(),
                sub_sequence: 0,
                owner_switches: 0,
                parents: parents.clone(),
                children: Vec::new(),
                hash_keys: shard
                    .hash_key_range()
                    .map(|r| (r.starting_hash_key().to_owned(), r.ending_hash_key().to_owned())),
                start_timestamp_ms,
                handoff_to: None,
            };
            self.metrics.lease_request("write");
            if self.table.create(&lease).await? {
                tracing::info!(shard_id = lease.key, checkpoint, ?parents, "lease created");
            }
            for parent in parents.iter().filter_map(|p| existing.get(p.as_str())) {
                new_children.entry(&parent.key).or_insert_with(|| parent.children.clone()).push(lease.key.clone());
            }
        }
        for (parent, mut children) in new_children {
            children.sort_unstable();
            children.dedup();
            self.metrics.lease_request("write");
            self.table.set_children(parent, &children).await?;
        }
        Ok(())
    }

    /// Gives up every held lease (after the shards stopped and checkpointed),
    /// so other workers take them at once, and withdraws this worker's
    /// hand-off requests and hand-overs it did not take yet.
    pub async fn release_all(&self) {
        let held: Vec<(String, u64)> = self.held().drain().map(|(k, h)| (k, h.counter)).collect();
        for (key, counter) in held {
            self.metrics.lease_request("write");
            match self.table.release(&key, &self.me, counter).await {
                Ok(_) => {
                    self.metrics.lease_event("released");
                    tracing::info!(shard_id = key, "lease released");
                }
                Err(e) => tracing::warn!(shard_id = key, error = %format!("{e:#}"), "releasing a lease failed"),
            }
        }
        let pending: Vec<Lease> =
            self.seen().values().filter(|l| l.handoff_to.as_deref() == Some(&self.me)).cloned().collect();
        for lease in pending {
            self.metrics.lease_request("write");
            if let Err(e) = self.table.withdraw_handoff(&lease, &self.me).await {
                tracing::debug!(shard_id = lease.key, error = %e, "withdrawing a hand-off request failed");
            }
        }
        self.metrics.leases_held(0);
    }

    /// The checkpoint of a shard, its sub-sequence and start time: this
    /// worker's own if it holds the lease, else the last scan's.
    fn stored_checkpoint(&self, shard_id: &str) -> Option<(String, u64, Option<i64>)> {
        match self.held().get(shard_id) {
            Some(held) => Some((held.checkpoint.clone(), held.sub_sequence, held.start_timestamp_ms)),
            None => self.seen().get(shard_id).map(|l| (l.checkpoint.clone(), l.sub_sequence, l.start_timestamp_ms)),
        }
    }

    async fn write_checkpoint(&self, shard_id: &str, epoch: Option<u64>, value: &str) -> Result<(), LeaseError> {
        let writing = self.held().get(shard_id).filter(|h| epoch == Some(h.epoch)).map(|h| h.writing.clone());
        let Some(writing) = writing else {
            return Err(LeaseError::Lost(shard_id.to_owned()));
        };
        let _writing = writing.lock().await;
        let counter = self
            .held()
            .get(shard_id)
            .filter(|h| epoch == Some(h.epoch))
            .map(|h| h.counter)
            .ok_or_else(|| LeaseError::Lost(shard_id.to_owned()))?;
        let sent = Instant::now();
        self.metrics.lease_request("write");
        match self.table.checkpoint(shard_id, &self.me, counter, value).await {
            Ok(next) => {
                if let Some(h) = self.held().get_mut(shard_id) {
                    h.counter = next;
                    h.renewed = sent;
                    value.clone_into(&mut h.checkpoint);
                    h.sub_sequence = 0;
                }
                if let Some(l) = self.seen().get_mut(shard_id) {
                    value.clone_into(&mut l.checkpoint);
                    l.sub_sequence = 0;
                }
                if value == SHARD_END {
                    // Read to its end: nothing to renew any more. Its children
                    // see the SHARD_END; nobody takes a finished lease.
                    self.metrics.lease_request("write");
                    if self.table.release(shard_id, &self.me, next).await.is_ok() {
                        tracing::info!(shard_id, "finished shard's lease released");
                    }
                    self.held().remove(shard_id);
                    self.metrics.leases_held(self.held().len());
                }
                Ok(())
            }
            Err(e) => {
                if let LeaseError::Lost(_) = e {
                    self.lose(shard_id, "a checkpoint was refused: taken by another worker");
                }
                Err(e)
            }
        }
    }
}

/// One write of a round of taking.
enum Write<'a> {
    Take(&'a Lease, &'static str),
    /// Ask a live owner for a hand-off, replacing a stale request if any.
    Ask(&'a Lease, Option<&'a str>),
}

/// Runs `writes`, at most `n` at once; their results in the order they finish.
async fn at_most<F: std::future::Future>(n: usize, writes: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(writes).buffer_unordered(n).collect().await
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The KCL's sentinels of a lease never checkpointed.
fn is_start_sentinel(checkpoint: &str) -> bool {
    matches!(checkpoint, "TRIM_HORIZON" | "LATEST" | "AT_TIMESTAMP")
}

impl CheckpointStore for Leases {
    fn get(&self, shard_id: &str) -> Option<Checkpoint> {
        let (checkpoint, sub_sequence, _) = self.stored_checkpoint(shard_id)?;
        match checkpoint.as_str() {
            SHARD_END => Some(Checkpoint::ShardEnd),
            // Inside an aggregate: see `resume_at`.
            seq if is_start_sentinel(seq) || sub_sequence > 0 => None,
            seq => Some(Checkpoint::At(seq.to_owned())),
        }
    }

    fn resume_at(&self, shard_id: &str) -> Option<Position> {
        let (checkpoint, sub_sequence, timestamp) = self.stored_checkpoint(shard_id)?;
        let at = timestamp.map(|ms| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        match checkpoint.as_str() {
            "TRIM_HORIZON" => Some(Position::TrimHorizon),
            "LATEST" => Some(at.map_or(Position::Latest, Position::Timestamp)),
            // A KCL application keeps the time in its configuration: ours applies.
            "AT_TIMESTAMP" => at.map(Position::Timestamp),
            SHARD_END => None,
            // A KCL checkpoint part-way through a KPL aggregate: the aggregate
            // again, its first user records twice rather than its last never.
            seq if sub_sequence > 0 => Some(Position::At(seq.to_owned())),
            _ => None,
        }
    }

    /// Called off the async threads (the trait's contract), so it may wait
    /// on the runtime.
    fn set(&self, shard_id: &str, epoch: Option<u64>, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let value = match checkpoint {
            Checkpoint::At(seq) => seq.as_str(),
            Checkpoint::ShardEnd => SHARD_END,
        };
        tokio::runtime::Handle::current().block_on(self.write_checkpoint(shard_id, epoch, value))?;
        Ok(())
    }
}
