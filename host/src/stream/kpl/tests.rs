use super::*;
use crate::test_alloc::peak_during;

fn user<'a>(key: &'a str, data: &'a str) -> UserRecord<'a> {
    UserRecord { partition_key: key, data: data.as_bytes() }
}

/// An aggregate from raw protobuf message bytes, digest and magic added.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(message);
    out.extend_from_slice(&Md5::digest(message));
    out
}

#[test]
fn aggregates_round_trip_and_plain_records_stay_plain() {
    let records = vec![user("a", "{\"n\":1}"), user("b", "{\"n\":2}"), user("a", "{\"n\":3}")];
    let packed = aggregate(&records);
    assert_eq!(unpack(&packed, 10), Unpacked::Aggregate(records));
    assert_eq!((count(&packed, 10), count(&packed, 1), count(b"{}", 10)), (3, 2, 1));
    assert_eq!(unpack(b"{\"user_id\":\"u\"}", 10), Unpacked::Plain);
    assert_eq!(unpack(&[], 10), Unpacked::Plain);
}

/// An aggregate written by the Python `aws-kinesis-agg` package, the
/// reference KPL-format producer library (`fixtures/make_fixtures.py`):
/// shared keys, an explicit hash key, an empty record, non-ASCII text.
#[test]
fn an_aggregate_from_the_python_producer_library_unpacks() {
    let packed = include_bytes!("fixtures/python-agg.bin");
    let signup = |i| format!(r#"{{"user_id": "py-{i}", "location": {{"country": "DE", "postal_code": "10115"}}}}"#);
    let (s0, s1) = (signup(0), signup(1));
    let expected = vec![user("pk-1", &s0), user("pk-2", &s1), user("pk-1", ""), user("schlüssel", "ünïcode")];
    assert_eq!(unpack(packed, 10), Unpacked::Aggregate(expected.clone()));
    // Packed again by this crate, it unpacks to the same records.
    assert_eq!(unpack(&aggregate(&expected), 10), Unpacked::Aggregate(expected));
}

#[test]
fn a_damaged_aggregate_is_corrupt_not_data() {
    let corrupt = |data: &[u8], expected: &str| match unpack(data, 100) {
        Unpacked::Corrupt(why) => assert!(why.contains(expected), "{why:?} lacks {expected:?}"),
        other => panic!("expected corrupt ({expected}), got {other:?}"),
    };
    let mut packed = aggregate(&[user("a", "{}")]);
    packed[6] ^= 1;
    corrupt(&packed, "MD5");
    corrupt(&MAGIC, "shorter");
    corrupt(&framed(b"\xff\xff\xff"), "does not decode");
    // A key index past the key table.
    let mut message = Vec::new();
    put_bytes(&mut message, 1, b"a");
    put_bytes(&mut message, 3, &[1 << 3, 3, 3 << 3 | 2, 0]);
    corrupt(&framed(&message), "partition key 3 of 1");
    // A record without data; a length past the end; a key that is not UTF-8.
    corrupt(&framed(&[3 << 3 | 2, 2, 1 << 3, 0]), "lacks");
    corrupt(&framed(&[3 << 3 | 2, 9, 1 << 3]), "truncated");
    corrupt(&framed(&[1 << 3 | 2, 1, 0xff]), "not UTF-8");
    // Keys Kinesis refuses.
    corrupt(&aggregate(&[user(&"k".repeat(257), "{}")]), "257 characters");
    corrupt(&aggregate(&[user("", "{}")]), "0 characters");
    // Valid but empty: one dead letter, never nothing at all.
    corrupt(&aggregate(&[]), "no user records");
    let mut keys_only = Vec::new();
    put_bytes(&mut keys_only, 1, b"a");
    corrupt(&framed(&keys_only), "no user records");
}

/// The aggregate that drove offerd past 2 GiB: a 300,000-character key and
/// 80,000 empty records that all point at it. Refused whole, in memory a
/// small multiple of its size; and within limits, a large aggregate costs
/// one borrowed entry per record.
#[test]
fn hostile_aggregates_are_refused_in_bounded_memory() {
    let key = "k".repeat(300_000);
    let records = vec![user(&key, ""); 80_000];
    let packed = aggregate(&records);
    let (unpacked, peak) = peak_during(|| unpack(&packed, DEFAULT_MAX_RECORDS));
    assert!(matches!(&unpacked, Unpacked::Corrupt(why) if why.contains("300000 characters")), "{unpacked:?}");
    assert!(peak < 64 * 1024, "refusing took {peak} bytes");

    let records = vec![user("k", ""); 80_000];
    let packed = aggregate(&records);
    let (unpacked, peak) = peak_during(|| unpack(&packed, DEFAULT_MAX_RECORDS));
    assert!(matches!(&unpacked, Unpacked::Corrupt(why) if why.contains("more than 10000")), "{unpacked:?}");
    assert!(peak < 64 * 1024, "refusing took {peak} bytes");

    let (unpacked, peak) = peak_during(|| unpack(&packed, 100_000));
    assert!(matches!(&unpacked, Unpacked::Aggregate(r) if r.len() == 80_000));
    assert!(peak <= 6 * packed.len(), "{peak} bytes for an aggregate of {}", packed.len());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Arbitrary protobuf-ish bodies: tags, varints and lengths drawn so that
    /// fields of every wire type, truncations and huge counts all occur.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            (0u8..6, any::<u8>()).prop_map(|(field, b)| vec![field << 3, b]),
            (0u8..6, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(field, bytes)| {
                let mut out = vec![field << 3 | 2, bytes.len() as u8];
                out.extend(bytes);
                out
            }),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(field, 0..200).prop_map(|fields| fields.concat())
    }

    proptest! {
        /// Every input is classified (plain, aggregate or corrupt) without a
        /// panic, in memory a small multiple of its size.
        #[test]
        fn any_aggregate_is_classified_in_bounded_memory(message in body(), max in 1usize..50) {
            let packed = framed(&message);
            let (unpacked, peak) = peak_during(|| unpack(&packed, max));
            prop_assert!(peak <= 8 * packed.len() + 1024, "{} bytes for {}", peak, packed.len());
            if let Unpacked::Aggregate(records) = unpacked {
                prop_assert!(records.len() <= max);
                prop_assert!(records.iter().all(|r| crate::record::partition_key_fits(r.partition_key)));
            }
        }

        #[test]
        fn any_bytes_are_plain_or_classified(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unpack(&data, 10);
        }
    }
}
