//! The pause between two attempts of one record: exponential, capped, with full jitter
//! (a uniformly random pause up to the capped exponential), so a routing endpoint that
//! comes back is not met by every conversation at once.

use std::time::Duration;

/// The pause after the `failures`th failed attempt (1 for the first), given a random
/// draw: uniform in `0 ..= min(max, initial * 2^(failures-1))` milliseconds.
pub fn pause(failures: u32, initial: Duration, max: Duration, random: u64) -> Duration {
    let initial = initial.as_millis().max(1) as u64;
    let max = (max.as_millis() as u64).max(initial);
    let exponent = failures.saturating_sub(1).min(40);
    let cap = initial.saturating_mul(1u64 << exponent).min(max);
    Duration::from_millis(random % (cap + 1))
}

/// A random draw for `pause`, from the OS generator.
pub fn draw() -> u64 {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 8];
    // The OS generator does not fail on Linux; a zero draw just retries at once.
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(500);
    const M: Duration = Duration::from_millis(60_000);

    /// `bound` is the largest pause: a draw of `bound` gives it, one more wraps to zero.
    fn assert_bound(failures: u32, bound: u64) {
        assert_eq!(pause(failures, I, M, bound), Duration::from_millis(bound));
        assert_eq!(pause(failures, I, M, bound + 1), Duration::ZERO);
    }

    #[test]
    fn bounds_grow_exponentially_to_the_cap() {
        assert_bound(1, 500);
        assert_bound(2, 1_000);
        assert_bound(4, 4_000);
        assert_bound(8, 60_000);
        assert_bound(1_000, 60_000);
    }

    #[test]
    fn every_draw_stays_within_its_bound() {
        for n in 1..20 {
            let cap = Duration::from_millis((500u64 << (n - 1).min(30)).min(60_000));
            for _ in 0..200 {
                assert!(pause(n, I, M, draw()) <= cap);
            }
        }
    }
}
