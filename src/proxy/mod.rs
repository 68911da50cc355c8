//! The request path. [`Proxy::handle`] reads in the order things happen:
//!
//! 1. pick the route (first match wins; `default` otherwise) and the request id;
//! 2. refuse what is never forwarded (`CONNECT`) and shed when too many are in flight;
//! 3. rewrite the head for the upstream (`upstream`, `headers`);
//! 4. prepare the body: kept for replay when the request may be retried and fits
//!    `request_body_buffer`, streamed once otherwise (`body`);
//! 5. run the attempts (`attempts`): per-try timeout, classify, retry or not;
//! 6. answer: the upstream's response streamed through, or a proxy-made error (`respond`);
//! 7. count it and write the access log.
//!
//! The configuration and the upstream client live in one `Runtime` snapshot behind an
//! `ArcSwap`: each request loads it once, and a reload swaps in a new one without touching
//! requests already running. State that must outlive a reload (retry budgets) is carried
//! over by route name.

pub mod attempts;
pub mod body;
pub mod failure;
pub mod headers;
pub mod respond;
pub mod upstream;

use std::collections::HashMap;
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
use self::body::{Prepared, ResponseBody};
use self::failure::Failure;
use self::upstream::{Head, HttpClient};
use crate::config::{Config, Route};
use crate::metrics::{method_label, Metrics};
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry;

/// Header on every response: how many upstream attempts were made.
pub static ATTEMPTS: HeaderName = HeaderName::from_static("x-outrigger-attempts");

/// The proxy: shared by every connection of the proxy listener.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
}

/// One configuration and what was built from it.
pub struct Runtime {
    pub config: Arc<Config>,
    client: HttpClient,
    /// Per-route state, index-aligned with `config.routes`, `default` last.
    states: Vec<Arc<RouteState>>,
}

/// What a route remembers between requests.
pub struct RouteState {
    budget: RetryBudget,
}

impl Runtime {
    fn new(config: Arc<Config>, previous: Option<&Runtime>) -> Runtime {
        let mut old: HashMap<&str, &Arc<RouteState>> = HashMap::new();
        if let Some(prev) = previous {
            let names = prev
                .config
                .routes
                .iter()
                .chain([&prev.config.default_route]);
            old.extend(names.map(|r| r.name.as_str()).zip(prev.states.iter()));
        }
        let states = config
            .routes
            .iter()
            .chain([&config.default_route])
            .map(|route| match old.get(route.name.as_str()) {
                Some(state) => Arc::clone(state),
                None => Arc::new(RouteState {
                    budget: RetryBudget::new(route.policy.retry.budget),
                }),
            })
            .collect();
        Runtime {
            client: upstream::client(&config.upstream),
            config,
            states,
        }
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> (&Route, &RouteState) {
        let cfg = &self.config;
        let ix = cfg
            .routes
            .iter()
            .position(|r| r.matcher.matches(method, path, headers))
            .unwrap_or(cfg.routes.len());
        let route = cfg.routes.get(ix).unwrap_or(&cfg.default_route);
        (route, &self.states[ix])
    }
}

/// How a request was answered: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Upstream,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
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
            runtime: ArcSwap::from_pointee(Runtime::new(config, None)),
            metrics,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Applies a new configuration to requests that start from now on.
    pub fn reload(&self, config: Arc<Config>) {
        let current = self.runtime.load();
        self.runtime
            .store(Arc::new(Runtime::new(config, Some(&current))));
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
        let (mut resp, outcome, attempts) = match (&guard, &method) {
            (_, &Method::CONNECT) => (
                respond::refused(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported"),
                Outcome::Error,
                0,
            ),
            (None, _) => {
                self.metrics.shed.inc();
                (respond::failure(Failure::Overloaded), Outcome::Error, 0)
            }
            (Some(_), _) => {
                self.forward(&rt, route, state, req, peer, &request_id, started)
                    .await
            }
        };

        // The upstream may speak HTTP/1.0; the client gets the version it asked in.
        *resp.version_mut() = version;
        let headers = resp.headers_mut();
        headers::strip_hop_by_hop(headers);
        headers.insert(ATTEMPTS.clone(), HeaderValue::from(attempts));
        headers.insert(headers::REQUEST_ID.clone(), request_id.clone());
        let status = resp.status();
        let elapsed = started.elapsed();
        self.metrics
            .requests
            .with_label_values(&[
                &route.name,
                method_label(&method),
                status.as_str(),
                outcome.label(),
            ])
            .inc();
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
        let Ok(head) = Head::from_client(&mut parts, &rt.config.upstream, peer, request_id) else {
            return (
                respond::refused(StatusCode::BAD_REQUEST, "the request target is not valid"),
                Outcome::Error,
                0,
            );
        };
        let deadline = started + route.policy.timeout;
        let limit = rt.config.limits.request_body_buffer;
        let body =
            match tokio::time::timeout_at(deadline, prepare_body(body, &head, may_resend, limit))
                .await
            {
                Ok(Ok(body)) => body,
                Ok(Err(_)) => {
                    return (
                        respond::refused(
                            StatusCode::BAD_REQUEST,
                            "the request body could not be read",
                        ),
                        Outcome::Error,
                        0,
                    )
                }
                Err(_) => {
                    return (
                        respond::refused(
                            StatusCode::REQUEST_TIMEOUT,
                            "the request body did not arrive in time",
                        ),
                        Outcome::Error,
                        0,
                    )
                }
            };
        let finished = Attempts {
            client: &rt.client,
            route,
            budget: &state.budget,
            metrics: &self.metrics,
            head,
            body,
            may_resend,
            deadline,
        }
        .run()
        .await;
        match finished.ended {
            Ended::Answered(resp) => (
                resp.map(ResponseBody::upstream),
                Outcome::Upstream,
                finished.attempts,
            ),
            Ended::Failed(f) => (respond::failure(f), Outcome::Error, finished.attempts),
        }
    }
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
        return Ok(Prepared::streaming(Vec::new(), body, length, oversized));
    }
    let mut kept: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers of a buffered request body are dropped; data frames are all we replay.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len();
        kept.push(data);
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
