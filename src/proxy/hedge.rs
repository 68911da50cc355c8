//! Hedged first attempts (SPEC §7.2): when the first attempt has no response headers after
//! the route's delay, a second identical attempt starts, and whichever brings headers first
//! is used. The other is dropped, which closes its HTTP/1 connection or resets its HTTP/2
//! stream, so the upstream can stop working on it.
//!
//! Only the first attempt is hedged, at most once, and only for a request that may be sent
//! twice (method or idempotency key) whose body is held whole (or absent): a streamed body
//! can be read once. The hedge is attempt 2 in every respect: `x-outrigger-attempt: 2`, one
//! more in `x-outrigger-attempts`, a breaker leave of its own (no hedge while the breaker is
//! open), the route's rate-limit token, and `outrigger_upstream_attempts_total` when it
//! finishes. Retries still follow when both fail. An attempt that fails without headers
//! does not win: the other one is awaited.
//!
//! Why not `tower::hedge`: it wraps a whole `Service` call, clones the request itself and
//! keeps its own latency histogram and budget, so it would sit outside our attempt loop,
//! hide the hedge from the breaker, the retry budget, the per-attempt header and metrics,
//! and need a second copy of the body logic. Here the hedge is one more call to the same
//! `attempt` function the loop uses, which keeps all of that in one place.

use std::sync::Mutex;

use tokio::time::Instant;

use super::attempts::Attempts;
use super::failure::Failure;
use super::upstream::UpstreamResponse;
use crate::resilience::circuit::Permit;
use crate::resilience::hedge::HedgeState;
use crate::resilience::slots::Slot;

type Attempt = Result<UpstreamResponse, Failure>;

impl Attempts<'_> {
    /// The first attempt, hedged when the route hedges and the request allows it. Returns
    /// its result and how many attempts were made (1, or 2 with a hedge).
    pub(super) async fn first_attempt(
        &self,
        permit: Option<Permit<'_>>,
        slot: Option<Slot<'_>>,
    ) -> (Attempt, u32) {
        match self.hedge {
            None => (self.attempt(1, permit, slot).await, 1),
            // Boxed: inline, every request of every route would carry (and hyper keep per
            // connection, even idle) room for the hedged path's state beside the attempt's,
            // and copy it at each move. Its second attempt is boxed apart (`hedged`), so
            // this box holds one attempt only. Built in its box, not copied there
            // (`edge::proxy`).
            Some(hedge) => {
                let room = Box::new_uninit();
                Box::into_pin(Box::write(room, self.hedged(hedge, permit, slot))).await
            }
        }
    }

    async fn hedged(
        &self,
        hedge: &Mutex<HedgeState>,
        permit: Option<Permit<'_>>,
        slot: Option<Slot<'_>>,
    ) -> (Attempt, u32) {
        let started = Instant::now();
        let delay = with(hedge, |h| {
            h.record_first_attempt(started);
            h.delay(started)
        })
        .flatten();
        // Pinned before any branch awaits it: awaited by value in one branch, it would be
        // moved into a second slot of this future as large as itself.
        let first = self.attempt(1, permit, slot);
        tokio::pin!(first);
        let Some(delay) = delay.filter(|_| self.may_hedge()) else {
            let result = first.await;
            sample(hedge, started, &result);
            return (result, 1);
        };
        // The hedge's timer is a reused one (`try_timer`): nearly every first attempt
        // answers before it, so it is armed on every request and almost never fires.
        let hedge_at = (started + delay).min(self.deadline);
        if let Ok(result) = super::try_timer::timeout_at(hedge_at, first.as_mut()).await {
            sample(hedge, started, &result);
            return (result, 1);
        }
        let Some((permit, slot)) = self.hedge_leave(hedge) else {
            self.count_hedge("skipped");
            let result = first.await;
            sample(hedge, started, &result);
            return (result, 1);
        };
        // Boxed: made only when the delay passed (rare), and a future's size is that of its
        // largest state: inline, every request of a hedged route would carry (and hyper
        // keep per connection) room for a second attempt.
        let mut second = Box::pin(self.attempt(2, permit, slot));
        // The first headers win; a failure without headers waits for the other attempt.
        let (result, hedge_won) = tokio::select! {
            r = &mut first => match r {
                Ok(resp) => (Ok(resp), false),
                Err(_) => ((&mut second).await, true),
            },
            r = &mut second => match r {
                Ok(resp) => (Ok(resp), true),
                Err(_) => ((&mut first).await, false),
            },
        };
        // The original took at least this long: a lower bound keeps the p95 honest.
        sample(hedge, started, &result);
        let won = hedge_won && result.is_ok();
        self.count_hedge(if won { "won" } else { "lost" });
        (result, 2)
    }

    /// A hedge needs a request that may be sent twice and a body that can be.
    fn may_hedge(&self) -> bool {
        self.may_resend
            && self.route.policy.retry.attempts > 1
            && self.body.upload().is_none()
            && self.body.for_attempt().is_some()
    }

    /// Leave for a hedge: `max_ratio`, the breaker, a free concurrency slot (never waited
    /// for: a hedge is extra load) and the rate limit must all allow it.
    #[allow(clippy::type_complexity)]
    fn hedge_leave(
        &self,
        hedge: &Mutex<HedgeState>,
    ) -> Option<(Option<Permit<'_>>, Option<Slot<'_>>)> {
        let permit = self.admit().ok()?;
        let slot = match self.slots {
            Some(slots) => Some(slots.try_acquire()?),
            None => None,
        };
        if !with(hedge, |h| h.try_hedge(Instant::now()))? {
            return None;
        }
        if let Some((limiter, key)) = self.limiter {
            limiter.take(key).ok()?;
        }
        Some((permit, slot))
    }

    fn count_hedge(&self, result: &str) {
        self.metrics
            .hedges
            .with_label_values(&[&self.route.name, result])
            .inc();
    }
}

fn with<T>(hedge: &Mutex<HedgeState>, f: impl FnOnce(&mut HedgeState) -> T) -> Option<T> {
    hedge.lock().ok().map(|mut h| f(&mut h))
}

/// Feeds `delay: auto` with the time to headers of a successful first attempt.
fn sample(hedge: &Mutex<HedgeState>, started: Instant, result: &Attempt) {
    if result.as_ref().is_ok_and(|r| !r.status().is_server_error()) {
        with(hedge, |h| h.record_latency(started.elapsed()));
    }
}
