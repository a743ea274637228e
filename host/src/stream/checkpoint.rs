//! Checkpoints: per shard, the last sequence number whose output and dead
//! letters are acknowledged. The store is a seam; the embedded default is a
//! file that survives a crash mid-write.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How far a shard has been processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every record up to and including this sequence number.
    At(String),
    /// A closed shard read to its end: its children may start.
    ShardEnd,
}

/// How [`Checkpoint::ShardEnd`] is stored (the Kinesis Client Library's word).
const SHARD_END: &str = "SHARD_END";

impl Checkpoint {
    fn parse(stored: &str) -> Self {
        if stored == SHARD_END { Self::ShardEnd } else { Self::At(stored.to_owned()) }
    }

    fn as_stored(&self) -> &str {
        match self {
            Self::At(seq) => seq,
            Self::ShardEnd => SHARD_END,
        }
    }
}

/// Where checkpoints live. Calls are blocking; callers run them off the
/// async threads.
pub trait CheckpointStore: Send + Sync {
    /// The last checkpoint of a shard.
    fn get(&self, shard_id: &str) -> Option<Checkpoint>;

    /// Where a shard that [`Self::get`] has no checkpoint for starts, when
    /// the store says: a lease records the start position for every worker,
    /// and a KCL checkpoint inside a KPL aggregate resumes at that record.
    /// `None` leaves it to `run`'s `start_at`.
    fn resume_at(&self, _shard_id: &str) -> Option<super::feed::Position> {
        None
    }

    /// Records `checkpoint`, durably, before returning. `epoch` is the lease
    /// acquisition the shard's reader started under (with leases): a store
    /// of leases refuses a write under any other, so a reader left over from
    /// an earlier acquisition can never move the checkpoint of a newer one.
    ///
    /// # Errors
    /// The checkpoint could not be made durable, or the lease is not held
    /// under `epoch` ([`super::lease::LeaseError::Lost`]).
    fn set(&self, shard_id: &str, epoch: Option<u64>, checkpoint: &Checkpoint) -> anyhow::Result<()>;
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    stream: String,
    shards: BTreeMap<String, String>,
}

/// A JSON file, rewritten whole on every checkpoint: write a temporary file,
/// fsync it, rename it over the old one, fsync the directory. A crash leaves
/// either the old or the new file, never a torn one.
///
/// One process per file: `<file>.lock` holds an exclusive lock (released by
/// the kernel when the process ends, however it ends) and the holder's pid.
pub struct FileCheckpoints {
    path: PathBuf,
    /// Held only to read or change the map: `get` never waits for an fsync.
    state: Mutex<FileFormat>,
    /// Held across a write, so two shards' writes cannot interleave.
    writing: Mutex<()>,
    _lock: File,
}

/// Takes the lock beside `path`, or says which process holds it.
fn lock(path: &Path) -> anyhow::Result<File> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    crate::process_lock::take(&lock_path, path, "one process per checkpoint file")
}

impl FileCheckpoints {
    /// Opens (or starts) the checkpoint file of `stream`.
    ///
    /// # Errors
    /// The file exists but is unreadable, or belongs to another stream.
    pub fn open(path: &Path, stream: &str) -> anyhow::Result<Self> {
        let lock = lock(path)?;
        let leftovers = crate::atomic_file::remove_leftovers(path)
            .with_context(|| format!("removing temporary files of {}", path.display()))?;
        if leftovers > 0 {
            tracing::info!(leftovers, file = %path.display(), "removed temporary files of a write cut short by a crash");
        }
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let state: FileFormat = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a checkpoint file", path.display()))?;
                anyhow::ensure!(
                    state.stream == stream,
                    "{} holds checkpoints of stream {:?}, not {stream:?}",
                    path.display(),
                    state.stream
                );
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                FileFormat { stream: stream.to_owned(), shards: BTreeMap::new() }
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self { path: path.to_owned(), state: Mutex::new(state), writing: Mutex::new(()), _lock: lock })
    }
}

impl CheckpointStore for FileCheckpoints {
    fn get(&self, shard_id: &str) -> Option<Checkpoint> {
        let state = self.state.lock().expect("checkpoint lock is never held across a panic");
        state.shards.get(shard_id).map(|stored| Checkpoint::parse(stored))
    }

    fn set(&self, shard_id: &str, _epoch: Option<u64>, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let _writing = self.writing.lock().expect("checkpoint write lock is never held across a panic");
        // Serialised under the write lock: the last write holds every shard's newest.
        let bytes = {
            let mut state = self.state.lock().expect("checkpoint lock is never held across a panic");
            state.shards.insert(shard_id.to_owned(), checkpoint.as_stored().to_owned());
            serde_json::to_vec_pretty(&*state).expect("a map of strings always serialises")
        };
        crate::atomic_file::write(&self.path, &bytes).with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_survive_reopening_and_refuse_another_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let store = FileCheckpoints::open(&path, "signups").unwrap();
        let at = |s: &str| Checkpoint::At(s.to_owned());
        assert_eq!(store.get("shardId-0"), None);
        store.set("shardId-0", None, &at("49")).unwrap();
        store.set("shardId-1", None, &at("50")).unwrap();
        store.set("shardId-0", None, &at("51")).unwrap();
        store.set("shardId-2", None, &Checkpoint::ShardEnd).unwrap();
        // Held: a second opener is refused and told the holder's pid.
        let err = FileCheckpoints::open(&path, "signups").err().unwrap().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(store);
        let reopened = FileCheckpoints::open(&path, "signups").unwrap();
        assert_eq!(reopened.get("shardId-0"), Some(at("51")));
        assert_eq!(reopened.get("shardId-1"), Some(at("50")));
        assert_eq!(reopened.get("shardId-2"), Some(Checkpoint::ShardEnd));
        drop(reopened);
        let err = FileCheckpoints::open(&path, "other").err().unwrap();
        assert!(err.to_string().contains("not \"other\""), "{err}");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "temporary files left: {names:?}");
    }

    /// What a crash at any point of a write leaves: the old file and a torn
    /// temporary file (killed before the rename), or the new file (after
    /// it). Either way the next open reads a whole file and clears the rest.
    #[test]
    fn a_crash_mid_write_leaves_the_old_checkpoints_and_a_leftover_that_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let store = FileCheckpoints::open(&path, "signups").unwrap();
        store.set("shardId-0", None, &Checkpoint::At("49".into())).unwrap();
        drop(store);
        let torn = dir.path().join(".cp.json.x1Yz2.tmp");
        std::fs::write(&torn, br#"{"stream": "signups", "shards": {"shardId-0": "5"#).unwrap();
        let other = dir.path().join(".other.json.abc.tmp"); // not ours: left alone
        std::fs::write(&other, b"{").unwrap();

        let reopened = FileCheckpoints::open(&path, "signups").unwrap();
        assert_eq!(reopened.get("shardId-0"), Some(Checkpoint::At("49".into())));
        assert!(!torn.exists(), "the torn temporary file is removed");
        assert!(other.exists());
        reopened.set("shardId-0", None, &Checkpoint::At("51".into())).unwrap();
        drop(reopened);
        assert_eq!(
            FileCheckpoints::open(&path, "signups").unwrap().get("shardId-0"),
            Some(Checkpoint::At("51".into()))
        );
    }
}
