//! The module registry, in process against the in-memory registry (real
//! modules, real gate, real roll-out): a worker follows publications and
//! roll-backs, refuses a revision its own gate refuses or whose bytes do not
//! match their digest (once, never in a loop), skips a malformed item and a
//! revision that goes backwards, rides out being cut off and picks up what
//! was published meanwhile, and restarts on what it served last. Two
//! publishers racing: one wins, the other is told who.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offerd::catalog::Catalogs;
use offerd::engine::{Engine, Limits};
use offerd::metrics::Metrics;
use offerd::registry::follow::{FollowSettings, Follower, Poll};
use offerd::registry::memory::MemoryRegistry;
use offerd::registry::publish::{Publication, PublishError, publish, rollback};
use offerd::registry::state::StateDir;
use offerd::registry::{ObjectKind, Registry, RegistryError};
use offerd::rollout::Rollout;
use offerd::signing::TrustedKeys;

use super::catalogs;

const DEADLINE: Duration = Duration::from_secs(60);

/// A worker: its roll-out over a fresh local state, and its follower.
struct Worker {
    rollout: Arc<Rollout>,
    follower: Arc<Follower>,
}

fn worker(registry: Arc<dyn Registry>, state: &Path, engine: Engine, name: &str) -> Worker {
    let state = StateDir::open(state, &catalogs()).unwrap();
    let routing = Arc::new(Catalogs::load(&state.catalogs_dir()).unwrap());
    let metrics = Arc::new(Metrics::default());
    let (_, rollout) = Rollout::start(
        engine,
        state.module_store().unwrap(),
        &state.catalogs_dir(),
        routing.clone(),
        metrics.clone(),
        true,
    )
    .unwrap();
    let rollout = Arc::new(rollout);
    let settings = FollowSettings {
        worker: name.into(),
        poll_every: Duration::from_millis(20),
        heartbeat_every: Duration::from_secs(1),
    };
    let follower = Arc::new(Follower::new(registry, rollout.clone(), routing, state, metrics, settings));
    Worker { rollout, follower }
}

fn serving(worker: &Worker, region: &str) -> Option<String> {
    worker.rollout.enricher().active(region).map(|a| a.rules.module().info().digest.clone())
}

fn component(name: &str) -> Vec<u8> {
    std::fs::read(offerd_tests::component(name)).unwrap()
}

async fn publish_module(
    registry: &dyn Registry,
    region: &str,
    module: Vec<u8>,
    publisher: &str,
) -> Result<u64, PublishError> {
    let routing = Catalogs::load(&catalogs()).unwrap();
    let publication = Publication {
        region: region.into(),
        module: Some(module),
        catalog: None,
        publisher: publisher.into(),
        expect_revision: None,
    };
    let engine = Engine::new(Limits::default()).unwrap();
    publish(registry, &engine, &routing, &catalogs(), &[], publication).await.map(|p| p.state.current.revision)
}

/// Waits until `done` holds, polling.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signed(module: &[u8], key_dir: &Path, key_id: &str) -> Vec<u8> {
    offerd::signing::sign(&key_dir.join(format!("{key_id}.key")), module).unwrap().0
}

/// A worker with trusted keys refuses a revision signed by a key it lacks,
/// keeps serving, reports why, and does not fetch or gate it again; then a
/// roll-back and a fresh revision reach it. A tampered object is refused
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reported_once_and_what_serves_keeps_serving() {
    let registry = Arc::new(MemoryRegistry::default());
    let keys = tempfile::tempdir().unwrap();
    let trusted_id = offerd::signing::keygen(&keys.path().join("trusted")).unwrap();
    let other_id = offerd::signing::keygen(&keys.path().join("other")).unwrap();
    let trusted_dir = keys.path().join("trusted");
    let v1 = signed(&component("reference"), &trusted_dir, &trusted_id);
    let v2_untrusted = signed(&component("misbehave"), &keys.path().join("other"), &other_id);
    // Public keys only, as a worker holds them.
    let public = keys.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::copy(trusted_dir.join(format!("{trusted_id}.pub")), public.join(format!("{trusted_id}.pub"))).unwrap();
    let trusted = Arc::new(TrustedKeys::load(&public).unwrap());

    assert_eq!(publish_module(&*registry, "europe", v1.clone(), "ci").await.unwrap(), 1);
    let state = tempfile::tempdir().unwrap();
    let engine = Engine::new(Limits::default()).unwrap().trusting(Some(trusted));
    let w = worker(registry.clone(), state.path(), engine, "w1");
    assert_eq!(w.follower.poll().await, Poll::Answered { swapped: 1 });
    let v1_digest = offerd::engine::digest(&v1);
    assert_eq!(serving(&w, "europe"), Some(v1_digest.clone()));

    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(w.follower.clone().run(stopping));
    // Signed by a key this worker does not trust: refused, v1 serves.
    assert_eq!(publish_module(&*registry, "europe", v2_untrusted, "ci").await.unwrap(), 2);
    until("the refusal is reported", || {
        registry.report_of("w1").and_then(|r| r.regions["europe"].refused.clone()).is_some_and(|f| f.revision == 2)
    })
    .await;
    let report = registry.report_of("w1").unwrap();
    let europe = &report.regions["europe"];
    assert_eq!(europe.serving, Some(1));
    let reason = &europe.refused.as_ref().unwrap().reason;
    assert!(reason.contains(&other_id) && reason.contains("trusted"), "{reason}");
    assert_eq!(serving(&w, "europe"), Some(v1_digest.clone()));
    // Not fetched again, however many polls go by.
    let (fetches, polls) = (registry.fetches(), registry.polls());
    until("ten more polls", || registry.polls() >= polls + 10).await;
    assert_eq!(registry.fetches(), fetches, "a refused revision is not fetched again");

    // Bytes that do not match their digest: refused before any gate.
    let v3 =
        signed(&xtask::component_edits::with_custom_section(&component("reference"), 3), &trusted_dir, &trusted_id);
    let v3_digest = offerd::engine::digest(&v3);
    registry.tamper(ObjectKind::Module, &v3_digest, v1.clone());
    registry.force({
        let mut s = registry.region("europe").await.unwrap().unwrap();
        let mut next = s.current.clone();
        next.revision = 3;
        next.module = v3_digest.clone();
        s = offerd::registry::RegionState::advanced(Some(&s), "europe", next);
        s
    });
    until("the tampered object is refused", || {
        registry.report_of("w1").and_then(|r| r.regions["europe"].refused.clone()).is_some_and(|f| f.revision == 3)
    })
    .await;
    let reason = registry.report_of("w1").unwrap().regions["europe"].refused.clone().unwrap().reason;
    assert!(reason.contains(&format!("not {v3_digest}")), "{reason}");
    assert_eq!(serving(&w, "europe"), Some(v1_digest.clone()));

    // A roll-back to revision 1 is a new revision; v1 serves it, refusal cleared.
    let back = rollback(&*registry, "europe", Some(1), "ops".into()).await.unwrap();
    assert_eq!(back.current.revision, 4);
    until("the roll-back is served", || {
        registry
            .report_of("w1")
            .is_some_and(|r| r.regions["europe"].serving == Some(4) && r.regions["europe"].refused.is_none())
    })
    .await;
    assert_eq!(serving(&w, "europe"), Some(v1_digest));
    task.abort();
}

/// Cut off from the registry, a worker keeps serving, says since when, and
/// picks up what was published meanwhile once it is back. A malformed item
/// and a revision going backwards are skipped; other regions follow on.
/// Restarted while cut off, it serves what it served last, degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_a_malformed_item_and_a_revision_going_backwards_stop_nothing() {
    let registry = Arc::new(MemoryRegistry::default());
    let reference = component("reference");
    publish_module(&*registry, "europe", reference.clone(), "ci").await.unwrap();
    publish_module(&*registry, "north-america", reference.clone(), "ci").await.unwrap();
    let client = Arc::new(registry.client());
    let state = tempfile::tempdir().unwrap();
    let w = worker(client.clone(), state.path(), Engine::new(Limits::default()).unwrap(), "w1");
    assert_eq!(w.follower.poll().await, Poll::Answered { swapped: 2 });

    client.cut_off(true);
    assert_eq!(w.follower.poll().await, Poll::Unreachable);
    assert!(w.follower.unreachable_since_ms().is_some());
    let v2 = component("misbehave");
    let v2_digest = offerd::engine::digest(&v2);
    publish_module(&*registry, "europe", v2.clone(), "ci").await.unwrap();
    assert_eq!(w.follower.poll().await, Poll::Unreachable);
    assert_eq!(serving(&w, "europe"), Some(offerd::engine::digest(&reference)), "still serving while cut off");

    client.cut_off(false);
    registry.write_malformed("asia", "{ not json");
    assert_eq!(w.follower.poll().await, Poll::Answered { swapped: 1 });
    assert!(w.follower.unreachable_since_ms().is_none());
    assert_eq!(serving(&w, "europe"), Some(v2_digest.clone()), "the publication made while cut off arrived");

    // Backwards (europe at revision 1 below the 2 served) is ignored; the
    // same number with other bytes (north-america, as a recreated registry
    // would have it) is news.
    let mut current = registry.region("europe").await.unwrap().unwrap();
    current.current.revision = 1;
    current.current.module = offerd::engine::digest(&reference);
    registry.force(current);
    let mut renumbered = registry.region("north-america").await.unwrap().unwrap();
    renumbered.current.module = v2_digest.clone();
    registry.force(renumbered);
    assert_eq!(w.follower.poll().await, Poll::Answered { swapped: 1 });
    assert_eq!(serving(&w, "europe"), Some(v2_digest.clone()));
    assert_eq!(serving(&w, "north-america"), Some(v2_digest.clone()));

    // Restarted while cut off: serves what it served, from the local state.
    drop(w);
    client.cut_off(true);
    let restarted = worker(client.clone(), state.path(), Engine::new(Limits::default()).unwrap(), "w1");
    assert_eq!(restarted.follower.poll().await, Poll::Unreachable);
    assert_eq!(serving(&restarted, "europe"), Some(v2_digest.clone()));
    assert_eq!(serving(&restarted, "north-america"), Some(v2_digest.clone()));
    assert_eq!(serving(&restarted, "asia-pacific"), None);

    // A kept catalog that no longer loads (routing changed, a damaged file):
    // start from --catalogs and take the registry's revisions again.
    drop(restarted);
    std::fs::write(state.path().join("catalogs/europe.toml"), "region = \"elsewhere\"\n").unwrap();
    client.cut_off(false);
    let recovered = worker(client.clone(), state.path(), Engine::new(Limits::default()).unwrap(), "w1");
    assert_eq!(recovered.follower.poll().await, Poll::Answered { swapped: 2 });
    assert_eq!(serving(&recovered, "north-america"), Some(v2_digest));
}

/// Two publishers from the same revision: exactly one wins, the other is
/// told who won; `expect_revision` refuses a change made on a stale view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_one_wins_and_the_other_is_told_who() {
    let registry = Arc::new(MemoryRegistry::default());
    publish_module(&*registry, "europe", component("reference"), "first").await.unwrap();
    let catalogs_dir: PathBuf = catalogs();
    let race = |publisher: &'static str, module: Vec<u8>| {
        let registry = registry.clone();
        let catalogs_dir = catalogs_dir.clone();
        async move {
            let catalogs = Catalogs::load(&catalogs_dir).unwrap();
            let engine = Engine::new(Limits::default()).unwrap();
            let publication = Publication {
                region: "europe".into(),
                module: Some(module),
                catalog: None,
                publisher: publisher.into(),
                expect_revision: Some(1),
            };
            publish(&*registry, &engine, &catalogs, &catalogs_dir, &[], publication).await
        }
    };
    let a_module = component("misbehave");
    let b_module = xtask::component_edits::with_custom_section(&component("reference"), 9);
    let (a, b) = tokio::join!(race("alice", a_module), race("bob", b_module));
    let (winner, loser) = match (&a, &b) {
        (Ok(_), Err(e)) => ("alice", e),
        (Err(e), Ok(_)) => ("bob", e),
        other => panic!("exactly one must win: {other:?}"),
    };
    let PublishError::Registry(RegistryError::Conflict { winner: Some(w), .. }) = loser else {
        panic!("the loser is told of a conflict: {loser}");
    };
    assert_eq!(w.current.publisher, winner);
    assert_eq!(w.current.revision, 2);
    assert!(loser.to_string().contains(winner), "{loser}");
    assert_eq!(registry.region("europe").await.unwrap().unwrap().history.len(), 1);

    // Roll-backs with nothing to go back to are refused, saying so.
    let none = rollback(&*registry, "asia-pacific", None, "ops".into()).await.unwrap_err();
    assert!(none.to_string().contains("asia-pacific has no revision"), "{none}");
    publish_module(&*registry, "north-america", component("reference"), "first").await.unwrap();
    let first = rollback(&*registry, "north-america", None, "ops".into()).await.unwrap_err();
    assert!(first.to_string().contains("no earlier revision"), "{first}");
    let unknown = rollback(&*registry, "europe", Some(7), "ops".into()).await.unwrap_err();
    assert!(unknown.to_string().contains("no revision 7 in its history (kept: 1)"), "{unknown}");
}
