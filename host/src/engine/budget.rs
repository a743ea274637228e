//! One batch's time for modules that fail, shared by all its regions and
//! chunks.
//!
//! A module that times out on every record is retried by halving (to find
//! the records that make it fail); without a bound per batch that costs a
//! call timeout per record. A budget per region's share, or per chunk of a
//! batch, still multiplies: five failing regions, a batch of KPL aggregates
//! split into many chunks. So the budget is the batch's: once its time is
//! spent, a module that has failed in the batch gets no more calls, and its
//! records left go to dead letters at once, with the reason.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A batch's budget, started when the batch is.
#[derive(Debug)]
pub struct BatchBudget {
    started: Instant,
    /// Modules (by digest) that failed a call in this batch.
    failing: Mutex<HashSet<String>>,
}

impl Default for BatchBudget {
    fn default() -> Self {
        Self::start()
    }
}

impl BatchBudget {
    #[must_use]
    pub fn start() -> Self {
        Self { started: Instant::now(), failing: Mutex::default() }
    }

    /// What is left of `budget` (the engine's), zero once spent.
    pub(super) fn left(&self, budget: Duration) -> Duration {
        budget.saturating_sub(self.started.elapsed())
    }

    pub(super) fn failing(&self, digest: &str) -> bool {
        self.failing.lock().expect("never held across a panic").contains(digest)
    }

    pub(super) fn failed(&self, digest: &str) {
        self.failing.lock().expect("never held across a panic").insert(digest.to_owned());
    }
}
