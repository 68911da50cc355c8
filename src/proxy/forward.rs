//! Forwarding one admitted request, in the order things happen:
//!
//! 1. a fresh cached copy answers at once (`cache`);
//! 2. concurrent misses for the same key wait for one leader (`cache.coalesce`);
//! 3. the head is rewritten and the body prepared (kept for replay or streamed once);
//!    an injected fault (`fault`, for drills) may abort or delay the request here;
//! 4. the active health check may already know the upstream is down: stale or fallback
//!    answer at once;
//! 5. the rate limit takes a token for the first attempt (429 without one);
//! 6. the attempts run (breaker, per-try timeout, retries, budget);
//! 7. a good answer streams back, copied into the store when it may be kept; a failure gets
//!    the stale copy, the fallback, the upstream's own final response or a proxy error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, AGE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use tokio::time::Instant;

use super::attempts::{Attempts, Ended};
use super::body::{self, ResponseBody, Tee};
use super::coalesced::Joined;
use super::degrade::{self, Failed};
use super::failure::{Failure, Reason};
use super::runtime::{RouteState, Runtime};
use super::upstream::Head;
use super::{headers, respond, Outcome, Proxy};
use crate::config::{RateKey, Route};
use crate::resilience::circuit::State;
use crate::resilience::coalesce::Flight;
use crate::resilience::fault::{self, Faults};
use crate::resilience::retry;
use crate::resilience::store::{self, Key, ResponseStore, Vary};
use crate::server::watchdog::Reading;
use crate::shared;

/// Header marking an answer from the fresh cache.
pub static CACHE: HeaderName = HeaderName::from_static("x-outrigger-cache");

/// What one request works with.
pub struct Ctx<'a> {
    pub rt: &'a Runtime,
    pub route: &'a Route,
    pub state: &'a RouteState,
    pub peer: SocketAddr,
    pub request_id: &'a HeaderValue,
    pub deadline: Instant,
    /// Whether the request is a gRPC call (`proxy::grpc::is_grpc`), decided once.
    pub grpc: bool,
}

impl Ctx<'_> {
    /// The client's head rewritten for the upstream; `None` for one that cannot be (answer
    /// it with [`Answer::bad_head`]).
    pub(super) fn head(&self, parts: &mut http::request::Parts) -> Option<Head> {
        self.rt.head(parts, self.peer, self.request_id).ok()
    }
}

/// A response with how it came about.
pub struct Answer {
    pub resp: Response<ResponseBody>,
    pub outcome: Outcome,
    pub attempts: u32,
}

/// Header on a response shaped by an injected fault: `abort` or `delay`.
pub static FAULT: HeaderName = HeaderName::from_static("x-outrigger-fault");

impl Answer {
    /// Marks a response shaped by an injected fault (in place: an answer is about 300
    /// bytes, and each move copies it).
    fn mark_fault(&mut self, kind: &'static str) {
        let value = HeaderValue::from_static(kind);
        self.resp.headers_mut().insert(FAULT.clone(), value);
    }

    pub(super) fn new(resp: Response<ResponseBody>, outcome: Outcome, attempts: u32) -> Answer {
        Answer {
            resp,
            outcome,
            attempts,
        }
    }

    /// The 400 for a request head that cannot be forwarded.
    pub(super) fn bad_head() -> Answer {
        let message = "the request target or its Host is not valid";
        Answer::refused(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn refused(status: StatusCode, message: &str) -> Answer {
        Answer::new(respond::refused(status, message), Outcome::Error, 0)
    }
}

impl Proxy {
    /// Forwards an admitted request; every outcome is a response.
    ///
    /// The head is rewritten before the `async` block, which then holds the head and body
    /// only: an `async fn` would keep the whole request twice (as passed and as moved into
    /// its body) and what is left of the client's head across every `await`.
    pub(super) fn forward<'p>(
        &'p self,
        ctx: &'p Ctx<'p>,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Answer> + 'p {
        let (mut parts, body) = req.into_parts();
        // Goes with the body: the connection is not parked while the body is unread.
        let reading = parts.extensions.remove::<Reading>();
        // The head is rewritten first: the store key, `Vary` and the idempotency key are
        // all read from exactly what the upstream will receive.
        let head = ctx.head(&mut parts);
        drop(parts);
        let has_body = !body.is_end_stream();
        async move {
            // Borrowed, not moved out of the `Option`: a move would keep the head twice in
            // this future (as captured and as the local), and copy it.
            let Some(head) = &head else {
                return Answer::bad_head();
            };
            // A request with a body (not known to be empty) has no store key: the key is
            // the head's, and a body may make the answer another (a search sent as a GET
            // with a body), so it is neither answered from a copy, nor stored, nor
            // coalesced (a leader's upload would hold its followers at its client's pace).
            let key = if has_body {
                None
            } else {
                store_key(ctx.state, head)
            };
            if let Some(answer) = self.cached(ctx, head, key.as_deref(), "hit") {
                return answer;
            }
            // `cache.scope: shared`: a local miss looks in Redis, within `shared.timeout`.
            if shared::fill_fresh(ctx.state.store.as_ref(), key.as_deref()).await {
                if let Some(answer) = self.cached(ctx, head, key.as_deref(), "hit") {
                    return answer;
                }
            }
            let flight = match self.coalesce(ctx, head, key.as_ref()).await {
                Joined::Served(answer) => return *answer,
                Joined::Leader(flight) => Some(flight),
                Joined::Alone => None,
            };
            // Faults are rolled only for requests that would reach the upstream: a cache hit
            // is not an outage rehearsal.
            let faults = match &ctx.route.policy.fault {
                Some(policy) => fault::roll(policy, fastrand::f64),
                None => Faults::default(),
            };
            let kind = if faults.abort.is_some() {
                Some("abort")
            } else {
                faults.delay.map(|_| "delay")
            };
            if let Some(kind) = kind {
                self.metrics
                    .faults_injected
                    .with_label_values(&[&ctx.route.name, kind])
                    .inc();
            }
            let mut answer = self
                .forward_upstream(ctx, head, (body, reading), key, flight, faults)
                .await;
            if let Some(kind) = kind {
                answer.mark_fault(kind);
            }
            answer
        }
    }

    /// Everything after the cache: body, fault, probe gate, rate limit, attempts. The head
    /// is borrowed: an `async fn` keeps a by-value argument twice in its future.
    async fn forward_upstream(
        &self,
        ctx: &Ctx<'_>,
        head: &Head,
        (body, reading): (Incoming, Option<Reading>),
        key: Option<Key>,
        flight: Option<Flight>,
        faults: Faults,
    ) -> Answer {
        let store = ctx.state.store.as_ref();
        let may_resend = retry::may_resend(&ctx.route.policy.retry, &head.method, &head.headers);
        let limit = ctx.rt.config.limits.request_body_buffer;
        // Over HTTP/2 a refused stream may be resent whatever the method, so small bodies
        // are kept for that case too.
        // Not for gRPC: a streaming call's body may never end while it waits for answers.
        let keep = may_resend || (ctx.rt.config.upstream.http2 && !ctx.grpc);
        let prepared = body::prepare(body, reading, &head.headers, keep, limit);
        let body = match tokio::time::timeout_at(ctx.deadline, prepared).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                return Answer::refused(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            }
            Err(_) => {
                return Answer::refused(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )
            }
        };
        // The attempts borrow the head: what follows reads the same method and headers.
        let request_headers = &head.headers;
        let method = &head.method;
        let failed = |reason| Failed {
            method,
            stale_key: key.as_deref(),
            headers: request_headers,
            reason,
        };

        if let Some(status) = faults.abort {
            // An injected outage: treated as if the upstream had answered this status, so
            // stale copies and fallbacks are rehearsed too.
            let reason = Reason::Status(status);
            tell(&flight, reason);
            return match degrade::answer(ctx.route, ctx.state, &self.metrics, &failed(reason)) {
                Some((resp, outcome)) => Answer::new(resp, outcome, 0),
                None => Answer::new(
                    respond::refused(status, "injected fault"),
                    Outcome::Error,
                    0,
                ),
            };
        }
        if let Some(delay) = faults.delay {
            tokio::time::sleep_until((Instant::now() + delay).min(ctx.deadline)).await;
        }
        if self.health.is_down() {
            // The probe already knows: answer from stale or fallback instead of waiting for
            // a connect timeout. Without either, still try: a wrong probe must not take
            // down a route that works.
            let reason = Reason::Failure(Failure::CircuitOpen);
            shared::fill_stale(store, key.as_deref(), request_headers).await;
            if let Some((resp, outcome)) =
                degrade::answer(ctx.route, ctx.state, &self.metrics, &failed(reason))
            {
                tell(&flight, reason);
                return Answer::new(resp, outcome, 0);
            }
        }
        let limiter = ctx.state.limiter.as_deref();
        let limiter_key = match self.take_token(ctx, request_headers).await {
            Ok(key) => key,
            Err(wait) => {
                let reason = Reason::Failure(Failure::RateLimited);
                // The route's one bucket refuses the followers too: tell them. A client's
                // own key does not: let go of the flight (`Abandoned`), so one of them
                // leads instead, under its own limit.
                let route_wide = limiter.is_some_and(|l| l.policy().key == RateKey::Route);
                if route_wide {
                    tell(&flight, reason);
                } else {
                    drop(flight);
                }
                return match degrade::answer(ctx.route, ctx.state, &self.metrics, &failed(reason)) {
                    Some((resp, outcome)) => Answer::new(resp, outcome, 0),
                    None => Answer::new(rate_limited(wait), Outcome::Error, 0),
                };
            }
        };

        let attempts = Attempts {
            client: &ctx.rt.client,
            route: ctx.route,
            budget: &ctx.state.budget,
            breaker: ctx.state.breaker.as_deref(),
            limiter: limiter.zip(limiter_key.as_deref()),
            slots: ctx.state.concurrency.as_deref(),
            metrics: &self.metrics,
            series: &ctx.state.series,
            head,
            body,
            may_resend,
            deadline: ctx.deadline,
            hedge: ctx.state.hedge.as_deref(),
        };
        let finished = attempts.run().await;
        let n = finished.attempts;
        let reason = match finished.ended {
            Ended::Answered(resp) if !is_error(resp.status()) => {
                let tee = tee(store, key, method, request_headers, &resp, flight);
                let resp = resp.map(|b| match tee {
                    Some(tee) => ResponseBody::upstream_tee(b, tee),
                    None => ResponseBody::upstream(b),
                });
                return Answer::new(resp, Outcome::Upstream, n);
            }
            Ended::Answered(ref resp) => Reason::Status(resp.status()),
            Ended::Failed(f) if f.is_client() => {
                return Answer::new(respond::failure(f), Outcome::Error, n);
            }
            Ended::Failed(f) => Reason::Failure(f),
        };
        tell(&flight, reason);
        shared::fill_stale(store, key.as_deref(), request_headers).await;
        if let Some((resp, outcome)) =
            degrade::answer(ctx.route, ctx.state, &self.metrics, &failed(reason))
        {
            return Answer::new(resp, outcome, n);
        }
        match finished.ended {
            Ended::Answered(resp) => {
                Answer::new(resp.map(ResponseBody::upstream), Outcome::Upstream, n)
            }
            Ended::Failed(f) => Answer::new(respond::failure(f), Outcome::Error, n),
        }
    }

    /// Takes the rate-limit token for a request's first attempt: `Ok` with the request's
    /// bucket (retries take tokens from it too; `None` without a limit), `Err` with the wait
    /// for the next token, counted. An open circuit turns the request away without a token:
    /// it will not reach the upstream.
    pub(super) async fn take_token(
        &self,
        ctx: &Ctx<'_>,
        headers: &HeaderMap,
    ) -> Result<Option<Vec<u8>>, Duration> {
        let Some(limiter) = ctx.state.limiter.as_deref() else {
            return Ok(None);
        };
        let key = limiter.key(ctx.peer.ip(), headers);
        let open = ctx
            .state
            .breaker
            .as_ref()
            .is_some_and(|b| b.state() == State::Open);
        if !open {
            if let Err(wait) = limiter.admit(&key).await {
                self.metrics
                    .rate_limited
                    .with_label_values(&[&ctx.route.name])
                    .inc();
                return Err(wait);
            }
        }
        Ok(Some(key))
    }

    /// A fresh copy from the route's cache, counted with `result`.
    pub(super) fn cached(
        &self,
        ctx: &Ctx<'_>,
        head: &Head,
        key: Option<&[u8]>,
        result: &str,
    ) -> Option<Answer> {
        ctx.route.policy.cache.as_ref()?;
        let (stored, age) = ctx.state.store.as_ref()?.fresh(key?, &head.headers)?;
        let body = if head.method == Method::HEAD {
            Default::default()
        } else {
            stored.body.clone()
        };
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.headers_mut() = stored.headers.clone();
        resp.headers_mut()
            .insert(CACHE.clone(), HeaderValue::from_static("hit"));
        resp.headers_mut()
            .insert(AGE, HeaderValue::from(age.as_secs()));
        self.metrics
            .cache_requests
            .with_label_values(&[&ctx.route.name, result])
            .inc();
        Some(Answer::new(resp, Outcome::Cache, 0))
    }
}

/// The store key for a request head, when the route has a store and privacy allows.
pub(super) fn store_key(state: &RouteState, head: &Head) -> Option<Key> {
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    state
        .store
        .as_ref()?
        .key(&head.method, target, &head.headers)
}

/// A copier into the store when this response may be kept. The followers of `flight`
/// learn here whether the answer will be shared.
fn tee(
    store: Option<&Arc<ResponseStore>>,
    key: Option<Key>,
    method: &Method,
    request: &HeaderMap,
    resp: &Response<Incoming>,
    flight: Option<Flight>,
) -> Option<Tee> {
    let storable = method == Method::GET && ResponseStore::storable(resp.status(), resp.headers());
    let (store, key) = match (store, key) {
        (Some(store), Some(key)) if storable => (store, key),
        (_, key) => {
            if let Some(flight) = flight {
                flight.unshared();
            }
            if let Some(key) = key {
                store::recycle(key);
            }
            return None;
        }
    };
    // A follower flight must end with a store, so only skip when nobody waits. The key
    // goes back for the next request's.
    if flight.is_none() && store.recently_stored(&key) {
        store::recycle(key);
        return None;
    }
    if let Some(flight) = &flight {
        flight.headers();
    }
    let mut response = resp.headers().clone();
    headers::strip_hop_by_hop(&mut response);
    // Only what the response varies on is kept of the request, not its whole head.
    let vary = Vary::of(&response, request);
    Some(Tee::new(Arc::clone(store), key, vary, response, flight))
}

/// Tells the followers of a coalescing flight, if any, why the leader failed.
fn tell(flight: &Option<Flight>, reason: Reason) {
    if let Some(flight) = flight {
        flight.failed(reason);
    }
}

fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// The 429 for a request over its rate limit, with the wait for the next token.
pub(super) fn rate_limited(wait: Duration) -> Response<ResponseBody> {
    let mut resp = respond::failure(Failure::RateLimited);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}
