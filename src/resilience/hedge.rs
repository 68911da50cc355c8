//! What a route remembers for hedging (SPEC §7.2): how many hedges it may still send, and
//! how long its successful first attempts take (for `delay: auto`).
//!
//! - **Ratio.** Over a sliding 10 s window, hedges may number at most `max_ratio` of first
//!   attempts, counted in floating point against the exact sums; a hedge over it is
//!   skipped, never queued. The check and the count happen under one lock, so concurrent
//!   requests cannot both take the last hedge.
//! - **Delay.** `auto` is the p95 of the last [`SAMPLES`] times to response headers of
//!   successful first attempts, recomputed at most once a second (Finagle refreshes its
//!   percentile every few seconds for the same reason: sorting on every request is waste).
//!   Below [`AUTO_MIN_SAMPLES`] there is no p95 and no hedge.
//!
//! Pure state: the caller passes `now`.

use std::time::Duration;

use tokio::time::Instant;

use super::window::Window;
use super::yield_budget::WINDOW;
use crate::config::hedge::{HedgeDelay, HedgePolicy, AUTO_MIN_SAMPLES};

/// Latency samples kept for `delay: auto`.
pub const SAMPLES: usize = 1000;

const REFRESH: Duration = Duration::from_secs(1);

/// A route's hedging state.
#[derive(Debug)]
pub struct HedgeState {
    policy: HedgePolicy,
    /// (first attempts, hedges started) over the window.
    window: Window,
    /// Ring of recent successful first-attempt latencies.
    samples: Vec<Duration>,
    next: usize,
    /// The p95 last computed, and when.
    p95: Option<(Duration, Instant)>,
}

impl HedgeState {
    /// An empty state.
    pub fn new(policy: HedgePolicy, now: Instant) -> HedgeState {
        HedgeState {
            policy,
            window: Window::new(WINDOW, now),
            samples: Vec::with_capacity(SAMPLES),
            next: 0,
            p95: None,
        }
    }

    /// The policy this state serves.
    pub fn policy(&self) -> HedgePolicy {
        self.policy
    }

    /// Records a first attempt (the denominator of `max_ratio`).
    pub fn record_first_attempt(&mut self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// Records the time to response headers of a successful first attempt.
    pub fn record_latency(&mut self, took: Duration) {
        if self.samples.len() < SAMPLES {
            self.samples.push(took);
        } else {
            self.samples[self.next] = took;
        }
        self.next = (self.next + 1) % SAMPLES;
    }

    /// How long a first attempt may go without headers before a hedge; `None`: no hedge
    /// (auto without enough samples yet).
    pub fn delay(&mut self, now: Instant) -> Option<Duration> {
        match self.policy.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Auto => self.p95(now),
        }
    }

    fn p95(&mut self, now: Instant) -> Option<Duration> {
        if self.samples.len() < AUTO_MIN_SAMPLES {
            return None;
        }
        if let Some((p, at)) = self.p95 {
            if now.saturating_duration_since(at) < REFRESH {
                return Some(p);
            }
        }
        let mut sorted = self.samples.clone();
        let ix = (sorted.len() * 95).div_ceil(100) - 1;
        let (_, p, _) = sorted.select_nth_unstable(ix);
        let p = *p;
        self.p95 = Some((p, now));
        Some(p)
    }

    /// Takes one hedge if `max_ratio` allows it now.
    pub fn try_hedge(&mut self, now: Instant) -> bool {
        let (first, hedges) = self.window.sums(now);
        if (hedges + 1) as f64 > self.policy.max_ratio * first as f64 {
            return false;
        }
        self.window.add(now, 0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(delay: HedgeDelay, max_ratio: f64) -> HedgeState {
        HedgeState::new(HedgePolicy { delay, max_ratio }, Instant::now())
    }

    #[test]
    fn auto_waits_for_a_hundred_samples_then_takes_the_p95() {
        let now = Instant::now();
        let mut s = state(HedgeDelay::Auto, 0.05);
        for ms in 1..=99 {
            s.record_latency(Duration::from_millis(ms));
        }
        assert_eq!(s.delay(now), None);
        s.record_latency(Duration::from_millis(100));
        assert_eq!(s.delay(now), Some(Duration::from_millis(95)));
        // Cached for a second, then recomputed from the newest samples.
        for _ in 0..SAMPLES {
            s.record_latency(Duration::from_millis(7));
        }
        assert_eq!(s.delay(now), Some(Duration::from_millis(95)));
        assert_eq!(
            s.delay(now + Duration::from_secs(1)),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn fixed_delay_needs_no_samples() {
        let mut s = state(HedgeDelay::Fixed(Duration::from_millis(20)), 0.05);
        assert_eq!(s.delay(Instant::now()), Some(Duration::from_millis(20)));
    }

    #[test]
    fn hedges_leave_the_window() {
        let now = Instant::now();
        let mut s = state(HedgeDelay::Auto, 0.1);
        for _ in 0..20 {
            s.record_first_attempt(now);
        }
        assert!(s.try_hedge(now) && s.try_hedge(now));
        assert!(!s.try_hedge(now), "10% of 20");
        let later = now + Duration::from_secs(11);
        assert!(!s.try_hedge(later), "no first attempts in the window");
        s.record_first_attempt(later);
        assert!(!s.try_hedge(later), "0.1 of 1 is less than one hedge");
    }

    proptest! {
        /// Whatever the interleaving, at each grant the hedges of the last 9 s never exceed
        /// max_ratio of the first attempts of the last 11 s (the window moves in 1 s steps).
        #[test]
        fn max_ratio_holds(
            events in proptest::collection::vec((any::<bool>(), 0u64..300), 1..500),
            ratio in 0.0f64..=1.0,
        ) {
            let start = Instant::now();
            let mut s = state(HedgeDelay::Auto, ratio);
            let mut now = start;
            let mut log: Vec<(Instant, bool)> = Vec::new();
            for (first, gap) in events {
                now += Duration::from_millis(gap);
                if first {
                    s.record_first_attempt(now);
                    log.push((now, true));
                } else if s.try_hedge(now) {
                    log.push((now, false));
                }
                // Checked at each grant: the window then covers at least the last 9 s
                // and at most the last 11 s.
                if log.last().is_some_and(|e| e.0 == now && !e.1) {
                    let since = now.checked_sub(Duration::from_secs(9)).unwrap_or(start);
                    let wide = now.checked_sub(Duration::from_secs(11)).unwrap_or(start);
                    let hedges = log.iter().filter(|e| !e.1 && e.0 >= since).count();
                    let firsts = log.iter().filter(|e| e.1 && e.0 >= wide).count();
                    prop_assert!(hedges as f64 <= ratio * firsts as f64 + 1e-9, "{hedges} > {ratio} x {firsts}");
                }
            }
        }
    }
}
