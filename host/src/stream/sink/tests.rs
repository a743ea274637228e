use std::sync::Mutex;

use super::*;

/// Decides an entry's fate by (call number, its data); `None` writes it.
type EntryFault = Box<dyn Fn(usize, &str) -> Option<PutFailure> + Send + Sync>;
/// Decides a whole call's fate by (call number, its entries' data).
type CallFault = Box<dyn Fn(usize, &[String]) -> Option<PutFailure> + Send + Sync>;

/// A sink that fails chosen entries or calls, and remembers what landed.
#[derive(Default)]
pub(crate) struct FakeSink {
    /// `(stream, partition key, data)` in the order written.
    pub landed: Mutex<Vec<(String, String, Vec<u8>)>>,
    /// Each call's entries, as `data` strings.
    pub calls: Mutex<Vec<Vec<String>>>,
    pub entry_fault: Option<EntryFault>,
    pub call_fault: Option<CallFault>,
}

impl RecordSink for FakeSink {
    fn put_records<'a>(
        &'a self,
        stream: &'a str,
        entries: &'a [&'a Entry],
    ) -> BoxFuture<'a, Result<Vec<Option<PutFailure>>, PutFailure>> {
        Box::pin(async move {
            let data: Vec<String> = entries.iter().map(|e| String::from_utf8_lossy(&e.data).into_owned()).collect();
            let call = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(data.clone());
                calls.len() - 1
            };
            if let Some(failure) = self.call_fault.as_ref().and_then(|f| f(call, &data)) {
                return Err(failure);
            }
            let mut landed = self.landed.lock().unwrap();
            Ok(entries
                .iter()
                .zip(&data)
                .map(|(entry, text)| {
                    let fault = self.entry_fault.as_ref().and_then(|f| f(call, text));
                    if fault.is_none() {
                        landed.push((stream.to_owned(), entry.partition_key.clone(), entry.data.clone()));
                    }
                    fault
                })
                .collect())
        })
    }
}

fn entry(key: &str, data: &str) -> Entry {
    Entry { partition_key: key.into(), data: data.as_bytes().to_vec() }
}

fn landed(sink: &FakeSink) -> Vec<String> {
    sink.landed.lock().unwrap().iter().map(|(_, _, d)| String::from_utf8_lossy(d).into_owned()).collect()
}

async fn put(sink: &FakeSink, entries: &[Entry]) -> Result<Vec<Rejected>, PutError> {
    put_all(sink, "out", entries, RETRY_BUDGET, &Metrics::default()).await
}

/// Throttled entries are retried; an entry of the same key never overtakes
/// one that failed; entries Kinesis refuses for good come back, the rest land.
#[tokio::test]
async fn partial_failures_keep_per_key_order_and_refusals_come_back() {
    let sink = FakeSink {
        entry_fault: Some(Box::new(|call, data| match (call, data) {
            // a1 is throttled twice, b1 refused for good.
            (0 | 1, "a1") => Some(PutFailure::Retry("ProvisionedThroughputExceededException".into())),
            (_, "b1") => Some(PutFailure::Reject("InvalidArgumentException: bad".into())),
            _ => None,
        })),
        ..FakeSink::default()
    };
    let entries: Vec<Entry> = ["a1", "b1", "a2", "c1", "b2", "a3"].iter().map(|d| entry(&d[..1], d)).collect();
    let rejected = put(&sink, &entries).await.unwrap();
    assert_eq!(rejected, [Rejected { index: 1, reason: "InvalidArgumentException: bad".into() }]);
    let order = landed(&sink);
    let of = |key: char| order.iter().filter(|d| d.starts_with(key)).cloned().collect::<Vec<_>>();
    assert_eq!(of('a'), ["a1", "a2", "a3"], "landed: {order:?}");
    assert_eq!(of('b'), ["b2"]);
    assert_eq!(of('c'), ["c1"]);
    // One entry per key per call: a2 and a3 were not sent while a1 failed.
    for call in sink.calls.lock().unwrap().iter() {
        let mut keys: Vec<char> = call.iter().map(|d| d.chars().next().unwrap()).collect();
        keys.dedup();
        assert_eq!(keys.len(), call.len(), "a key twice in one call: {call:?}");
    }
}

/// A whole call refused for one bad entry is halved until the entry is
/// found; everything else lands.
#[tokio::test]
async fn a_call_refused_for_one_entry_is_bisected_to_it() {
    let sink = FakeSink {
        call_fault: Some(Box::new(|_, data| {
            data.iter().any(|d| d == "poison").then(|| PutFailure::Reject("ValidationException".into()))
        })),
        ..FakeSink::default()
    };
    let mut entries: Vec<Entry> = (0..100).map(|i| entry(&format!("k{i}"), &format!("d{i}"))).collect();
    entries[37] = entry("k37", "poison");
    let rejected = put(&sink, &entries).await.unwrap();
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [37]);
    assert_eq!(landed(&sink).len(), 99);
    let calls = sink.calls.lock().unwrap().len();
    assert!(calls <= 20, "{calls} calls to find one entry among 100");
}

/// What Kinesis would refuse is not sent at all.
#[tokio::test]
async fn entries_over_kinesis_limits_are_refused_without_a_call() {
    let sink = FakeSink::default();
    let entries = [
        entry(&"k".repeat(257), "long key"),
        entry("", "empty key"),
        Entry { partition_key: "big".into(), data: vec![b'x'; MAX_RECORD_BYTES] },
        entry("ok", "fine"),
    ];
    let rejected = put(&sink, &entries).await.unwrap();
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(rejected[0].reason.contains("257 characters"), "{}", rejected[0].reason);
    assert!(rejected[2].reason.contains("1048579 bytes"), "{}", rejected[2].reason);
    assert_eq!(*sink.calls.lock().unwrap(), [vec!["fine".to_owned()]]);
}

/// Retryable failures stop after the budget; fatal ones at once. Neither
/// loops forever.
#[tokio::test]
async fn retries_end_at_the_budget_and_fatal_errors_at_once() {
    let sink = FakeSink {
        call_fault: Some(Box::new(|_, _| Some(PutFailure::Retry("ThrottlingException".into())))),
        ..FakeSink::default()
    };
    let started = tokio::time::Instant::now();
    let err = put_all(&sink, "out", &[entry("a", "1")], Duration::from_secs(2), &Metrics::default()).await.unwrap_err();
    assert!(matches!(err, PutError::RetriesExhausted { .. }), "{err}");
    let waited = started.elapsed();
    // Backoff 50 ms doubling (±50%): the budget ends at a check after a failed call.
    assert!((Duration::from_secs(2)..Duration::from_secs(6)).contains(&waited), "{waited:?}");
    let calls = sink.calls.lock().unwrap().len();
    assert!((4..12).contains(&calls), "{calls} calls: the backoff grows");

    let sink = FakeSink {
        entry_fault: Some(Box::new(|_, d| (d == "2").then(|| PutFailure::Fatal("KMSDisabledException".into())))),
        ..FakeSink::default()
    };
    let err = put(&sink, &[entry("a", "1"), entry("b", "2")]).await.unwrap_err();
    assert!(matches!(&err, PutError::Fatal { reason, .. } if reason.contains("KMSDisabled")), "{err}");
    assert_eq!(sink.calls.lock().unwrap().len(), 1);
}

/// A batch larger than one call goes out in calls of at most 500 entries
/// and 5 MiB.
#[tokio::test]
async fn calls_respect_the_entry_and_byte_limits() {
    let sink = FakeSink::default();
    let small: Vec<Entry> = (0..1_200).map(|i| entry(&format!("k{i}"), "x")).collect();
    assert!(put(&sink, &small).await.unwrap().is_empty());
    let sizes: Vec<usize> = sink.calls.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [500, 500, 200]);

    let sink = FakeSink::default();
    let big: Vec<Entry> =
        (0..12).map(|i| Entry { partition_key: format!("k{i}"), data: vec![b'x'; 1_000_000] }).collect();
    assert!(put(&sink, &big).await.unwrap().is_empty());
    let sizes: Vec<usize> = sink.calls.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 5, 2]);
}
