//! Exponential backoff with jitter, as SPEC §2 defines it.
//!
//! The delay before retry `n` (n = 1, 2, ...) is `min(max, base * 2^(n-1))`, then jittered.
//! Full jitter is the default because it spreads a crowd of clients that failed together
//! across the whole interval; that is what keeps a brief outage from turning into
//! synchronised waves of retries. The caller clamps the result to what is left of the
//! request's deadline.

use std::time::Duration;

use crate::config::{Backoff, Jitter};

/// The un-jittered delay before retry `n` (1-based): `min(max, base * 2^(n-1))`.
/// (The arithmetic is `Backoff::ceiling`, in `config`, so that config validation can
/// warn about it without importing this module.)
pub fn ceiling(backoff: &Backoff, n: u32) -> Duration {
    backoff.ceiling(n)
}

/// The delay before retry `n`, jittered with `unit`, a random number in `[0, 1)`.
pub fn delay(backoff: &Backoff, n: u32, unit: f64) -> Duration {
    let d = ceiling(backoff, n);
    match backoff.jitter {
        Jitter::None => d,
        Jitter::Full => d.mul_f64(unit),
        Jitter::Equal => d / 2 + (d / 2).mul_f64(unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff(base_ms: u64, max_ms: u64, jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    #[test]
    fn doubles_from_base_until_max() {
        let b = backoff(100, 1000, Jitter::None);
        let delays: Vec<u128> = (1..=6).map(|n| delay(&b, n, 0.5).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn equal_jitter_keeps_at_least_half() {
        let b = backoff(100, 1000, Jitter::Equal);
        assert_eq!(delay(&b, 2, 0.0), Duration::from_millis(100));
        assert_eq!(delay(&b, 2, 0.999_999), Duration::from_nanos(199_999_900));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = backoff(100, 1000, Jitter::Full);
        assert_eq!(delay(&b, 3, 0.0), Duration::ZERO);
        assert_eq!(delay(&b, 3, 0.5), Duration::from_millis(200));
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let b = backoff(100, 2000, Jitter::None);
        assert_eq!(delay(&b, 40, 0.3), Duration::from_millis(2000));
        assert_eq!(delay(&b, u32::MAX, 0.3), Duration::from_millis(2000));
    }

    proptest! {
        #[test]
        fn never_above_max(base in 0u64..5_000, extra in 0u64..60_000, n in 1u32..100,
                           unit in 0.0f64..1.0, j in 0usize..3) {
            let jitter = [Jitter::Full, Jitter::Equal, Jitter::None][j];
            let b = backoff(base, base + extra, jitter);
            let d = delay(&b, n, unit);
            prop_assert!(d <= b.max);
            prop_assert!(d <= ceiling(&b, n));
            if jitter != Jitter::Full {
                prop_assert!(d >= ceiling(&b, n) / 2);
            }
        }
    }
}
