//! When to try connecting again after a failure, and when to give up ([`Reconnect`]): the
//! backoff of both the server and the recovering client.

use super::random::jitter;
use std::time::Duration;

/// The first wait after a failure; each further failure in a row doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// How much each wait varies at random (±25%), so that many servers losing one broker do not
/// all come back in the same instant.
const SPREAD: f64 = 0.25;

/// Counts failed connection attempts in a row and says how long to wait before the next one.
#[derive(Debug, Clone)]
pub struct Reconnect {
    failures: u32,
    max_retries: Option<u32>,
    max_backoff: Duration,
}

impl Reconnect {
    /// Gives up after `max_retries` failures in a row (`None`: never); waits at most
    /// `max_backoff` between attempts.
    pub fn new(max_retries: Option<u32>, max_backoff: Duration) -> Reconnect {
        Reconnect {
            failures: 0,
            max_retries,
            max_backoff,
        }
    }

    /// The connection worked (the server consumed its queue): the next failure starts the
    /// backoff from the bottom again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Records a failure. Returns how long to wait before the next attempt, or `None` when
    /// the failures in a row exceed `max_retries`.
    pub fn failed(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if self.max_retries.is_some_and(|max| self.failures > max) {
            return None;
        }
        Some(jitter(self.base_delay(), SPREAD))
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// [`FIRST_DELAY`] doubled per failure in a row after the first, capped at `max_backoff`.
    fn base_delay(&self) -> Duration {
        let doublings = self.failures.clamp(1, 17) - 1;
        FIRST_DELAY
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_spread(delay: Duration, base_ms: u64) -> bool {
        let base = Duration::from_millis(base_ms);
        delay >= base.mul_f64(1.0 - SPREAD) && delay <= base.mul_f64(1.0 + SPREAD)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut reconnect = Reconnect::new(None, Duration::from_secs(1));
        for base_ms in [100, 200, 400, 800, 1000, 1000] {
            let delay = reconnect.failed().expect("retries for ever");
            assert!(within_spread(delay, base_ms), "{delay:?} vs {base_ms} ms");
        }
        assert_eq!(reconnect.failures(), 6);
    }

    #[test]
    fn success_starts_again_from_the_bottom() {
        let mut reconnect = Reconnect::new(Some(3), Duration::from_secs(10));
        for _ in 0..3 {
            assert!(reconnect.failed().is_some());
        }
        reconnect.succeeded();
        let delay = reconnect.failed().expect("a fresh start");
        assert!(within_spread(delay, 100), "{delay:?}");
    }

    #[test]
    fn gives_up_after_max_retries() {
        let mut reconnect = Reconnect::new(Some(2), Duration::from_secs(10));
        assert!(reconnect.failed().is_some());
        assert!(reconnect.failed().is_some());
        assert!(reconnect.failed().is_none());
        let mut never = Reconnect::new(Some(0), Duration::from_secs(10));
        assert!(never.failed().is_none());
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut reconnect = Reconnect::new(None, Duration::from_secs(10));
        for _ in 0..100 {
            let delay = reconnect.failed().expect("retries for ever");
            assert!(delay <= Duration::from_millis(12_500), "{delay:?}");
        }
    }
}
