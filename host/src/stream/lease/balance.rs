//! Which leases a worker takes in one round: a pure function of the table
//! as scanned, so that balancing is tested without DynamoDB.
//!
//! Each worker aims at its fair share, ⌈active leases ÷ live workers⌉. It
//! takes available leases (unowned, or expired: their counter has not moved
//! for a lease duration) up to its share; with none available it asks the
//! most loaded worker for leases (a hand-off, counted as its own from then), as many as that worker holds beyond the
//! share and it still needs (one when both are at the share and it needs
//! more than one). Finished parents count toward nobody's load, and a child
//! is taken only once all its parents are finished.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::table::{Lease, SHARD_END};

/// The leases `me` should take now, in the order to try them.
/// `stale_requests`: leases whose hand-off request was left by a worker that
/// is gone; they count for their owner, and may be asked for again.
pub fn to_take<'a>(
    me: &str,
    leases: &'a [Lease],
    expired: &HashSet<&str>,
    stale_requests: &HashSet<&str>,
) -> Vec<&'a Lease> {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let finished = |l: &Lease| l.checkpoint == SHARD_END;
    // A parent that has no lease any more was finished and removed.
    let ready = |l: &Lease| l.parents.iter().all(|p| by_key.get(p.as_str()).is_none_or(|p| finished(p)));
    let live_owner = |l: &'a Lease| l.owner.as_deref().filter(|_| !expired.contains(l.key.as_str()));

    let active: Vec<&Lease> = leases.iter().filter(|l| !finished(l) && (ready(l) || live_owner(l).is_some())).collect();
    let mut load: BTreeMap<&str, Vec<&Lease>> = BTreeMap::from([(me, Vec::new())]);
    for lease in &active {
        // A lease being handed over to a worker is already its load.
        let holder = match (live_owner(lease), lease.handoff_to.as_deref()) {
            (Some(_), Some(to)) if !stale_requests.contains(lease.key.as_str()) => Some(to),
            (owner, _) => owner,
        };
        if let Some(holder) = holder {
            load.entry(holder).or_default().push(lease);
        }
    }
    let target = active.len().div_ceil(load.len());
    let needed = target.saturating_sub(load[me].len());
    if needed == 0 {
        return Vec::new();
    }
    let mut available: Vec<&Lease> = active
        .iter()
        .copied()
        .filter(|l| ready(l) && live_owner(l).is_none() && l.owner.as_deref() != Some(me))
        .collect();
    if !available.is_empty() {
        spread(me, &mut available);
        available.truncate(needed);
        return available;
    }
    // Steal from the most loaded worker (ties: the first by name).
    let Some((_, victim)) = load
        .iter()
        .filter(|(owner, _)| **owner != me)
        .max_by_key(|(owner, held)| (held.len(), std::cmp::Reverse(*owner)))
    else {
        return Vec::new();
    };
    let mut n = needed.min(victim.len().saturating_sub(target));
    if n == 0 && needed > 1 && victim.len() >= target {
        n = 1;
    }
    let mut stealable: Vec<&Lease> = victim.clone();
    spread(me, &mut stealable);
    stealable.truncate(n);
    stealable
}

/// Orders leases differently for each worker, so that workers taking at the
/// same moment mostly try different leases instead of racing for the same.
fn spread(me: &str, leases: &mut [&Lease]) {
    use std::hash::{Hash, Hasher};
    leases.sort_by_cached_key(|l| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (me, &l.key).hash(&mut h);
        h.finish()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, owner: Option<&str>) -> Lease {
        Lease {
            key: key.into(),
            owner: owner.map(Into::into),
            counter: 1,
            checkpoint: "TRIM_HORIZON".into(),
            sub_sequence: 0,
            owner_switches: 0,
            parents: Vec::new(),
            children: Vec::new(),
            hash_keys: None,
            start_timestamp_ms: None,
            handoff_to: None,
        }
    }

    /// Runs rounds (each worker in turn takes what `to_take` says) until
    /// nothing moves; the leases each worker holds, and how many moved.
    fn settle(workers: &[&str], leases: &mut [Lease]) -> (BTreeMap<String, usize>, usize) {
        let mut moved = 0;
        for _ in 0..100 {
            let mut changed = false;
            for me in workers {
                let keys: Vec<String> =
                    to_take(me, leases, &HashSet::new(), &HashSet::new()).iter().map(|l| l.key.clone()).collect();
                for key in keys {
                    let lease = leases.iter_mut().find(|l| l.key == key).unwrap();
                    moved += usize::from(lease.owner.is_some());
                    lease.owner = Some((*me).into());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut held: BTreeMap<String, usize> = workers.iter().map(|w| ((*w).to_owned(), 0)).collect();
        for l in leases.iter().filter(|l| l.checkpoint != SHARD_END) {
            *held.entry(l.owner.clone().unwrap_or_default()).or_default() += 1;
        }
        (held, moved)
    }

    #[test]
    fn three_workers_share_eight_shards_within_one_and_a_fourth_takes_its_share_moving_only_that() {
        let mut leases: Vec<Lease> = (0..8).map(|i| lease(&format!("shard-{i}"), None)).collect();
        // The first to scan sees only itself and takes all eight; b steals
        // its share of two workers (4), then c one from each (2).
        let (held, moved) = settle(&["a", "b", "c"], &mut leases);
        assert!(held.values().all(|n| (2..=3).contains(n)), "{held:?}");
        assert_eq!(moved, 6);
        let (held, moved) = settle(&["a", "b", "c", "d"], &mut leases);
        assert_eq!(held.values().copied().collect::<Vec<_>>(), [2, 2, 2, 2], "{held:?}");
        assert_eq!(moved, 2, "only the leases d needs move");
    }

    #[test]
    fn expired_leases_go_first_and_a_worker_far_below_its_share_steals_several_at_once() {
        let mut leases: Vec<Lease> =
            (0..6).map(|i| lease(&format!("s{i}"), Some(if i < 3 { "a" } else { "b" }))).collect();
        leases.extend((6..12).map(|i| lease(&format!("s{i}"), Some("a"))));
        // b's leases expired: c takes those, not a's.
        let expired: HashSet<&str> = ["s3", "s4", "s5"].into();
        let took: Vec<&str> = to_take("c", &leases, &expired, &HashSet::new()).iter().map(|l| l.key.as_str()).collect();
        let mut sorted = took.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["s3", "s4", "s5"]);
        // None expired: a holds 9 of 12; the share is ⌈12/3⌉ = 4, so c steals
        // its whole share from a in one round, and nothing from b.
        let stolen = to_take("c", &leases, &HashSet::new(), &HashSet::new());
        assert_eq!(stolen.len(), 4);
        assert!(stolen.iter().all(|l| l.owner.as_deref() == Some("a")));
    }

    #[test]
    fn finished_parents_count_for_nobody_and_children_wait_for_every_parent() {
        let mut parent_a = lease("p-a", Some("a"));
        parent_a.checkpoint = SHARD_END.into();
        let parent_b = lease("p-b", Some("b"));
        let mut child = lease("child", None);
        child.parents = vec!["p-a".into(), "p-b".into()];
        let leases = vec![parent_a.clone(), parent_b.clone(), child.clone()];
        // p-b still open: the merged child waits.
        assert!(to_take("a", &leases, &HashSet::new(), &HashSet::new()).is_empty());
        let mut parent_b = parent_b;
        parent_b.checkpoint = SHARD_END.into();
        let leases = vec![parent_a, parent_b, child];
        let took: Vec<&str> =
            to_take("a", &leases, &HashSet::new(), &HashSet::new()).iter().map(|l| l.key.as_str()).collect();
        assert_eq!(took, ["child"], "a holds only a finished parent: its load is 0");
    }

    #[test]
    fn a_lease_being_handed_over_counts_for_the_worker_that_asked() {
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), Some("a"))).collect();
        // b asked for one: it is b's load now, and b asks for one more, not two.
        leases[0].handoff_to = Some("b".into());
        let asked: Vec<String> =
            to_take("b", &leases, &HashSet::new(), &HashSet::new()).iter().map(|l| l.key.clone()).collect();
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_ne!(asked[0], "s0");
        // With both asked for, b is at its share.
        leases.iter_mut().find(|l| l.key == asked[0]).unwrap().handoff_to = Some("b".into());
        assert!(to_take("b", &leases, &HashSet::new(), &HashSet::new()).is_empty());
    }
}
