//! The circuit breaker: stop sending requests to a route whose upstream keeps failing.
//!
//! ```text
//!   closed ──(failures/attempts ≥ failure_ratio, attempts ≥ min_requests, in window)──▶ open
//!   open ──(open_duration passed)──▶ half-open: up to half_open_requests probes go through
//!   half-open ──(every probe succeeded)──▶ closed      half-open ──(a probe failed)──▶ open
//! ```
//!
//! Every upstream attempt counts, retries included; failures are connect failures, resets,
//! timeouts, bad responses and 5xx. While open, nothing reaches the upstream but the
//! probes, so a backend that is down gets room to come back instead of a stampede.
//!
//! A reload that changes a route's breaker policy (or removes the route) retires the old
//! breaker: requests admitted before the reload still report to it, but its transitions no
//! longer touch the metrics, which belong to the live breaker (or to no route at all).
//!
//! An admitted attempt holds a [`Permit`]; dropping a probe's permit without a result (the
//! client went away mid-attempt) frees its probe slot, so half-open can never get stuck.

use std::sync::Mutex;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;
use tracing::warn;

use super::window::Window;
use crate::config::BreakerPolicy;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The label used by `/health` and the transitions metric.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half-open",
            State::Open => "open",
        }
    }

    /// The `outrigger_circuit_state` value: 0 closed, 1 half-open, 2 open.
    fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// Where the breaker reports its state.
#[derive(Debug, Clone)]
pub struct BreakerMetrics {
    pub state: IntGauge,
    /// Transitions to closed, half-open, open.
    pub to: [IntCounter; 3],
}

/// One route's breaker.
#[derive(Debug)]
pub struct Breaker {
    route: String,
    policy: BreakerPolicy,
    metrics: BreakerMetrics,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    opened_at: Instant,
    /// (attempts, failures) while closed.
    window: Window,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Replaced by a reload: keeps working for requests in flight, writes no metrics.
    retired: bool,
    /// Bumped on every transition: a result from an earlier state carries no news.
    generation: u64,
}

/// Leave to make one upstream attempt.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    generation: u64,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(route: &str, policy: BreakerPolicy, metrics: BreakerMetrics) -> Breaker {
        let now = Instant::now();
        metrics.state.set(State::Closed.gauge());
        Breaker {
            route: route.to_owned(),
            policy,
            metrics,
            inner: Mutex::new(Inner {
                state: State::Closed,
                opened_at: now,
                window: Window::new(policy.window, now),
                probes_in_flight: 0,
                probe_successes: 0,
                retired: false,
                generation: 0,
            }),
        }
    }

    /// The policy this breaker enforces.
    pub fn policy(&self) -> BreakerPolicy {
        self.policy
    }

    /// Stops this breaker writing metrics: a reload replaced it. Taken under the state
    /// lock, so a transition racing with the reload either lands before the new breaker
    /// resets the gauge or not at all.
    pub fn retire(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.retired = true;
        }
    }

    /// The state now (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> State {
        let Ok(mut inner) = self.inner.lock() else {
            return State::Closed;
        };
        self.expire(&mut inner);
        inner.state
    }

    /// Asks to make an attempt; `None` while open (or half-open with every probe taken).
    pub fn admit(&self) -> Option<Permit<'_>> {
        let mut inner = self.inner.lock().ok()?;
        self.expire(&mut inner);
        let probe = match inner.state {
            State::Closed => false,
            State::Open => return None,
            State::HalfOpen if inner.probes_in_flight >= self.policy.half_open_requests => {
                return None
            }
            State::HalfOpen => {
                inner.probes_in_flight += 1;
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            generation: inner.generation,
            recorded: false,
        })
    }

    /// An open breaker whose time is up turns half-open. Only an open one reads the
    /// clock: the usual admit of a closed breaker needs no time.
    fn expire(&self, inner: &mut Inner) {
        if inner.state != State::Open {
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(inner.opened_at) >= self.policy.open_duration {
            self.transition(inner, State::HalfOpen, now);
        }
    }

    fn transition(&self, inner: &mut Inner, to: State, now: Instant) {
        inner.state = to;
        inner.generation += 1;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        match to {
            State::Open => inner.opened_at = now,
            State::Closed => inner.window.clear(now),
            State::HalfOpen => {}
        }
        if inner.retired {
            return;
        }
        self.metrics.state.set(to.gauge());
        self.metrics.to[to.gauge() as usize].inc();
        warn!(route = %self.route, to = to.label(), "circuit breaker changed state");
    }

    fn record(&self, probe: bool, generation: u64, failed: bool, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if generation != inner.generation {
            return;
        }
        match inner.state {
            State::Closed => {
                let (attempts, failures) = inner.window.add_then_sums(now, 1, u64::from(failed));
                let tripped = attempts >= u64::from(self.policy.min_requests)
                    && failures as f64 >= self.policy.failure_ratio * attempts as f64;
                if tripped {
                    self.transition(&mut inner, State::Open, now);
                }
            }
            State::HalfOpen if probe => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                if failed {
                    self.transition(&mut inner, State::Open, now);
                } else {
                    inner.probe_successes += 1;
                    if inner.probe_successes >= self.policy.half_open_requests {
                        self.transition(&mut inner, State::Closed, now);
                    }
                }
            }
            // Results of attempts admitted before the state changed carry no news.
            State::HalfOpen | State::Open => {}
        }
    }
}

impl Permit<'_> {
    /// Reports the attempt's result, known at `now` (the attempt's end, which its caller
    /// read for its own metrics: one clock read serves both).
    pub fn record(mut self, failed: bool, now: Instant) {
        self.recorded = true;
        self.breaker
            .record(self.probe, self.generation, failed, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            if let Ok(mut inner) = self.breaker.inner.lock() {
                if inner.generation == self.generation {
                    inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(min_requests: u32, half_open_requests: u32) -> Breaker {
        let policy = BreakerPolicy {
            failure_ratio: 0.5,
            min_requests,
            window: Duration::from_secs(10),
            open_duration: Duration::from_secs(5),
            half_open_requests,
        };
        let metrics = BreakerMetrics {
            state: IntGauge::new("s", "s").unwrap(),
            to: [
                IntCounter::new("c", "c").unwrap(),
                IntCounter::new("h", "h").unwrap(),
                IntCounter::new("o", "o").unwrap(),
            ],
        };
        Breaker::new("r", policy, metrics)
    }

    fn attempt(b: &Breaker, failed: bool) -> bool {
        match b.admit() {
            Some(p) => {
                p.record(failed, Instant::now());
                true
            }
            None => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_min_requests() {
        let b = breaker(10, 1);
        for _ in 0..9 {
            assert!(attempt(&b, true));
        }
        assert_eq!(b.state(), State::Closed);
        assert!(attempt(&b, true));
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.metrics.state.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_ratio_not_on_a_few_failures() {
        let b = breaker(10, 1);
        for i in 0..20 {
            assert!(attempt(&b, i % 3 == 0), "attempt {i}");
        }
        assert_eq!(b.state(), State::Closed, "a third failing is under 50%");
    }

    #[tokio::test(start_paused = true)]
    async fn open_rejects_then_half_open_probe_closes() {
        let b = breaker(4, 1);
        for _ in 0..4 {
            attempt(&b, true);
        }
        assert!(b.admit().is_none(), "open rejects");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.admit().expect("one probe");
        assert!(
            b.admit().is_none(),
            "only half_open_requests probes at once"
        );
        probe.record(false, Instant::now());
        assert_eq!(b.state(), State::Closed);
        assert!(attempt(&b, false));
        assert_eq!(b.metrics.to[0].get(), 1);
        assert_eq!(b.metrics.to[1].get(), 1);
        assert_eq!(b.metrics.to[2].get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_another_open_duration() {
        let b = breaker(2, 2);
        attempt(&b, true);
        attempt(&b, true);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(attempt(&b, false), "first probe");
        assert_eq!(b.state(), State::HalfOpen, "needs two good probes");
        assert!(attempt(&b, true), "second probe fails");
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_frees_its_slot() {
        let b = breaker(1, 1);
        attempt(&b, true);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.admit().expect("probe"));
        assert!(b.admit().is_some(), "slot freed by the dropped permit");
    }

    #[tokio::test(start_paused = true)]
    async fn retired_breaker_writes_no_metrics() {
        let b = breaker(2, 1);
        let permits = [b.admit().expect("closed"), b.admit().expect("closed")];
        b.retire();
        permits
            .into_iter()
            .for_each(|p| p.record(true, Instant::now()));
        assert_eq!(b.state(), State::Open, "still protects its own requests");
        assert_eq!(b.metrics.state.get(), 0, "the gauge is the live breaker's");
        assert_eq!(b.metrics.to[2].get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = breaker(4, 1);
        for _ in 0..3 {
            attempt(&b, true);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        attempt(&b, true);
        assert_eq!(b.state(), State::Closed, "only one attempt in the window");
    }
}
