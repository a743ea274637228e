//! A batch's whole per-record work short of the network: de-aggregate,
//! enrich, and name every output's source. Kept apart from the shard loop so
//! that it is benchmarked (`cargo bench -p offerd --bench enrich`) and tested
//! without any I/O.

use aws_sdk_kinesis::types::Record;

use super::kpl::{self, Unpacked};
use super::sink::Entry;
use crate::engine::BatchBudget;
use crate::enricher::{Enricher, Outcome, RegionTally};
use crate::record::{self, Reason, RecordSource};

/// A batch ready to publish.
pub struct PreparedBatch {
    pub offers: Vec<Entry>,
    /// Where each offer came from, to name it if Kinesis refuses it.
    pub(super) offer_sources: Vec<SourceId>,
    pub dead_letters: Vec<Entry>,
    pub(super) dead_letter_sources: Vec<SourceId>,
    /// One per dead letter, for metrics.
    pub dead_letter_reasons: Vec<&'static str>,
    pub by_region: Vec<RegionTally>,
}

/// A user record by its place in its batch: a Kinesis record, or one record
/// of a KPL aggregate.
#[derive(Debug, Clone, Copy)]
pub(super) struct SourceId {
    record: usize,
    sub_sequence_number: Option<usize>,
}

impl SourceId {
    pub(super) fn resolve<'a>(self, shard_id: &'a str, records: &'a [Record]) -> RecordSource<'a> {
        RecordSource {
            shard_id,
            sequence_number: records[self.record].sequence_number(),
            sub_sequence_number: self.sub_sequence_number,
        }
    }
}

/// De-aggregates (refusing aggregates of more than `max_aggregate_records`),
/// enriches within the batch's `budget` (shared by its chunks), and names
/// every output's source. Outputs keep input order.
pub fn prepare(
    enricher: &Enricher,
    shard_id: &str,
    records: &[Record],
    max_aggregate_records: usize,
    budget: &BatchBudget,
) -> PreparedBatch {
    let unpacked: Vec<Unpacked<'_>> =
        records.iter().map(|r| kpl::unpack(r.data().as_ref(), max_aggregate_records)).collect();
    let mut batch = PreparedBatch {
        offers: Vec::with_capacity(records.len()),
        offer_sources: Vec::with_capacity(records.len()),
        dead_letters: Vec::new(),
        dead_letter_sources: Vec::new(),
        dead_letter_reasons: Vec::new(),
        by_region: Vec::new(),
    };
    let mut inputs: Vec<&[u8]> = Vec::with_capacity(records.len());
    let mut ids: Vec<SourceId> = Vec::with_capacity(records.len());
    for (index, (record, unpacked)) in records.iter().zip(&unpacked).enumerate() {
        match unpacked {
            Unpacked::Plain => {
                inputs.push(record.data().as_ref());
                ids.push(SourceId { record: index, sub_sequence_number: None });
            }
            Unpacked::Aggregate(users) => {
                for (i, user) in users.iter().enumerate() {
                    inputs.push(user.data);
                    ids.push(SourceId { record: index, sub_sequence_number: Some(i) });
                }
            }
            Unpacked::Corrupt(why) => {
                let id = SourceId { record: index, sub_sequence_number: None };
                let source = id.resolve(shard_id, records);
                let mut data = Vec::new();
                record::write_dead_letter(
                    &mut data,
                    Reason::InvalidRecord,
                    why,
                    None,
                    None,
                    record.data().as_ref(),
                    Some(&source),
                );
                batch.dead_letter_reasons.push(Reason::InvalidRecord.as_str());
                batch.dead_letters.push(Entry { partition_key: dead_letter_key(&source), data });
                batch.dead_letter_sources.push(id);
            }
        }
    }
    let sources: Vec<RecordSource<'_>> = ids.iter().map(|id| id.resolve(shard_id, records)).collect();
    let enriched = enricher.enrich_from(&inputs, &sources, budget);
    for ((id, source), outcome) in ids.iter().zip(&sources).zip(enriched.outcomes) {
        match outcome {
            Outcome::Offer { user_id, line } => {
                batch.offers.push(Entry { partition_key: user_id, data: line });
                batch.offer_sources.push(*id);
            }
            Outcome::DeadLetter { line, reason } => {
                batch.dead_letter_reasons.push(reason.as_str());
                batch.dead_letters.push(Entry { partition_key: dead_letter_key(source), data: line });
                batch.dead_letter_sources.push(*id);
            }
        }
    }
    batch.by_region = enriched.by_region;
    batch
}

/// A dead letter's partition key: where its record came from. Unique per
/// record, so dead letters never wait on each other for per-key order (which
/// means nothing for them: each names its source) and spread over the
/// dead-letter stream's shards, whatever keys the input used.
pub(super) fn dead_letter_key(source: &RecordSource<'_>) -> String {
    let mut key = format!("{}/{}", source.shard_id, source.sequence_number);
    if let Some(sub) = source.sub_sequence_number {
        key.push('/');
        key.push_str(itoa::Buffer::new().format(sub));
    }
    if record::partition_key_fits(&key) { key } else { source.shard_id.to_owned() }
}
