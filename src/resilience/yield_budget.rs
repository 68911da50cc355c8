//! The adaptive retry budget (SPEC §7.1): room for retries follows the **retry yield**, the
//! share of the route's recent retries that succeeded.
//!
//! A static budget (`ratio` of live traffic) cannot tell random flakiness, where a retry
//! almost always succeeds and is worth its cost, from an outage, where every retry is
//! wasted load on a backend trying to come back. The yield tells them apart, so it sets
//! the room. Over a sliding 10 s window:
//!
//! ```text
//! y       = (S + 1) / (S + F + 1)             S, F: of the last 32 retries of the last
//!                                             10 s, those that succeeded / failed
//! allowed = ((attempts - 1) * R + min_per_second * 10) * y^2
//!                                             R: first attempts in the last 10 s
//! a retry is granted when  T + 1 <= allowed    T: retries granted
//!                  or when  no retry was granted in the last second (a probe)
//! ```
//!
//! - The yield looks at the last [`OUTCOMES`] retries only (and none older than the
//!   window): when a flaky backend goes down, 20 failed retries outweigh the hundreds of
//!   successes of the seconds before, so the budget shuts within a fraction of a second
//!   instead of waiting for them to leave a 10 s window.
//! - The prior (one imagined success) makes a route with no recent retries trust them
//!   (`y = 1`): the first failures of a healthy backend are retried at once.
//! - Under 20% random 503s the yield is about 0.8, so `y^2 = 0.64` and the room is about
//!   1.3 retries per request with 3 attempts: every retry `attempts` allows goes through
//!   (only 0.24 are needed).
//! - In an outage every retry fails: once 32 have failed `y = 1/33`, `y^2 < 0.001`, and the
//!   room is `(2R + 10 m) / 1089`: 2 retries per 10 s at 100 req/s (R = 1000, m = 10), so
//!   what goes through is the probe below, about 1% more load. Squaring the yield is what
//!   makes the room vanish rather than linger at a few percent.
//! - Whatever the room, one retry a second is granted when none was in the last second
//!   (unless `min_per_second` is 0): a probe. Without it, a burst of concurrent failures at
//!   the start of an outage could leave `T` above the room until those failures age out,
//!   and nothing would measure the yield meanwhile. At 100 req/s a probe a second is 1%.
//! - Failures leave the window after 10 s, and each probe that succeeds raises the yield,
//!   so the room comes back within one window once the backend recovers (in practice
//!   within a few probes: one success among 12 failures already gives
//!   `y^2 = (2/14)^2 = 2%` of `2R`, 20 retries at R = 500).
//!
//! Room is counted in floating point against the exact sums (no integer percentage that
//! rounds up, the trap tower's `TpsBudget` fell into), and the grant never exceeds what
//! `attempts` allows per first attempt plus the `min_per_second` floor. This is a pure
//! state machine: the caller passes `now`, so tests need no clock and no sockets.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::window::Window;

/// The window both static and adaptive budgets count over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How many recent retry outcomes the yield is computed from.
pub const OUTCOMES: usize = 32;

/// With no room left, one retry a second still goes through (when `min_per_second > 0`).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The adaptive budget's counters.
#[derive(Debug)]
pub struct YieldBudget {
    /// (first attempts, retries granted) over the window.
    traffic: Window,
    /// The last [`OUTCOMES`] retry outcomes (when, succeeded), oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    /// When the last retry was granted: a probe is due a second later.
    last_grant: Option<Instant>,
}

impl YieldBudget {
    /// An empty budget: no traffic, full trust in retries.
    pub fn new(now: Instant) -> YieldBudget {
        YieldBudget {
            traffic: Window::new(WINDOW, now),
            outcomes: VecDeque::with_capacity(OUTCOMES),
            last_grant: None,
        }
    }

    /// Records a first attempt.
    pub fn record_request(&mut self, now: Instant) {
        self.traffic.add(now, 1, 0);
    }

    /// Records how a granted retry ended: `true` when its answer was final (not a failure
    /// the policy retries).
    pub fn record_outcome(&mut self, now: Instant, succeeded: bool) {
        if self.outcomes.len() == OUTCOMES {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((now, succeeded));
    }

    /// The yield the budget believes now, in `(0, 1]`.
    pub fn yield_now(&mut self, now: Instant) -> f64 {
        while self
            .outcomes
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW)
        {
            self.outcomes.pop_front();
        }
        let succeeded = self.outcomes.iter().filter(|(_, ok)| *ok).count();
        (succeeded as f64 + 1.0) / (self.outcomes.len() as f64 + 1.0)
    }

    /// How many retries the window allows now (not yet reduced by those granted).
    pub fn room(&mut self, now: Instant, attempts: u32, min_per_second: u32) -> f64 {
        let (requests, _) = self.traffic.sums(now);
        let y = self.yield_now(now);
        let ceiling = f64::from(attempts.saturating_sub(1)) * requests as f64
            + f64::from(min_per_second) * WINDOW.as_secs_f64();
        ceiling * y * y
    }

    /// Takes one retry; `false` means it must be skipped.
    pub fn try_retry(&mut self, now: Instant, attempts: u32, min_per_second: u32) -> bool {
        let allowed = self.room(now, attempts, min_per_second);
        let (_, granted) = self.traffic.sums(now);
        let probe_due = min_per_second > 0
            && attempts > 1
            && self
                .last_grant
                .is_none_or(|last| now.saturating_duration_since(last) >= PROBE_EVERY);
        if (granted + 1) as f64 > allowed && !probe_due {
            return false;
        }
        self.traffic.add(now, 0, 1);
        self.last_grant = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives `seconds` of traffic at `rate` req/s: a first attempt fails with probability
    /// `fail_first`, a granted retry succeeds with probability `retry_yield` (seeded).
    /// Returns (requests, retries).
    fn drive(
        b: &mut YieldBudget,
        start: Instant,
        seconds: u64,
        rate: u64,
        fail_first: f64,
        retry_yield: f64,
    ) -> (u64, u64) {
        let mut rng = fastrand::Rng::with_seed(5);
        let (mut requests, mut retries) = (0, 0);
        let step = Duration::from_secs(1) / rate as u32;
        for i in 0..seconds * rate {
            let now = start + step * i as u32;
            b.record_request(now);
            requests += 1;
            let mut failed = rng.f64() < fail_first;
            for _ in 1..3 {
                if !failed || !b.try_retry(now, 3, 10) {
                    break;
                }
                retries += 1;
                failed = rng.f64() >= retry_yield;
                b.record_outcome(now + MS, !failed);
            }
        }
        (requests, retries)
    }

    #[test]
    fn random_flakiness_gets_every_retry_attempts_allows() {
        let now = Instant::now();
        let mut b = YieldBudget::new(now);
        let mut skipped = 0;
        let mut rng = fastrand::Rng::with_seed(1);
        for i in 0..20_000u32 {
            let t = now + MS * i;
            b.record_request(t);
            let mut failed = rng.u8(0..100) < 20;
            for _ in 1..3 {
                if !failed {
                    break;
                }
                if !b.try_retry(t, 3, 10) {
                    skipped += 1;
                    break;
                }
                failed = rng.u8(0..100) < 20;
                b.record_outcome(t, !failed);
            }
        }
        assert_eq!(skipped, 0);
        let y = b.yield_now(now + MS * 20_000);
        assert!((0.75..0.85).contains(&y), "{y}");
    }

    #[test]
    fn an_outage_shrinks_retries_to_a_trickle() {
        let now = Instant::now();
        let mut b = YieldBudget::new(now);
        let (requests, retries) = drive(&mut b, now, 20, 100, 1.0, 0.0);
        assert_eq!(requests, 2000);
        // SPEC §7.1: at most 1.05 upstream requests per client request over the run.
        assert!(retries <= 100, "{retries} retries");
        assert!(retries >= 20, "probes keep measuring: {retries}");
        let y = b.yield_now(now + Duration::from_millis(19_990));
        assert!(y < 0.15, "{y} after {retries} retries");
    }

    #[test]
    fn an_outage_right_after_flakiness_shuts_the_room_at_once() {
        let now = Instant::now();
        let mut b = YieldBudget::new(now);
        drive(&mut b, now, 10, 100, 0.2, 0.8);
        let down = now + Duration::from_secs(10);
        let (requests, retries) = drive(&mut b, down, 10, 100, 1.0, 0.0);
        // SPEC §7.1 row 3: at most 1.05 during the outage part, though the window is still
        // full of the flaky period's successful retries.
        assert!(
            retries as f64 <= 0.05 * requests as f64,
            "{retries} retries for {requests} requests"
        );
    }

    #[test]
    fn room_comes_back_within_one_window() {
        let now = Instant::now();
        let mut b = YieldBudget::new(now);
        drive(&mut b, now, 20, 100, 1.0, 0.0);
        // The backend is flaky again (20% of answers fail, retries succeed 80%).
        let later = now + Duration::from_secs(20);
        drive(&mut b, later, 10, 100, 0.2, 0.8);
        let after = later + Duration::from_secs(10);
        let (requests, retries) = drive(&mut b, after, 5, 100, 0.2, 0.8);
        assert!(
            retries as f64 >= 0.2 * requests as f64,
            "{retries} retries for {requests} requests"
        );
        assert!(b.yield_now(after + Duration::from_secs(5)) > 0.6);
    }

    #[test]
    fn failures_leave_the_window() {
        let now = Instant::now();
        let mut b = YieldBudget::new(now);
        for _ in 0..50 {
            b.record_outcome(now, false);
        }
        assert!(b.yield_now(now) < 0.05);
        assert!(b.yield_now(now + Duration::from_millis(9_000)) < 0.05);
        assert_eq!(b.yield_now(now + Duration::from_millis(10_500)), 1.0);
    }

    #[test]
    fn no_traffic_and_no_floor_means_no_retries() {
        let now = Instant::now();
        let mut b = YieldBudget::new(now);
        assert!(!b.try_retry(now, 3, 0));
        b.record_request(now);
        assert!(b.try_retry(now, 3, 0));
        assert!(b.try_retry(now, 3, 0));
        assert!(
            !b.try_retry(now, 3, 0),
            "attempts: 3 allows two per request"
        );
        b.record_request(now);
        assert!(!b.try_retry(now, 1, 0), "attempts: 1 allows none");
    }

    proptest! {
        /// Whatever the outcomes, granted retries never exceed what `attempts` allows per
        /// first attempt plus the floor, and the yield stays in (0, 1].
        #[test]
        fn never_more_than_attempts_allow(
            events in proptest::collection::vec((0u8..4, 0u64..400), 1..400),
            attempts in 1u32..6,
            floor in 0u32..3,
        ) {
            let start = Instant::now();
            let mut b = YieldBudget::new(start);
            let mut now = start;
            let mut log: Vec<(Instant, u64, u64)> = Vec::new();
            for (kind, gap) in events {
                now += Duration::from_millis(gap);
                match kind {
                    0 => { b.record_request(now); log.push((now, 1, 0)); }
                    1 => if b.try_retry(now, attempts, floor) { log.push((now, 0, 1)); },
                    2 => b.record_outcome(now, true),
                    _ => b.record_outcome(now, false),
                }
                let y = b.yield_now(now);
                prop_assert!(y > 0.0 && y <= 1.0);
                // Checked at each grant: the window then covers at least the last 9 s
                // and at most the last 11 s.
                if log.last().is_none_or(|e| e.0 != now || e.2 == 0) {
                    continue;
                }
                let since = now.checked_sub(Duration::from_secs(9)).unwrap_or(start);
                let wide = now.checked_sub(Duration::from_secs(11)).unwrap_or(start);
                let granted: u64 = log.iter().filter(|e| e.0 >= since).map(|e| e.2).sum();
                let requests: u64 = log.iter().filter(|e| e.0 >= wide).map(|e| e.1).sum();
                let probes = if floor > 0 && attempts > 1 { 10 } else { 0 };
                let ceiling = u64::from(attempts - 1) * requests + u64::from(floor) * 10 + probes;
                prop_assert!(granted <= ceiling, "{granted} > {ceiling}");
            }
        }

        /// The yield is the share of the last OUTCOMES outcomes that succeeded, with one
        /// success of prior, while they are all inside the window.
        #[test]
        fn yield_estimate_matches_the_outcomes(
            outcomes in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let now = Instant::now();
            let mut b = YieldBudget::new(now);
            for ok in &outcomes { b.record_outcome(now, *ok); }
            let y = b.yield_now(now + Duration::from_secs(5));
            let recent = &outcomes[outcomes.len().saturating_sub(OUTCOMES)..];
            let good = recent.iter().filter(|ok| **ok).count();
            let expected = (good as f64 + 1.0) / (recent.len() as f64 + 1.0);
            prop_assert!((y - expected).abs() < 1e-12);
            prop_assert_eq!(b.yield_now(now + WINDOW), 1.0);
        }

        /// In a full outage the retries granted over any run stay a small share of
        /// traffic, yet never stop entirely while traffic flows: probes keep measuring.
        #[test]
        fn an_outage_keeps_probing_at_any_rate(rate in 5u64..400, seconds in 12u64..30) {
            let now = Instant::now();
            let mut b = YieldBudget::new(now);
            let (requests, retries) = drive(&mut b, now, seconds, rate, 1.0, 0.0);
            // Room for about cbrt(2R) retries a window, plus a probe a second.
            let bound = 0.05 * requests as f64 + seconds as f64 + 15.0;
            prop_assert!(retries as f64 <= bound, "{retries}/{requests}");
            // Some retry in the last window: the budget is still measuring.
            let tail = now + Duration::from_secs(seconds);
            let (_, later) = drive(&mut b, tail, 10, rate, 1.0, 0.0);
            prop_assert!(later >= 1);
        }
    }
}
