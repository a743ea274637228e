//! How records reach a shard's loop: polling with GetRecords, or enhanced
//! fan-out with SubscribeToShard, behind one seam (and a scripted feed in
//! the loop's tests).

pub mod fan_out;
pub mod polling;

use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_kinesis::types::{Record, ShardIteratorType};

use super::StartAt;
use super::checkpoint::{Checkpoint, CheckpointStore};
pub(super) use super::sink::BoxFuture;

/// What one read brought.
pub enum Read {
    Records {
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        /// The shard is closed and these are its last records.
        closed: bool,
    },
    /// Nothing this time: backed off, re-subscribed, or woken for shutdown
    /// or the end of a batch window.
    Nothing,
    /// The feed restarted from the checkpoint (an expired iterator): records
    /// read since then will come again, so the pending ones must be dropped.
    Rewound,
}

/// A source of one shard's records, in order.
pub trait Feed: Send {
    /// Reads at most `room` records. Returns [`Read::Nothing`] as soon as
    /// `woken` completes (shutdown, or the end of a batch window) if nothing
    /// has arrived by then.
    ///
    /// # Errors
    /// The shard cannot be read and retrying will not help (the stream is
    /// gone, access is denied): the shard stops.
    fn read<'a>(&'a mut self, room: usize, woken: BoxFuture<'a, ()>) -> BoxFuture<'a, anyhow::Result<Read>>;
}

/// Where reading starts: after a checkpoint (or, with fan-out, after the last
/// continuation sequence number), or where the configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    After(String),
    /// At this record: a checkpoint inside a KPL aggregate, whose user
    /// records up to it come out again.
    At(String),
    TrimHorizon,
    Latest,
    Timestamp(SystemTime),
}

impl Position {
    /// As GetShardIterator's type and sequence number or time.
    pub(crate) fn iterator_type(&self) -> ShardIteratorType {
        match self {
            Position::After(_) => ShardIteratorType::AfterSequenceNumber,
            Position::At(_) => ShardIteratorType::AtSequenceNumber,
            Position::TrimHorizon => ShardIteratorType::TrimHorizon,
            Position::Latest => ShardIteratorType::Latest,
            Position::Timestamp(_) => ShardIteratorType::AtTimestamp,
        }
    }
}

/// Where one shard starts reading: just after its checkpoint, or, without
/// one, at `start_at` (which `run` sets to the trim horizon for a child
/// shard, so that no record of it is skipped).
#[derive(Clone)]
pub struct ShardStart {
    pub store: Arc<dyn CheckpointStore>,
    pub shard_id: String,
    pub start_at: StartAt,
}

impl ShardStart {
    /// # Errors
    /// The shard is already read to its end (`run` never starts a reader then).
    pub fn position(&self) -> anyhow::Result<Position> {
        Ok(match self.store.get(&self.shard_id) {
            Some(Checkpoint::ShardEnd) => anyhow::bail!("{} is already read to its end", self.shard_id),
            Some(Checkpoint::At(seq)) => Position::After(seq),
            None => self.store.resume_at(&self.shard_id).unwrap_or(match self.start_at {
                StartAt::TrimHorizon => Position::TrimHorizon,
                StartAt::Latest => Position::Latest,
                StartAt::Timestamp(t) => Position::Timestamp(t),
            }),
        })
    }
}

/// Whether a read error means the shard cannot be read at all: the stream
/// or shard is gone, or access is denied. Everything else is retried.
pub(crate) fn is_fatal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ResourceNotFoundException"
                | "AccessDeniedException"
                | "KMSAccessDeniedException"
                | "KMSDisabledException"
                | "KMSNotFoundException"
                | "KMSInvalidStateException"
                | "InvalidArgumentException"
        )
    )
}
