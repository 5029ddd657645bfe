//! Randomness where exactness does not matter: spreading clients over brokers and reconnect
//! attempts over time.
//!
//! The source is the standard library's randomly keyed hasher (each [`RandomState`] gets fresh
//! keys), so no random-number crate is needed for this.
//!
//! [`RandomState`]: std::collections::hash_map::RandomState

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random 64-bit number (not for cryptography).
pub(crate) fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// A random number in `0..bound` (`bound` > 0); the bias of the modulo is negligible here.
fn below(bound: u64) -> u64 {
    random_u64() % bound.max(1)
}

/// Shuffles `items` in place (Fisher-Yates).
#[cfg(feature = "cli")]
pub(crate) fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// `duration` scaled by a random factor in `1 - spread ..= 1 + spread` (`spread` in 0..=1).
pub(super) fn jitter(duration: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    let unit = below(1_000_001) as f64 / 1_000_000.0; // 0..=1
    duration.mul_f64(1.0 - spread + 2.0 * spread * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "cli")]
    fn shuffle_keeps_every_item() {
        let mut items: Vec<u32> = (0..50).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    #[cfg(feature = "cli")]
    fn shuffle_moves_items() {
        // 20 shuffles of 50 items all leaving them in order: about 1 in (50!)^20.
        let unchanged = (0..20).all(|_| {
            let mut items: Vec<u32> = (0..50).collect();
            shuffle(&mut items);
            items.windows(2).all(|w| w[0] < w[1])
        });
        assert!(!unchanged);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let base = Duration::from_millis(1000);
        for _ in 0..1000 {
            let d = jitter(base, 0.25);
            assert!(
                d >= Duration::from_millis(750) && d <= Duration::from_millis(1250),
                "{d:?}"
            );
        }
        assert_eq!(jitter(base, 0.0), base);
    }
}
