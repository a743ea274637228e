//! The Kinesis Producer Library's aggregation format: many user records in
//! one Kinesis record. Layout: 4 magic bytes, a protobuf `AggregatedRecord`,
//! then the MD5 digest of the protobuf bytes.
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! ```
//!
//! Like the Kinesis Client Library, a record without the magic bytes is a
//! plain record. Unlike it, a record with the magic bytes that fails its
//! digest or does not decode is not silently passed on as data: it is a
//! corrupt aggregate, and goes to the dead letters with that reason.
//!
//! The decoder is written by hand so that it borrows: user records point
//! into the Kinesis record (keys into its key table, never one copy per
//! user record), and an aggregate costs at most one 32-byte entry per user
//! record, each of which takes at least 6 bytes of the aggregate. A hostile
//! aggregate (a 300,000-character key shared by 80,000 empty records, say)
//! is refused whole, before anything is allocated per record.

use md5::{Digest, Md5};

const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// Default for [`unpack`]'s `max_records`: far above what the KPL packs into
/// its default 50 KiB aggregates, far below what 1 MiB of empty records is.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;

/// One user record of an aggregate, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRecord<'a> {
    pub partition_key: &'a str,
    pub data: &'a [u8],
}

/// What one Kinesis record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Unpacked<'a> {
    /// Not aggregated: the record's data is the user record.
    Plain,
    Aggregate(Vec<UserRecord<'a>>),
    /// Starts with the magic bytes but cannot be used; says why. The whole
    /// Kinesis record becomes one dead letter.
    Corrupt(String),
}

/// Splits an aggregated record into its user records; an aggregate of more
/// than `max_records` user records, or whose partition keys Kinesis would
/// refuse, is corrupt.
pub fn unpack(data: &[u8], max_records: usize) -> Unpacked<'_> {
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
    match decode(message, max_records) {
        Ok(records) => Unpacked::Aggregate(records),
        Err(why) => Unpacked::Corrupt(why),
    }
}

/// At most how many user records `data` makes, counted without checking
/// the digest or decoding the records (and without allocating): an
/// aggregate's record fields, capped at `max_records + 1`, else one (a plain
/// record, or an aggregate that will be one dead letter). For sizing work
/// before [`unpack`] runs.
pub fn count(data: &[u8], max_records: usize) -> usize {
    let Some(message) =
        data.strip_prefix(&MAGIC).and_then(|rest| rest.len().checked_sub(DIGEST_LEN).map(|n| &rest[..n]))
    else {
        return 1;
    };
    let mut fields = Fields(message);
    let mut records = 0;
    while records <= max_records
        && let Ok(Some((tag, value))) = fields.next()
    {
        records += usize::from(tag == 3 && matches!(value, Value::Bytes(_)));
    }
    records.max(1)
}

fn decode(message: &[u8], max_records: usize) -> Result<Vec<UserRecord<'_>>, String> {
    let bad = |e: WireError| format!("KPL aggregate does not decode: {e}");
    // First pass: the key table, and how many records there are, so the
    // second pass allocates exactly once.
    let mut keys: Vec<&str> = Vec::new();
    let mut count = 0usize;
    let mut fields = Fields(message);
    while let Some((tag, value)) = fields.next().map_err(bad)? {
        match (tag, value) {
            (1, Value::Bytes(key)) => {
                let key = std::str::from_utf8(key).map_err(|_| bad(WireError::NotUtf8))?;
                if !crate::record::partition_key_fits(key) {
                    return Err(format!(
                        "KPL aggregate has a partition key of {} characters; Kinesis allows 1 to {}",
                        key.chars().count(),
                        crate::record::MAX_PARTITION_KEY_CHARS
                    ));
                }
                keys.push(key);
            }
            (3, Value::Bytes(_)) => {
                count += 1;
                if count > max_records {
                    return Err(format!("KPL aggregate holds more than {max_records} user records"));
                }
            }
            (1 | 3, _) => return Err(bad(WireError::WrongType(tag))),
            _ => {}
        }
    }
    if count == 0 {
        // Valid, yet it would vanish: neither an output nor a dead letter.
        return Err("KPL aggregate holds no user records".into());
    }
    let mut records = Vec::with_capacity(count);
    let mut fields = Fields(message);
    while let Some((tag, value)) = fields.next().map_err(bad)? {
        let (3, Value::Bytes(body)) = (tag, value) else { continue };
        let i = records.len();
        let (mut key_index, mut data) = (None, None);
        let mut sub = Fields(body);
        while let Some((tag, value)) = sub.next().map_err(bad)? {
            match (tag, value) {
                (1, Value::Varint(k)) => key_index = Some(k),
                (3, Value::Bytes(d)) => data = Some(d),
                (1 | 3, _) => return Err(bad(WireError::WrongType(tag))),
                _ => {}
            }
        }
        let (Some(k), Some(data)) = (key_index, data) else {
            return Err(format!("KPL aggregate record {i} lacks its partition key index or data"));
        };
        let partition_key = usize::try_from(k)
            .ok()
            .and_then(|k| keys.get(k))
            .ok_or_else(|| format!("KPL aggregate record {i} names partition key {k} of {}", keys.len()))?;
        records.push(UserRecord { partition_key, data });
    }
    Ok(records)
}

/// Packs user records the way the KPL does, partition keys de-duplicated
/// into the key table. For producers (and tests) that aggregate.
pub fn aggregate(records: &[UserRecord<'_>]) -> Vec<u8> {
    let mut keys: Vec<&str> = Vec::new();
    let mut message = Vec::new();
    let mut body = Vec::new();
    for r in records {
        let index = keys.iter().position(|k| *k == r.partition_key).unwrap_or_else(|| {
            keys.push(r.partition_key);
            keys.len() - 1
        });
        body.clear();
        put_varint(&mut body, 1 << 3);
        put_varint(&mut body, index as u64);
        put_bytes(&mut body, 3, r.data);
        put_bytes(&mut message, 3, &body);
    }
    let mut out = MAGIC.to_vec();
    for key in &keys {
        put_bytes(&mut out, 1, key.as_bytes());
    }
    out.extend_from_slice(&message);
    let digest = Md5::digest(&out[MAGIC.len()..]);
    out.extend_from_slice(&digest);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, tag: u64, bytes: &[u8]) {
    put_varint(out, (tag << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    LongVarint,
    #[error("unsupported wire type {0}")]
    WireType(u64),
    #[error("field {0} has the wrong wire type")]
    WrongType(u64),
    #[error("a partition key is not UTF-8")]
    NotUtf8,
}

/// One protobuf field's value, borrowed from the message.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, WireError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            5 => self.skip(4)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                if len > self.0.len() {
                    return Err(WireError::Truncated);
                }
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Value::Bytes(bytes)
            }
            other => return Err(WireError::WireType(other)),
        };
        Ok(Some((key >> 3, value)))
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.0.len() < 10 { WireError::Truncated } else { WireError::LongVarint })
    }

    fn skip(&mut self, n: usize) -> Result<Value<'a>, WireError> {
        self.0 = self.0.get(n..).ok_or(WireError::Truncated)?;
        Ok(Value::Fixed)
    }
}

#[cfg(test)]
mod tests;
