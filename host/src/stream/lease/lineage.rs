//! Which listed shards get a new lease, and where each starts: the shard
//! graph of the listing (closed shards stay listed for the stream's
//! retention) joined with the leases' parents.
//!
//! - A shard with a leased descendant, at any depth, is never leased again:
//!   its records were read before the lease was removed, and re-reading it
//!   would repeat every offer after newer ones for the same user.
//! - A shard with an ancestor, at any depth, that is leased or has a leased
//!   descendant starts at its trim horizon: its lineage is being read, so a
//!   split or merge skips nothing, however many generations appeared
//!   between two listings or while the fleet was down.
//! - Others (a new table's shards) start at the configured position.

use std::collections::{HashMap, HashSet};

use aws_sdk_kinesis::types::Shard;

/// A lease to create.
#[derive(Debug)]
pub(super) struct Planned<'a> {
    pub shard: &'a Shard,
    pub parents: Vec<String>,
    /// Starts at the trim horizon (a descendant), not the configured position.
    pub from_trim_horizon: bool,
}

/// The leases to create for `shards`, given the shards that have one
/// (`leased`, with the parents each names).
pub(super) fn plan<'a>(shards: &'a [Shard], leased: &HashMap<&str, &[String]>) -> Vec<Planned<'a>> {
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for shard in shards {
        for parent in parents_of(shard) {
            children.entry(parent).or_default().push(shard.shard_id());
        }
    }
    for (child, parents) in leased {
        for parent in parents.iter() {
            children.entry(parent.as_str()).or_default().push(child);
        }
    }
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for shard in shards {
        parents.entry(shard.shard_id()).or_default().extend(parents_of(shard));
    }
    for (child, named) in leased {
        parents.entry(child).or_default().extend(named.iter().map(String::as_str));
    }
    let has_leased_descendant = |shard: &str| reachable(shard, &children).iter().any(|d| leased.contains_key(d));
    // An ancestor leased, or with a leased descendant: the lineage is being
    // read, so this shard's records must be read from its start.
    let followed = |shard: &str| leased.contains_key(shard) || has_leased_descendant(shard);
    shards
        .iter()
        .filter(|s| !leased.contains_key(s.shard_id()) && !has_leased_descendant(s.shard_id()))
        .map(|shard| Planned {
            shard,
            parents: parents_of(shard).map(str::to_owned).collect(),
            from_trim_horizon: reachable(shard.shard_id(), &parents).into_iter().any(followed),
        })
        .collect()
}

/// Every shard reachable from `start` along `edges`, `start` excluded.
fn reachable<'a>(start: &str, edges: &HashMap<&'a str, Vec<&'a str>>) -> HashSet<&'a str> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack: Vec<&str> = edges.get(start).cloned().unwrap_or_default();
    while let Some(shard) = stack.pop() {
        if seen.insert(shard) {
            stack.extend(edges.get(shard).into_iter().flatten().copied());
        }
    }
    seen
}

fn parents_of(shard: &Shard) -> impl Iterator<Item = &str> {
    [shard.parent_shard_id(), shard.adjacent_parent_shard_id()].into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str]) -> Shard {
        let range =
            aws_sdk_kinesis::types::SequenceNumberRange::builder().starting_sequence_number("0").build().unwrap();
        let mut builder = Shard::builder().shard_id(id).sequence_number_range(range);
        if let Some(p) = parents.first() {
            builder = builder.parent_shard_id(*p);
        }
        if let Some(p) = parents.get(1) {
            builder = builder.adjacent_parent_shard_id(*p);
        }
        builder.build().unwrap()
    }

    fn planned(shards: &[Shard], leased: &[(&str, &[&str])]) -> Vec<(String, bool)> {
        let owned: Vec<(&str, Vec<String>)> =
            leased.iter().map(|(k, ps)| (*k, ps.iter().map(|p| (*p).to_owned()).collect())).collect();
        let leased: HashMap<&str, &[String]> = owned.iter().map(|(k, ps)| (*k, ps.as_slice())).collect();
        plan(shards, &leased).into_iter().map(|p| (p.shard.shard_id().to_owned(), p.from_trim_horizon)).collect()
    }

    /// Split 0 → A, B, then merge A, B → C; once the leases of 0, A and B
    /// are removed, only C's remains. 0 is still listed and no lease names
    /// it as a parent: it must not be leased again (it was, at its start).
    #[test]
    fn a_shard_two_generations_back_is_not_leased_again() {
        let shards = [shard("0", &[]), shard("A", &["0"]), shard("B", &["0"]), shard("C", &["A", "B"])];
        assert_eq!(planned(&shards, &[("C", &["A", "B"])]), []);
        // Scale 1 → 2 → 4: the grandparent stays unleased too.
        let shards = [
            shard("0", &[]),
            shard("A", &["0"]),
            shard("B", &["0"]),
            shard("A1", &["A"]),
            shard("A2", &["A"]),
            shard("B1", &["B"]),
            shard("B2", &["B"]),
        ];
        let leaves: [(&str, &[&str]); 4] = [("A1", &["A"]), ("A2", &["A"]), ("B1", &["B"]), ("B2", &["B"])];
        assert_eq!(planned(&shards, &leaves), []);
    }

    /// A child and its own child first seen in one listing, or several
    /// generations made while the fleet was down: every descendant of a
    /// leased shard starts at its trim horizon. A new table's shards start
    /// at the configured position.
    #[test]
    fn every_descendant_of_a_leased_shard_starts_at_its_trim_horizon() {
        let shards =
            [shard("0", &[]), shard("A", &["0"]), shard("B", &["0"]), shard("A1", &["A"]), shard("A2", &["A"])];
        assert_eq!(
            planned(&shards, &[("0", &[])]),
            [("A".into(), true), ("B".into(), true), ("A1".into(), true), ("A2".into(), true)]
        );
        assert_eq!(
            planned(&shards, &[]),
            [("0".into(), false), ("A".into(), false), ("B".into(), false), ("A1".into(), false), ("A2".into(), false)],
            "a new table: the configured position"
        );
        // A parent known only by its lease (no longer listed) counts too.
        assert_eq!(planned(&[shard("C", &["A"])], &[("A", &[])]), [("C".into(), true)]);
        // A listed parent whose lease is gone but whose other child is leased.
        let shards = [shard("0", &[]), shard("A", &["0"]), shard("B", &["0"])];
        assert_eq!(planned(&shards, &[("A", &["0"])]), [("B".into(), true)]);
    }
}
