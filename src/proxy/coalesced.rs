//! A cache miss joining the coalescing flights (`cache.coalesce`), from the proxy's side:
//! lead the flight, or follow it and turn its landing into an answer.
//!
//! A follower is answered from the store once the leader's response is stored, from the
//! stale copy or fallback when the leader failed, and otherwise fetches for itself: when
//! the answer may not be shared, or its body is too slow to wait for (`BODY_WAIT` after the
//! head). When the leader is abandoned (its client went away), the follower joins again,
//! so exactly one of the waiting followers becomes the new leader.

use http::Method;

use super::degrade::{self, Failed};
use super::failure::{Failure, Reason};
use super::forward::{Answer, Ctx};
use super::upstream::Head;
use super::{respond, Outcome, Proxy};
use crate::resilience::coalesce::{self, Flight, Join, Landing, BODY_WAIT};
use crate::resilience::store::Key;

/// How a cache miss joined the coalescing flights.
pub(super) enum Joined {
    /// Served from what the leader fetched (or from stale/fallback after it failed).
    Served(Box<Answer>),
    /// This request fetches for the others.
    Leader(Flight),
    /// No coalescing: on its own.
    Alone,
}

impl Proxy {
    /// Joins the coalescing flight for a cache miss, waiting for the leader if there is one.
    /// A request with a body has no key (`forward`), so it never joins: besides its body
    /// making the answer its own, a leader's upload goes at its client's pace.
    pub(super) async fn coalesce(&self, ctx: &Ctx<'_>, head: &Head, key: Option<&Key>) -> Joined {
        let Some(cache) = ctx.route.policy.cache.as_ref() else {
            return Joined::Alone;
        };
        let Some(key) = key else { return Joined::Alone };
        if !cache.coalesce || head.method != Method::GET {
            self.miss(ctx);
            return Joined::Alone;
        }
        loop {
            let rx = match ctx.state.coalescer.join(key) {
                Join::Leader(flight) => {
                    self.miss(ctx);
                    return Joined::Leader(flight);
                }
                Join::Follower(rx) => rx,
            };
            let waited = tokio::time::timeout_at(ctx.deadline, coalesce::wait(rx, BODY_WAIT));
            let Ok(landing) = waited.await else {
                // The deadline passed while waiting: answer as a timeout, without a doomed
                // attempt.
                self.miss(ctx);
                let answer = self.degraded(ctx, head, key, Reason::Failure(Failure::Timeout));
                return Joined::Served(Box::new(answer.unwrap_or_else(|| {
                    Answer::new(respond::failure(Failure::Timeout), Outcome::Error, 0)
                })));
            };
            match landing {
                // The leader's client went away: one of us takes over.
                Landing::Abandoned => continue,
                Landing::Failed(reason) => {
                    if let Some(answer) = self.degraded(ctx, head, key, reason) {
                        return Joined::Served(Box::new(answer));
                    }
                }
                Landing::Stored | Landing::Unshared | Landing::Pending | Landing::Headers => {}
            }
            if let Some(answer) = self.cached(ctx, head, Some(key), "coalesced") {
                return Joined::Served(Box::new(answer));
            }
            // The leader's answer could not be shared: fetch our own.
            self.miss(ctx);
            return Joined::Alone;
        }
    }

    fn miss(&self, ctx: &Ctx<'_>) {
        self.metrics
            .cache_requests
            .with_label_values(&[&ctx.route.name, "miss"])
            .inc();
    }

    /// The stale copy or fallback for a follower whose leader failed with `reason`.
    fn degraded(&self, ctx: &Ctx<'_>, head: &Head, key: &Key, reason: Reason) -> Option<Answer> {
        let failed = Failed {
            method: &head.method,
            stale_key: Some(key),
            headers: &head.headers,
            reason,
        };
        let (resp, outcome) = degrade::answer(ctx.route, ctx.state, &self.metrics, &failed)?;
        Some(Answer::new(resp, outcome, 0))
    }
}
