//! The Kinesis Producer Library's aggregation format: many user records in
//! one Kinesis record. Layout: 4 magic bytes, a protobuf `AggregatedRecord`,
//! then the MD5 digest of the protobuf bytes.
//!
//! Like the Kinesis Client Library, a record without the magic bytes is a
//! plain record. Unlike it, a record with the magic bytes that fails its
//! digest or does not decode is not silently passed on as data: it is a
//! corrupt aggregate, and goes to the dead letters with that reason.

use md5::{Digest, Md5};
use prost::Message;

const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<SubRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct SubRecord {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// One user record of an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// What one Kinesis record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Unpacked {
    /// Not aggregated: the record's data is the user record.
    Plain,
    Aggregate(Vec<UserRecord>),
    /// Starts with the magic bytes but cannot be trusted; says why.
    Corrupt(String),
}

/// Splits an aggregated record into its user records.
pub fn unpack(data: &[u8]) -> Unpacked {
    let Some(rest) = data.strip_prefix(&MAGIC) else {
        return Unpacked::Plain;
    };
    let Some(split) = rest.len().checked_sub(DIGEST_LEN) else {
        return Unpacked::Corrupt("KPL aggregate shorter than its MD5 digest".into());
    };
    let (message, digest) = rest.split_at(split);
    if Md5::digest(message).as_slice() != digest {
        return Unpacked::Corrupt("KPL aggregate fails its MD5 check".into());
    }
    let aggregate = match AggregatedRecord::decode(message) {
        Ok(a) => a,
        Err(e) => return Unpacked::Corrupt(format!("KPL aggregate does not decode: {e}")),
    };
    let mut records = Vec::with_capacity(aggregate.records.len());
    for (i, r) in aggregate.records.into_iter().enumerate() {
        let key = usize::try_from(r.partition_key_index).ok().and_then(|k| aggregate.partition_key_table.get(k));
        let Some(key) = key else {
            return Unpacked::Corrupt(format!(
                "KPL aggregate record {i} names partition key {} of {}",
                r.partition_key_index,
                aggregate.partition_key_table.len()
            ));
        };
        records.push(UserRecord { partition_key: key.clone(), data: r.data });
    }
    Unpacked::Aggregate(records)
}

/// Packs user records the way the KPL does, partition keys de-duplicated
/// into the key table. For producers (and tests) that aggregate.
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut keys: Vec<String> = Vec::new();
    let records = records
        .iter()
        .map(|r| {
            let index = keys.iter().position(|k| *k == r.partition_key).unwrap_or_else(|| {
                keys.push(r.partition_key.clone());
                keys.len() - 1
            });
            SubRecord {
                partition_key_index: index as u64,
                explicit_hash_key_index: None,
                data: r.data.clone(),
                tags: Vec::new(),
            }
        })
        .collect();
    let message =
        AggregatedRecord { partition_key_table: keys, explicit_hash_key_table: Vec::new(), records }.encode_to_vec();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&message);
    out.extend_from_slice(&Md5::digest(&message));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(key: &str, data: &str) -> UserRecord {
        UserRecord { partition_key: key.into(), data: data.as_bytes().to_vec() }
    }

    #[test]
    fn aggregates_round_trip_and_plain_records_stay_plain() {
        let records = vec![user("a", "{\"n\":1}"), user("b", "{\"n\":2}"), user("a", "{\"n\":3}")];
        let packed = aggregate(&records);
        assert_eq!(unpack(&packed), Unpacked::Aggregate(records));
        assert_eq!(unpack(b"{\"user_id\":\"u\"}"), Unpacked::Plain);
        assert_eq!(unpack(&[]), Unpacked::Plain);
    }

    #[test]
    fn a_damaged_aggregate_is_corrupt_not_data() {
        let mut packed = aggregate(&[user("a", "{}")]);
        packed[6] ^= 1;
        assert!(matches!(unpack(&packed), Unpacked::Corrupt(why) if why.contains("MD5")));
        assert!(matches!(unpack(&MAGIC), Unpacked::Corrupt(why) if why.contains("shorter")));
        // Digest right, protobuf wrong.
        let junk = b"\xff\xff\xff";
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(junk);
        bad.extend_from_slice(&Md5::digest(junk));
        assert!(matches!(unpack(&bad), Unpacked::Corrupt(why) if why.contains("does not decode")));
        // A key index past the key table.
        let message = AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: Vec::new(),
            records: vec![SubRecord {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: vec![],
                tags: vec![],
            }],
        }
        .encode_to_vec();
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&message);
        bad.extend_from_slice(&Md5::digest(&message));
        assert!(matches!(unpack(&bad), Unpacked::Corrupt(why) if why.contains("partition key 3 of 1")));
    }
}
