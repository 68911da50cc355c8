//! The adaptive concurrency controller of SPEC §7.3: how many attempts a route may have in
//! flight to the upstream. A pure state machine: it is told when each attempt started and
//! ended and how it ended, and answers with a limit. No I/O, no clock of its own, no locks;
//! the slot that wraps it (`proxy::slot`) does the waiting and the counting.
//!
//! # The rule
//!
//! Additive increase, multiplicative decrease, judged once per *window* (as many judged
//! attempts as the limit, so roughly one round trip of the route):
//!
//! - **Drops** (timeouts, resets, connect failures, 429, 502, 503, 504) cut the limit to
//!   `0.9 ×` at once. A drop cuts only if its attempt started after the last cut: the burst
//!   of 503s that one overload produces is one signal, not twenty (TCP's "once per round
//!   trip"), so a single overload does not collapse the limit to `min`.
//! - **Latency**: at the end of a window without drops, the window's *low latency* (its
//!   10th percentile) is compared with the *baseline*, the best low latency the route has
//!   seen. Above `1.5 × baseline + 2 ms` the limit is cut to `0.9 ×`; otherwise, if the
//!   window used at least half the limit, it grows by 1.
//!
//! A low percentile rather than the mean: queueing in front of the upstream delays every
//! request, the quickest too, so it moves the low percentile as much as the mean; but the
//! first window of a route that starts above its capacity already holds queued requests,
//! and its mean would make that queue the baseline, while its quickest requests still show
//! the unloaded latency. Comparing the same statistic window to window keeps a route that
//! mixes fast and slow answers from looking congested.
//!
//! The baseline drops at once to a better window and rises towards a worse one only
//! slowly (time constant [`BASELINE_DRIFT`]), so a backend that really became slower is
//! re-learnt within about a minute without the periodic "pin the concurrency low and
//! re-measure" probes of Envoy's gradient filter, which its users see as 503 bursts.
//!
//! Answers that say nothing about load (2xx and 3xx aside, every status but 429, 502, 503
//! and 504; a client's broken upload) are [`Outcome::Ignored`]: a burst of client-fault 4xx
//! neither shrinks nor grows the limit, and a fast 404 cannot drag the baseline down.
//!
//! # Why not Gradient2 or Vegas as they are
//!
//! Gradient2 compares a short-term with a long-term moving average; under steady queueing the
//! long-term average catches up and the limit drifts upwards until something drops. Vegas
//! keeps the minimum latency ever seen and must probe to forget it. The baseline here is a
//! minimum that forgets slowly by itself, and drops are the backstop for what latency misses.

use std::time::{Duration, Instant};

/// The factor a drop or a latency excess applies.
pub const DECREASE: f64 = 0.9;
/// A window's low latency may be this many times the baseline ...
pub const TOLERANCE: f64 = 1.5;
/// ... plus this much (jitter of a fast, local upstream) before it counts as queueing.
pub const SLACK: Duration = Duration::from_millis(2);
/// How slowly the baseline rises towards worse latencies (time constant).
pub const BASELINE_DRIFT: Duration = Duration::from_secs(60);
/// The fewest judged attempts in a window, so that a small limit is not judged on one.
const MIN_WINDOW: usize = 4;

/// The bounds a route configured; `min <= initial <= max`, `min >= 1` (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub initial: usize,
    pub min: usize,
    pub max: usize,
}

/// How an attempt ended, as far as load is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers of a status that says nothing bad about load.
    Success,
    /// The upstream could not take it: timeout, reset, 429, 502, 503, 504.
    Dropped,
    /// Says nothing about load (client-fault 4xx, 500, an attempt the client abandoned).
    Ignored,
}

impl Outcome {
    /// The outcome of a failed attempt: timeouts, resets and refused connections are drops;
    /// a client's broken upload or a bad response says nothing about load.
    pub fn of_failure(failure: crate::proxy::failure::Failure) -> Outcome {
        use crate::proxy::failure::Failure;
        match failure {
            Failure::Timeout | Failure::Reset | Failure::ConnectFailure => Outcome::Dropped,
            _ => Outcome::Ignored,
        }
    }

    /// The outcome of an answered attempt, from its status.
    pub fn of_status(status: http::StatusCode) -> Outcome {
        match status.as_u16() {
            429 | 502 | 503 | 504 => Outcome::Dropped,
            s if s < 400 => Outcome::Success,
            _ => Outcome::Ignored,
        }
    }
}

/// The state of one route's limit.
#[derive(Debug, Clone)]
pub struct Controller {
    bounds: Bounds,
    /// The limit, kept fractional so that repeated cuts decay smoothly.
    limit: f64,
    /// The best window low latency seen, drifting slowly towards worse ones; `None` before
    /// the first window.
    baseline: Option<f64>,
    /// When the baseline last moved (or the first window ended).
    baseline_at: Option<Instant>,
    /// Attempts that started before this were sent under a limit since cut.
    last_cut: Option<Instant>,
    window: Window,
}

/// What the current window has seen.
#[derive(Debug, Clone, Default)]
struct Window {
    /// Latencies of the judged attempts, seconds (at most `max(limit, MIN_WINDOW)`).
    latencies: Vec<f64>,
    /// Whether the attempts used at least half the limit.
    busy: bool,
    /// Whether a drop cut the limit during this window: then the window only teaches the
    /// baseline (its quickest answers may be the only unloaded ones a route starting above
    /// its capacity ever sees), and neither grows nor cuts again.
    cut: bool,
}

impl Window {
    /// The window's low latency: its 10th percentile.
    fn low(&mut self) -> f64 {
        let k = self.latencies.len() / 10;
        let (_, low, _) = self.latencies.select_nth_unstable_by(k, f64::total_cmp);
        *low
    }

    fn clear(&mut self) {
        self.latencies.clear();
        self.busy = false;
        self.cut = false;
    }
}

impl Controller {
    /// A controller at `bounds.initial`.
    pub fn new(bounds: Bounds) -> Controller {
        Controller {
            bounds,
            limit: bounds.initial as f64,
            baseline: None,
            baseline_at: None,
            last_cut: None,
            window: Window::default(),
        }
    }

    /// The limit now: never below `min` nor above `max`.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).clamp(self.bounds.min, self.bounds.max)
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The baseline latency, once a window has been judged.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// Records one attempt that started at `started` (with `in_flight` attempts in flight,
    /// itself included) and ended at `now` with `outcome`.
    pub fn record(&mut self, started: Instant, now: Instant, in_flight: usize, outcome: Outcome) {
        match outcome {
            Outcome::Ignored => {}
            Outcome::Dropped => {
                if self.last_cut.is_none_or(|cut| started >= cut) {
                    self.cut(now);
                    self.window.cut = true;
                }
            }
            Outcome::Success => {
                let limit = self.limit();
                let w = &mut self.window;
                w.latencies
                    .push(now.saturating_duration_since(started).as_secs_f64());
                w.busy |= in_flight * 2 >= limit;
                if w.latencies.len() >= limit.max(MIN_WINDOW) {
                    self.judge(now);
                }
            }
        }
    }

    /// Ends a window without drops: cut on queueing, grow when the limit was used.
    fn judge(&mut self, now: Instant) {
        let low = self.window.low();
        let (busy, cut) = (self.window.busy, self.window.cut);
        self.window.clear();
        let baseline = self.baseline.unwrap_or(low);
        if cut {
            // Judged already, by the drop.
        } else if low > baseline * TOLERANCE + SLACK.as_secs_f64() {
            self.cut(now);
        } else if busy {
            self.limit = (self.limit + 1.0).min(self.bounds.max as f64);
        }
        self.learn(low, now);
    }

    /// Moves the baseline: at once down to a better window, slowly up towards a worse one.
    fn learn(&mut self, low: f64, now: Instant) {
        let since = self
            .baseline_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.baseline_at = Some(now);
        self.baseline = Some(match self.baseline {
            Some(b) if low > b => {
                let share = (since.as_secs_f64() / BASELINE_DRIFT.as_secs_f64()).min(1.0);
                b + (low - b) * share
            }
            _ => low,
        });
    }

    fn cut(&mut self, now: Instant) {
        self.limit = (self.limit * DECREASE).max(self.bounds.min as f64);
        self.last_cut = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: Bounds = Bounds {
        initial: 16,
        min: 2,
        max: 64,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` successes of `latency`, one after another, with `in_flight` in flight.
    fn successes(c: &mut Controller, t: &mut Instant, n: usize, latency: Duration) {
        for _ in 0..n {
            let started = *t;
            *t += ms(1);
            c.record(started, started + latency, c.limit(), Outcome::Success);
        }
        *t += latency;
    }

    #[test]
    fn grows_by_one_per_window_while_latency_holds() {
        let mut c = Controller::new(B);
        let mut t = Instant::now();
        successes(&mut c, &mut t, 16, ms(20));
        assert_eq!(
            c.limit(),
            17,
            "the first window sets the baseline and grows"
        );
        successes(&mut c, &mut t, 17, ms(20));
        assert_eq!(c.limit(), 18);
    }

    #[test]
    fn a_drop_cuts_once_per_burst() {
        let mut c = Controller::new(B);
        let t = Instant::now();
        for i in 0..10 {
            c.record(t + ms(i), t + ms(30), 16, Outcome::Dropped);
        }
        assert_eq!(
            c.limit(),
            14,
            "16 × 0.9 = 14.4, cut once for the whole burst"
        );
        c.record(t + ms(31), t + ms(40), 14, Outcome::Dropped);
        assert_eq!(c.limit(), 12, "a drop sent after the cut cuts again");
    }

    #[test]
    fn latency_above_the_baseline_cuts() {
        let mut c = Controller::new(B);
        let mut t = Instant::now();
        successes(&mut c, &mut t, 16, ms(20));
        assert_eq!(c.limit(), 17);
        successes(&mut c, &mut t, 17, ms(40));
        assert_eq!(c.limit(), 15, "40 ms against a 20 ms baseline: 17 × 0.9");
    }

    #[test]
    fn client_fault_answers_change_nothing() {
        let mut c = Controller::new(B);
        let t = Instant::now();
        for i in 0..1000 {
            let status = http::StatusCode::from_u16(400 + (i % 29) as u16).unwrap();
            let outcome = Outcome::of_status(status);
            if status.as_u16() != 429 {
                assert_eq!(outcome, Outcome::Ignored, "{status}");
            }
            c.record(
                t,
                t + ms(i),
                16,
                Outcome::of_status(http::StatusCode::NOT_FOUND),
            );
        }
        assert_eq!(c.limit(), 16);
        assert!(c.baseline().is_none());
    }

    #[test]
    fn the_baseline_forgets_slowly() {
        let mut c = Controller::new(B);
        let mut t = Instant::now();
        successes(&mut c, &mut t, 16, ms(20));
        for _ in 0..200 {
            let n = c.limit();
            successes(&mut c, &mut t, n, ms(60));
        }
        let b = c.baseline().unwrap();
        assert!(b > ms(20) && b < ms(40), "{b:?}");
    }

    #[test]
    fn a_first_window_above_capacity_still_learns_the_unloaded_latency() {
        let mut c = Controller::new(B);
        let t = Instant::now();
        // 16 at once to 8 slots of 20 ms: half wait a turn.
        for i in 0..16 {
            let latency = if i < 8 { ms(20) } else { ms(40) };
            c.record(t, t + latency, 16, Outcome::Success);
        }
        assert_eq!(c.baseline(), Some(ms(20)));
    }

    #[test]
    fn answers_around_a_drop_still_teach_the_baseline() {
        let mut c = Controller::new(B);
        let t = Instant::now();
        for i in 0..4 {
            c.record(t, t + ms(50), 16, Outcome::Success);
            c.record(t + ms(i), t + ms(51 + i), 16, Outcome::Dropped);
        }
        for _ in 0..12 {
            c.record(t + ms(60), t + ms(260), 16, Outcome::Success);
        }
        assert_eq!(
            c.limit(),
            14,
            "16 × 0.9 once, and the window does not cut again"
        );
        assert_eq!(c.baseline(), Some(ms(50)));
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let mut c = Controller::new(B);
        let t = Instant::now();
        for i in 0..100 {
            c.record(t + ms(i), t + ms(i + 20), 1, Outcome::Success);
        }
        assert_eq!(c.limit(), 16);
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::Dropped),
            Just(Outcome::Ignored)
        ]
    }

    fn bounds() -> impl Strategy<Value = Bounds> {
        (1usize..50, 0usize..50, 0usize..50).prop_map(|(min, a, b)| Bounds {
            min,
            initial: min + a.min(b),
            max: min + a.max(b),
        })
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(
            bounds in bounds(),
            events in prop::collection::vec((0u64..50, 0u64..500, 0usize..100, outcome()), 0..400),
        ) {
            let mut c = Controller::new(bounds);
            let mut t = Instant::now();
            for (gap, latency, in_flight, outcome) in events {
                t += ms(gap);
                c.record(t, t + ms(latency), in_flight, outcome);
                prop_assert!(c.limit() >= bounds.min && c.limit() <= bounds.max);
            }
        }

        #[test]
        fn ignored_answers_never_move_the_limit(
            bounds in bounds(),
            events in prop::collection::vec((0u64..50, 0u64..500, 0usize..100), 0..400),
        ) {
            let mut c = Controller::new(bounds);
            let mut t = Instant::now();
            for (gap, latency, in_flight) in events {
                t += ms(gap);
                c.record(t, t + ms(latency), in_flight, Outcome::Ignored);
            }
            prop_assert_eq!(c.limit(), bounds.initial);
        }

        #[test]
        fn drops_only_shrink_and_successes_only_grow_at_steady_latency(
            bounds in bounds(),
            events in prop::collection::vec(any::<bool>(), 0..400),
        ) {
            let mut c = Controller::new(bounds);
            let mut t = Instant::now();
            for dropped in events {
                let before = c.limit();
                let started = t;
                t += ms(25);
                if dropped {
                    c.record(started, t, before, Outcome::Dropped);
                    prop_assert!(c.limit() <= before);
                } else {
                    c.record(started, started + ms(20), before, Outcome::Success);
                    prop_assert!(c.limit() >= before);
                }
            }
        }
    }
}
