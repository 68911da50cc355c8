//! The request path. [`Proxy::handle`] reads in the order things happen:
//!
//! 1. pick the route (first match wins; `default` otherwise) and the request id;
//! 2. refuse what is never forwarded (`CONNECT`) and shed when too many are in flight;
//! 3. rewrite the head for the upstream (`upstream`, `headers`);
//! 4. prepare the body: kept for replay when the request may be retried and fits
//!    `request_body_buffer`, streamed once otherwise (`body`);
//! 5. run the attempts (`attempts`): per-try timeout, classify, retry or not;
//!    the circuit breaker admits each attempt, or the active health check (`probe`) has
//!    already said the upstream is down;
//! 6. answer: the upstream's response streamed through (copied into the stale store when
//!    it may be kept), or on failure the stale copy, the fallback (`degrade`) or a
//!    proxy-made error (`respond`);
//! 7. count it and write the access log.
//!
//! The configuration and what is built from it live in one `Runtime` snapshot (`runtime`)
//! behind an `ArcSwap`: each request loads it once, and a reload swaps in a new one
//! without touching requests already running.

pub mod attempts;
pub mod body;
pub mod degrade;
pub mod failure;
pub mod headers;
pub mod probe;
pub mod respond;
pub mod runtime;
pub mod upstream;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::info;

use self::attempts::{Attempts, Ended};
use self::body::{Prepared, ResponseBody, Tee};
use self::degrade::Failed;
use self::failure::{Failure, Reason};
use self::probe::UpstreamHealth;
use self::runtime::{RouteState, Runtime};
use self::upstream::Head;
use crate::config::{Config, Route};
use crate::metrics::{method_label, Metrics};
use crate::resilience::retry;
use crate::resilience::stale::{Key, StaleStore};

/// Header on every response: how many upstream attempts were made.
pub static ATTEMPTS: HeaderName = HeaderName::from_static("x-outrigger-attempts");

/// The proxy: shared by every connection of the proxy listener.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
    /// What the active health check believes (unknown without one).
    pub health: UpstreamHealth,
}

/// How a request was answered: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Upstream,
    Fallback,
    Stale,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
            Outcome::Fallback => "fallback",
            Outcome::Stale => "stale",
            Outcome::Error => "error",
        }
    }
}

/// Keeps a request counted as in flight until its response body is gone.
struct InFlight {
    count: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.dec();
    }
}

impl Proxy {
    /// A proxy for this configuration.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            runtime: ArcSwap::from_pointee(Runtime::new(config, None, &metrics)),
            metrics,
            in_flight: Arc::new(AtomicUsize::new(0)),
            health: UpstreamHealth::default(),
        }
    }

    /// Applies a new configuration to requests that start from now on.
    pub fn reload(&self, config: Arc<Config>) {
        let current = self.runtime.load();
        let next = Runtime::new(config, Some(&current), &self.metrics);
        self.runtime.store(Arc::new(next));
    }

    /// The runtime in force (config, routes and their state).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.runtime.load().config)
    }

    /// Answers one client request. Never fails: every error becomes a response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let started = Instant::now();
        let rt = self.runtime.load_full();
        let request_id = headers::request_id(req.headers());
        let (route, state) = rt.route(req.method(), req.uri().path(), req.headers());
        let method = req.method().clone();
        let version = req.version();
        let path = req.uri().path().to_owned();

        let guard = self.admit(rt.config.limits.max_concurrent_requests);
        let (mut resp, outcome, attempts) = if method == Method::CONNECT {
            let refused =
                respond::refused(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
            (refused, Outcome::Error, 0)
        } else if guard.is_none() {
            self.metrics.shed.inc();
            let (resp, outcome) = self.shed(route, state, &req);
            (resp, outcome, 0)
        } else {
            self.forward(&rt, route, state, req, peer, &request_id, started)
                .await
        };

        // The upstream may speak HTTP/1.0; the client gets the version it asked in.
        *resp.version_mut() = version;
        let headers = resp.headers_mut();
        headers::strip_hop_by_hop(headers);
        headers.insert(ATTEMPTS.clone(), HeaderValue::from(attempts));
        headers.insert(headers::REQUEST_ID.clone(), request_id.clone());
        let elapsed = started.elapsed();
        let status = resp.status();
        let labels = [
            &route.name,
            method_label(&method),
            status.as_str(),
            outcome.label(),
        ];
        self.metrics.requests.with_label_values(&labels).inc();
        self.metrics
            .request_duration
            .with_label_values(&[&route.name, outcome.label()])
            .observe(elapsed.as_secs_f64());
        info!(
            target: "access",
            request_id = request_id.to_str().unwrap_or(""),
            method = method.as_str(),
            path,
            route = route.name.as_str(),
            status = status.as_u16(),
            outcome = outcome.label(),
            attempts,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
        match guard {
            Some(g) => resp.map(|b| b.with_guard(Box::new(g))),
            None => resp,
        }
    }

    /// Takes an in-flight slot, or `None` when the limit is reached.
    fn admit(&self, limit: usize) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            count: Arc::clone(&self.in_flight),
            metrics: Arc::clone(&self.metrics),
        };
        self.metrics.in_flight.inc();
        (before < limit).then_some(guard)
    }

    /// The answer to a request shed for load: stale, fallback or 503 `overloaded`.
    fn shed(
        &self,
        route: &Route,
        state: &RouteState,
        req: &Request<Incoming>,
    ) -> (Response<ResponseBody>, Outcome) {
        let key = state
            .stale
            .as_ref()
            .and_then(|s| s.key(req.method(), req.uri(), req.headers()));
        let failed = Failed {
            method: req.method(),
            stale_key: key.as_deref(),
            headers: req.headers(),
            reason: Reason::Failure(Failure::Overloaded),
        };
        degrade::answer(route, state, &self.metrics, &failed)
            .unwrap_or_else(|| (respond::failure(Failure::Overloaded), Outcome::Error))
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        rt: &Runtime,
        route: &Route,
        state: &RouteState,
        req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
        started: Instant,
    ) -> (Response<ResponseBody>, Outcome, u32) {
        let (mut parts, body) = req.into_parts();
        let may_resend = retry::may_resend(&route.policy.retry, &parts.method, &parts.headers);
        let stale_key = state
            .stale
            .as_ref()
            .and_then(|s| s.key(&parts.method, &parts.uri, &parts.headers));
        let Ok(head) = Head::from_client(&mut parts, &rt.config.upstream, peer, request_id) else {
            let refused =
                respond::refused(StatusCode::BAD_REQUEST, "the request target is not valid");
            return (refused, Outcome::Error, 0);
        };
        let deadline = started + route.policy.timeout;
        let limit = rt.config.limits.request_body_buffer;
        let body =
            match tokio::time::timeout_at(deadline, prepare_body(body, &head, may_resend, limit))
                .await
            {
                Ok(Ok(body)) => body,
                Ok(Err(_)) => {
                    let refused = respond::refused(
                        StatusCode::BAD_REQUEST,
                        "the request body could not be read",
                    );
                    return (refused, Outcome::Error, 0);
                }
                Err(_) => {
                    let refused = respond::refused(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                    );
                    return (refused, Outcome::Error, 0);
                }
            };
        let request_headers = head.headers.clone();
        if self.health.is_down() {
            // The active health check already knows: answer from stale or fallback at once
            // instead of waiting for a connect timeout. Without either, still try: a wrong
            // probe must not take down a route that works.
            let failed = Failed {
                method: &parts.method,
                stale_key: stale_key.as_deref(),
                headers: &request_headers,
                reason: Reason::Failure(Failure::CircuitOpen),
            };
            if let Some((resp, outcome)) = degrade::answer(route, state, &self.metrics, &failed) {
                return (resp, outcome, 0);
            }
        }
        let attempts = Attempts {
            client: &rt.client,
            route,
            budget: &state.budget,
            breaker: state.breaker.as_deref(),
            metrics: &self.metrics,
            head,
            body,
            may_resend,
            deadline,
        };
        let finished = attempts.run().await;
        let n = finished.attempts;
        let reason = match finished.ended {
            Ended::Answered(resp) if !is_error(resp.status()) => {
                let tee = self.tee(state, stale_key, &parts.method, request_headers, &resp);
                let resp = resp.map(|b| match tee {
                    Some(tee) => ResponseBody::upstream_tee(b, tee),
                    None => ResponseBody::upstream(b),
                });
                return (resp, Outcome::Upstream, n);
            }
            Ended::Answered(ref resp) => Reason::Status(resp.status()),
            Ended::Failed(Failure::ClientBody) => {
                return (respond::failure(Failure::ClientBody), Outcome::Error, n);
            }
            Ended::Failed(f) => Reason::Failure(f),
        };
        let failed = Failed {
            method: &parts.method,
            stale_key: stale_key.as_deref(),
            headers: &request_headers,
            reason,
        };
        if let Some((resp, outcome)) = degrade::answer(route, state, &self.metrics, &failed) {
            return (resp, outcome, n);
        }
        match finished.ended {
            Ended::Answered(resp) => (resp.map(ResponseBody::upstream), Outcome::Upstream, n),
            Ended::Failed(f) => (respond::failure(f), Outcome::Error, n),
        }
    }

    /// A copier into the stale store when this response may be kept.
    fn tee(
        &self,
        state: &RouteState,
        key: Option<Key>,
        method: &Method,
        request: http::HeaderMap,
        resp: &Response<Incoming>,
    ) -> Option<Tee> {
        let store = state.stale.as_ref()?;
        let key = key?;
        if method != Method::GET || !StaleStore::storable(resp.status(), resp.headers()) {
            return None;
        }
        let mut response = resp.headers().clone();
        headers::strip_hop_by_hop(&mut response);
        Some(Tee::new(Arc::clone(store), key, request, response))
    }
}

fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// Reads the body into memory when it may be replayed and fits `limit`; streams it otherwise.
///
/// A body that may not be resent is never buffered. A chunked body that grows past the
/// limit while arriving keeps what was read as a prefix and streams the rest.
async fn prepare_body(
    mut body: Incoming,
    head: &Head,
    may_resend: bool,
    limit: usize,
) -> Result<Prepared, hyper::Error> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Prepared::Empty);
    }
    let length = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    let oversized = length.is_some_and(|n| n > limit as u64);
    if !may_resend || oversized {
        return Ok(Prepared::streaming(
            VecDeque::new(),
            body,
            length,
            oversized,
        ));
    }
    let mut kept: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers of a buffered request body are dropped; data frames are all we replay.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len();
        kept.push_back(data);
        if total > limit {
            return Ok(Prepared::streaming(kept, body, length, true));
        }
    }
    let mut all = BytesMut::with_capacity(total);
    for chunk in kept {
        all.extend_from_slice(&chunk);
    }
    Ok(Prepared::Buffered(all.freeze()))
}
