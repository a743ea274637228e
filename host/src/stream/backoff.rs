//! Jittered exponential backoff, the one kind every retry of the stream
//! path uses.

use std::time::Duration;

/// Delays that double from `first` up to `max`, each drawn from ±50% of
/// the nominal value so that shards retrying together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    nominal: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, nominal: first }
    }

    /// The next delay, jittered; the one after it doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.nominal.mul_f64(0.5 + fastrand::f64());
        self.nominal = (self.nominal * 2).min(self.max);
        delay
    }

    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to `first`, after a success.
    pub fn reset(&mut self) {
        self.nominal = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        for nominal in [100u64, 200, 350, 350] {
            let d = b.next_delay().as_millis() as u64;
            assert!((nominal / 2..=nominal * 3 / 2).contains(&d), "{d} ms for nominal {nominal}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
