//! The attempt loop: send, classify, decide whether to try again, back off, repeat.
//!
//! Read top to bottom it is the retry policy of SPEC §2: per-try timeout clamped to the
//! overall deadline; the outcome classified from the response head (never after a byte went
//! to the client, because the loop returns before the body is touched); then, in order, the
//! checks that may veto a retry: attempts left, method or idempotency key, a body that can
//! be sent again, Retry-After, the deadline, the budget. A vetoed retry is counted in
//! `outrigger_retries_skipped_total` and logged at debug, never silent.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::body::Prepared;
use super::failure::{Failure, Reason};
use super::upstream::{Head, HttpClient, UpstreamResponse};
use crate::config::Route;
use crate::metrics::{status_class, Metrics};
use crate::resilience::budget::RetryBudget;
use crate::resilience::circuit::{Breaker, Permit};
use crate::resilience::concurrency::Outcome;
use crate::resilience::rate_limit::RateLimiter;
use crate::resilience::slots::{ConcurrencyLimit, Slot};
use crate::resilience::{backoff, retry};

/// What a retry goes ahead with: its backoff, the breaker's leave and a concurrency slot.
type Retry<'p, 'a> = (Duration, Option<Permit<'p>>, Option<Slot<'a>>);

/// How the attempts ended.
pub enum Ended {
    /// The upstream answered; this response goes to the client (it may be a final 5xx).
    Answered(UpstreamResponse),
    /// No usable answer.
    Failed(Failure),
}

/// The result of the loop and how many attempts it took.
pub struct Finished {
    pub ended: Ended,
    pub attempts: u32,
    /// Why the last attempt failed, if it did (`Answered` with a retryable status included).
    pub reason: Option<Reason>,
}

impl Finished {
    /// A request that never reached the upstream.
    pub fn without_attempt(failure: Failure) -> Finished {
        Finished {
            ended: Ended::Failed(failure),
            attempts: 0,
            reason: Some(Reason::Failure(failure)),
        }
    }
}

/// Everything one request's attempts need.
pub struct Attempts<'a> {
    pub client: &'a HttpClient,
    pub route: &'a Route,
    pub budget: &'a RetryBudget,
    /// The route's breaker, when enabled.
    pub breaker: Option<&'a Breaker>,
    /// The route's rate limiter and this request's bucket: retries take tokens too.
    pub limiter: Option<(&'a RateLimiter, &'a [u8])>,
    /// The route's concurrency limit: every attempt holds a slot until its headers arrive.
    pub slots: Option<&'a ConcurrencyLimit>,
    pub metrics: &'a Metrics,
    /// The route's resolved metric series.
    pub series: &'a super::route_metrics::RouteMetrics,
    pub head: &'a Head,
    pub body: Prepared,
    /// Whether the method or an idempotency key allows sending the request again.
    pub may_resend: bool,
    pub deadline: Instant,
    /// The route's hedging state, when it hedges (`proxy::hedge`).
    pub hedge: Option<&'a std::sync::Mutex<crate::resilience::hedge::HedgeState>>,
}

impl<'a> Attempts<'a> {
    /// Runs attempts until one is final. Borrows: an `async fn` keeps its arguments twice
    /// (as passed and as moved into its body), so a by-value `self` cost its size again in
    /// every request's future.
    pub async fn run(&self) -> Finished {
        let policy = &self.route.policy.retry;
        // The wait for a slot ends at `queue_timeout` or at the request's deadline (route
        // timeout, capped by `grpc-timeout`), whichever comes first.
        let Ok(Ok(mut slot)) = tokio::time::timeout_at(self.deadline, self.slot()).await else {
            // No slot in time: shed like a request over the process limit.
            return Finished::without_attempt(Failure::Overloaded);
        };
        let Ok(mut permit) = self.admit() else {
            // Open: the upstream is not asked at all.
            crate::otel::event("circuit-open");
            return Finished::without_attempt(Failure::CircuitOpen);
        };
        self.budget.record_request();
        let mut n: u32 = 1;
        // Attempts the first step made: 1, or 2 when it was hedged (`proxy::hedge`).
        let mut first_made = 1;
        loop {
            let retry = n > first_made;
            crate::otel::attempt_start(n);
            let result = if n == 1 {
                let (result, made) = self.first_attempt(permit, slot).await;
                (n, first_made) = (made, made);
                result
            } else {
                self.attempt(n, permit, slot).await
            };
            let reason = match &result {
                Ok(resp) if retry::retries_status(policy, resp.status()) => {
                    Some(Reason::Status(resp.status()))
                }
                Ok(resp) => super::grpc::retry_reason(policy, resp),
                Err(f) => Some(Reason::Failure(*f)),
            };
            if retry && !result.as_ref().is_err_and(|f| f.is_client()) {
                // What the adaptive budget learns from: did this retry end the request well?
                self.budget.record_retry(reason.is_none());
            }
            let Some(reason) = reason else {
                crate::otel::attempt_end(&result, None, None);
                return self.finish(result, n, n > first_made, None);
            };
            let wanted = match &result {
                Ok(_) => true,
                Err(f) => retry::retries_failure(policy, *f),
            };
            let next = if wanted {
                self.next_backoff(n, &result)
            } else {
                Err(None)
            };
            match next {
                Ok((wait, next_permit, next_slot)) => {
                    crate::otel::attempt_end(&result, Some(&reason), Some(wait));
                    let backoff_ms = wait.as_millis() as u64;
                    warn!(route = %self.route.name, attempt = n, reason = %reason, backoff_ms, "upstream attempt failed; retrying");
                    self.series
                        .retry(self.metrics, &self.route.name, reason)
                        .inc();
                    drop(result);
                    tokio::time::sleep(wait).await;
                    slot = next_slot.map(Slot::restarted);
                    permit = next_permit;
                    n += 1;
                }
                Err(skipped) => {
                    crate::otel::attempt_end(&result, Some(&reason), None);
                    warn!(route = %self.route.name, attempt = n, reason = %reason, "upstream attempt failed; not retrying");
                    if let Some(why) = skipped {
                        self.skipped(n, why);
                    }
                    return self.finish(result, n, n > first_made, Some(reason));
                }
            }
        }
    }

    /// Leave from the breaker for one attempt: `Ok(None)` without a breaker, `Err` while open.
    pub(super) fn admit(&self) -> Result<Option<Permit<'_>>, ()> {
        match self.breaker {
            None => Ok(None),
            Some(breaker) => breaker.admit().map(Some).ok_or(()),
        }
    }

    /// A concurrency slot for the first attempt, waiting up to `queue_timeout`: `Ok(None)`
    /// without a limit, `Err` when none came free.
    async fn slot(&self) -> Result<Option<Slot<'a>>, ()> {
        match self.slots {
            None => Ok(None),
            Some(slots) => slots.acquire().await.map(Some).ok_or(()),
        }
    }

    fn skipped(&self, n: u32, why: &'static str) {
        debug!(route = %self.route.name, attempt = n, skipped = why, "retry skipped");
        self.metrics
            .retries_skipped
            .with_label_values(&[&self.route.name, why])
            .inc();
    }

    /// One attempt, with its own timeout and metrics; its result goes to the breaker.
    pub(super) async fn attempt(
        &self,
        n: u32,
        permit: Option<Permit<'_>>,
        slot: Option<Slot<'_>>,
    ) -> Result<UpstreamResponse, Failure> {
        let Some(body) = self.body.for_attempt() else {
            // Guarded by `next_backoff`: an attempt is only made when the body is available.
            return Err(Failure::Reset);
        };
        let started = Instant::now();
        let result = match self.send(n, body, started).await {
            Err(failure) => Err(failure),
            Ok(Err(e)) => {
                let failure = Failure::from_client_error(&e);
                let error = super::failure::chain(&e);
                if failure == Failure::BadResponse {
                    // Certificate and protocol errors need an operator: say what it was.
                    warn!(route = %self.route.name, attempt = n, error, "upstream answered badly");
                } else {
                    debug!(route = %self.route.name, attempt = n, error, "upstream request error");
                }
                Err(failure)
            }
            Ok(Ok(resp)) => Ok(resp),
        };
        // One clock read for the attempt's duration, its concurrency slot and the breaker's
        // window.
        let ended = Instant::now();
        if let Some(slot) = slot {
            let outcome = result.as_ref().map_or_else(
                |f| Outcome::of_failure(*f),
                |r| Outcome::of_status(r.status()),
            );
            slot.finish(outcome, ended.into_std());
        }
        if result.as_ref().is_err_and(|f| f.is_client()) {
            // The client's body broke, not the upstream: nothing to count against it.
            return result;
        }
        let label = match &result {
            Ok(resp) => status_class(resp.status()),
            Err(f) => f.reason(),
        };
        if let Some(permit) = permit {
            let failed = result.as_ref().map_or(true, |r| {
                r.status().is_server_error() || super::grpc::breaker_failure(r)
            });
            permit.record(failed, ended);
        }
        let route = &self.route.name;
        self.series.attempt(self.metrics, route, label).inc();
        self.series
            .attempt_duration(self.metrics, route)
            .observe((ended - started).as_secs_f64());
        result
    }

    /// Sends attempt `n`, begun at `started`, and waits for its response head.
    /// `per_try_timeout` starts once the request body has been handed over: an upload in
    /// progress is the client's time, and pushes the deadline back (`upload::deadline`); a
    /// client that stalls its upload for the route's `timeout` fails as the client's
    /// (`ClientTimeout`), never the upstream's; an upstream that takes no body bytes for
    /// `per_try_timeout` is a `Timeout`.
    async fn send(
        &self,
        n: u32,
        body: super::body::UpstreamBody,
        started: Instant,
    ) -> Result<Result<UpstreamResponse, super::upstream::ClientError>, Failure> {
        let per_try = self.route.policy.retry.per_try_timeout;
        // In a block: the request moves into the client's future, and a binding of it
        // left in this scope would keep its 272 bytes in this future across the `await`.
        let request = {
            let mut request = self.head.request(n, body);
            crate::otel::inject(request.headers_mut());
            self.client.request(request)
        };
        let Some(upload) = self.body.upload() else {
            // A body held whole (or none) is handed over at once: one timer, the sooner of
            // the per-try timeout and the deadline, reused from an earlier attempt
            // (`try_timer`).
            let until = (started + per_try).min(self.deadline);
            return super::try_timer::timeout_at(until, request)
                .await
                .map_err(|_| Failure::Timeout);
        };
        // Boxed: three futures at once, which only a streamed upload needs; inline, every
        // request's future would carry their room (and move it at each level above). Built
        // in its box, not copied there (`edge::proxy`).
        let room = Box::new_uninit();
        Box::into_pin(Box::write(
            room,
            self.send_streaming(request, upload, per_try),
        ))
        .await
    }

    /// `send` for a body still streaming from the client.
    async fn send_streaming(
        &self,
        request: impl std::future::Future<
            Output = Result<UpstreamResponse, super::upstream::ClientError>,
        >,
        upload: &super::upload::Upload,
        per_try: Duration,
    ) -> Result<Result<UpstreamResponse, super::upstream::ClientError>, Failure> {
        let upload = Some(upload);
        let per_try_timer = async {
            if let Some(upload) = upload {
                upload.handed_over().await;
            }
            tokio::time::sleep(per_try).await;
        };
        tokio::select! {
            biased;
            result = request => Ok(result),
            () = per_try_timer => Err(Failure::Timeout),
            failure = super::upload::deadline(upload, self.deadline, self.route.policy.timeout, per_try) => {
                Err(failure)
            }
        }
    }

    /// The wait before retry `n` and the breaker's leave and concurrency slot for it (taken
    /// now, so a breaker that opens or a limit that fills during the backoff cannot swallow
    /// the answer in hand), or why there is no retry (`None`: nothing to count).
    fn next_backoff(
        &self,
        n: u32,
        result: &Result<UpstreamResponse, Failure>,
    ) -> Result<Retry<'_, 'a>, Option<&'static str>> {
        let policy = &self.route.policy.retry;
        if n >= policy.attempts {
            return Err(None);
        }
        let nothing_sent = matches!(result, Err(Failure::ConnectFailure));
        if !self.may_resend && !nothing_sent {
            return Err(Some("method"));
        }
        if self.body.oversized() {
            return Err(Some("body-too-large"));
        }
        if self.body.for_attempt().is_none() {
            // A streamed body that started flowing: only reachable for a non-resendable
            // request, already refused above unless nothing was sent.
            return Err(Some("method"));
        }
        let mut wait = backoff::delay(&policy.backoff, n, fastrand::f64());
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if let Ok(resp) = result {
            if policy.respect_retry_after {
                if let Some(asked) = retry::retry_after(resp.status(), resp.headers()) {
                    if asked >= remaining || asked > policy.backoff.max {
                        return Err(Some("deadline"));
                    }
                    wait = wait.max(asked);
                }
            }
        }
        if wait >= remaining {
            return Err(Some("deadline"));
        }
        let permit = self.admit().map_err(|()| Some("circuit-open"))?;
        // No free slot: the limit is a budget the backend set, as the rate limit is.
        let slot = match self.slots {
            Some(slots) => Some(slots.try_acquire().ok_or(Some("budget"))?),
            None => None,
        };
        if !self.budget.try_retry(policy.attempts) {
            return Err(Some("budget"));
        }
        if let Some((limiter, key)) = self.limiter {
            if limiter.take(key).is_err() {
                // The rate limit is a budget the backend set: skipped, counted as `budget`.
                return Err(Some("budget"));
            }
        }
        Ok((wait, permit, slot))
    }

    fn finish(
        &self,
        result: Result<UpstreamResponse, Failure>,
        attempts: u32,
        retried: bool,
        reason: Option<Reason>,
    ) -> Finished {
        if retried {
            let label = if reason.is_none() {
                "success"
            } else {
                "failure"
            };
            self.metrics
                .retried_requests
                .with_label_values(&[&self.route.name, label])
                .inc();
        }
        let ended = match result {
            Ok(resp) => Ended::Answered(resp),
            Err(f) => Ended::Failed(f),
        };
        Finished {
            ended,
            attempts,
            reason,
        }
    }
}
