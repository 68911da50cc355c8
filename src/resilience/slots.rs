//! A route's slots to the upstream: the adaptive limit of [`concurrency`] put to work.
//!
//! Every attempt (first, retry or hedge) holds a [`Slot`] from before it is sent until its
//! response headers arrive or it fails; the slot then tells the controller how long that
//! took and how it ended, and gives its place to the next waiter. A slot dropped without
//! [`Slot::finish`] (the client went away mid-attempt) is released without teaching the
//! controller anything.
//!
//! A first attempt may wait up to `queue_timeout` for a place (`acquire`); a retry or hedge
//! only takes a free one (`try_acquire`): it is optional, and the answer in hand is better
//! than a queue. The limit and the in-flight count share one mutex, held for a few
//! arithmetic operations; waiters park on a `Notify` woken once per released slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use super::concurrency::{Bounds, Controller, Outcome};
use crate::config::ConcurrencyPolicy;

/// The metrics one route's limit writes.
pub struct SlotMetrics {
    pub limit: IntGauge,
    pub in_flight: IntGauge,
    pub rejected: IntCounter,
}

/// One route's concurrency limit.
pub struct ConcurrencyLimit {
    policy: ConcurrencyPolicy,
    state: Mutex<State>,
    /// Woken once per released slot (and once more when the limit grew).
    freed: Notify,
    metrics: SlotMetrics,
    /// Set when a reload replaced this limit: its slots still release, its gauges stay quiet.
    retired: AtomicBool,
}

struct State {
    controller: Controller,
    in_flight: usize,
}

/// Leave for one attempt to be in flight; released on drop.
pub struct Slot<'a> {
    owner: &'a ConcurrencyLimit,
    started: Instant,
    /// Attempts in flight when this one started, itself included.
    in_flight: usize,
    outcome: Outcome,
    /// When the attempt ended, if its caller read the clock already (`finish`).
    ended: Option<Instant>,
}

impl ConcurrencyLimit {
    pub fn new(policy: ConcurrencyPolicy, metrics: SlotMetrics) -> ConcurrencyLimit {
        let limit = ConcurrencyLimit {
            state: Mutex::new(State {
                controller: Controller::new(policy.bounds),
                in_flight: 0,
            }),
            policy,
            freed: Notify::new(),
            metrics,
            retired: AtomicBool::new(false),
        };
        limit.metrics.limit.set(policy.bounds.initial as i64);
        limit.metrics.in_flight.set(0);
        limit
    }

    pub fn policy(&self) -> &ConcurrencyPolicy {
        &self.policy
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.lock().controller.limit()
    }

    /// Stops writing gauges: a reload replaced this limit.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// A slot for a first attempt, waiting up to `queue_timeout`; `None` (counted in
    /// `outrigger_concurrency_rejected_total`) when none came free in time.
    pub async fn acquire(&self) -> Option<Slot<'_>> {
        if let Some(slot) = self.try_acquire() {
            return Some(slot);
        }
        let until = tokio::time::Instant::now() + self.policy.queue_timeout;
        while !self.policy.queue_timeout.is_zero() {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a release between the look and the wait wakes us.
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return Some(slot);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                break;
            }
        }
        self.metrics.rejected.inc();
        None
    }

    /// A free slot, if there is one now.
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        let mut state = self.lock();
        if state.in_flight >= state.controller.limit() {
            return None;
        }
        state.in_flight += 1;
        let in_flight = state.in_flight;
        self.publish(&state);
        Some(Slot {
            owner: self,
            started: now(),
            in_flight,
            outcome: Outcome::Ignored,
            ended: None,
        })
    }

    fn release(&self, slot: &Slot<'_>) {
        let mut state = self.lock();
        let before = state.controller.limit();
        let now = slot.ended.unwrap_or_else(now);
        state
            .controller
            .record(slot.started, now, slot.in_flight, slot.outcome);
        state.in_flight = state.in_flight.saturating_sub(1);
        let grew = state.controller.limit() > before;
        self.publish(&state);
        drop(state);
        self.freed.notify_one();
        if grew {
            self.freed.notify_one();
        }
    }

    fn publish(&self, state: &State) {
        if !self.retired.load(Ordering::Relaxed) {
            self.metrics.limit.set(state.controller.limit() as i64);
            self.metrics.in_flight.set(state.in_flight as i64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain numbers: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bounds this limit was built with.
    pub fn bounds(&self) -> Bounds {
        self.policy.bounds
    }
}

impl Slot<'_> {
    /// Releases the slot and teaches the controller how the attempt ended, and when (the
    /// caller's reading of tokio's clock, so the slot need not take another).
    pub fn finish(mut self, outcome: Outcome, ended: Instant) {
        self.outcome = outcome;
        self.ended = Some(ended);
    }

    /// Starts the clock again: a retry's slot is taken before its backoff, and the wait is
    /// not the upstream's latency.
    pub fn restarted(mut self) -> Self {
        self.started = now();
        self
    }
}

/// The time on tokio's clock (the same as the system's, except in tests with paused time),
/// which is also the clock of the end times callers give [`Slot::finish`].
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.release(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(initial: usize, queue_timeout: Duration) -> ConcurrencyLimit {
        let bounds = Bounds {
            initial,
            min: 1,
            max: 10,
        };
        let metrics = SlotMetrics {
            limit: IntGauge::new("l", "l").unwrap(),
            in_flight: IntGauge::new("f", "f").unwrap(),
            rejected: IntCounter::new("r", "r").unwrap(),
        };
        ConcurrencyLimit::new(
            ConcurrencyPolicy {
                bounds,
                queue_timeout,
            },
            metrics,
        )
    }

    #[tokio::test]
    async fn sheds_at_once_without_a_queue() {
        let l = limit(2, Duration::ZERO);
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.metrics.in_flight.get(), 2);
        assert!(l.acquire().await.is_none());
        assert_eq!(l.metrics.rejected.get(), 1);
        drop(a);
        assert!(l.acquire().await.is_some(), "a dropped slot is free again");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_next_released_slot() {
        let l = limit(1, Duration::from_secs(5));
        let a = l.acquire().await.unwrap();
        let waiter = l.acquire();
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.finish(Outcome::Success, now());
        };
        let (slot, ()) = tokio::join!(waiter, release);
        assert!(slot.is_some());
        assert_eq!(l.metrics.rejected.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_queue_timeout() {
        let l = limit(1, Duration::from_millis(30));
        let _a = l.acquire().await.unwrap();
        let started = Instant::now();
        assert!(l.acquire().await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(l.metrics.rejected.get(), 1);
    }
}
