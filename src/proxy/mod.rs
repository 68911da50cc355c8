//! The request path. [`Proxy::handle`] reads in the order things happen:
//!
//! 1. pick the route (first match wins; `default` otherwise) and the request id;
//! 2. refuse what is never forwarded (`CONNECT`) and shed when too many are in flight;
//! 3. forward it (`forward`): fresh cache and coalescing, the head rewritten for the
//!    upstream (`upstream`, `headers`), the body kept for replay or streamed once (`body`),
//!    the health-check gate (`probe`), the rate limit, the attempts (`attempts`: breaker,
//!    per-try timeout, classify, retry or not), and the answer: the upstream's response
//!    streamed through (copied into the store when it may be kept), or on failure the stale
//!    copy, the fallback (`degrade`) or a proxy-made error (`respond`);
//! 4. count it and write the access log.
//!
//! The configuration and what is built from it live in one `Runtime` snapshot (`runtime`)
//! behind an `ArcSwap`: each request loads it once, and a reload swaps in a new one
//! without touching requests already running.

pub mod attempts;
pub mod body;
pub mod coalesced;
pub mod concurrency_state;
pub mod connect;
pub mod degrade;
pub mod failure;
pub mod forward;
pub mod grpc;
pub mod h1pool;
pub mod h2pool;
pub mod h2settings;
pub mod headers;
pub mod hedge;
pub mod probe;
pub mod respond;
pub mod route_metrics;
pub mod runtime;
pub mod try_timer;
pub mod tunnel;
pub mod upgrade;
pub mod upload;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{HeaderName, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use self::body::ResponseBody;
use self::degrade::Failed;
use self::failure::{Failure, Reason};
use self::forward::Ctx;
use self::probe::UpstreamHealth;
use self::runtime::{RouteState, Runtime};
use self::upgrade::Tunnels;
use crate::config::{Config, Route};
use crate::metrics::{method_label, Metrics};

/// Header on every response: how many upstream attempts were made.
pub static ATTEMPTS: HeaderName = HeaderName::from_static("x-outrigger-attempts");

/// The proxy: shared by every connection of the proxy listener.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
    /// What the active health check believes (unknown without one).
    pub health: UpstreamHealth,
    /// Upgraded connections (WebSocket) still open.
    pub tunnels: Arc<Tunnels>,
    /// Spans for the requests `tracing:` samples (SPEC §7.5); inert when it is absent.
    traces: crate::otel::Traces,
}

/// How a request was answered: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Upstream,
    Cache,
    Fallback,
    Stale,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
            Outcome::Cache => "cache",
            Outcome::Fallback => "fallback",
            Outcome::Stale => "stale",
            Outcome::Error => "error",
        }
    }
}

/// Keeps a request counted as in flight until its response body is gone.
pub struct InFlight {
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
        let tunnels = Arc::new(Tunnels::new(metrics.tunnels_open.clone()));
        let traces = crate::otel::Traces::new(config.tracing.as_ref(), &metrics);
        Proxy {
            runtime: ArcSwap::from_pointee(Runtime::new(config, None, &metrics)),
            metrics,
            in_flight: Arc::new(AtomicUsize::new(0)),
            health: UpstreamHealth::default(),
            tunnels,
            traces,
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

    /// The tracer of this proxy (inert without `tracing:`); the edge starts each request's
    /// trace with it.
    pub fn traces(&self) -> &crate::otel::Traces {
        &self.traces
    }

    /// Answers one client request, known by `request_id` (the edge settled it). Never
    /// fails: every error becomes a response.
    /// Takes the proxy by `Arc` so that its future is `'static` and can be boxed where it
    /// is made, with nothing around it (`edge`).
    #[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        request_id: HeaderValue,
    ) -> impl std::future::Future<Output = Response<ResponseBody>> + Send + 'static {
        // An `async` block, not an `async fn`: an `async fn` keeps each by-value argument
        // twice in its future (as passed and as moved into its body), and the request
        // alone is 264 bytes.
        async move {
            let started = Instant::now();
            let rt = self.runtime.load_full();
            // Routes match on what the upstream will receive: not on a header `Connection` names.
            // In a block, so this future keeps no room for the copy across its `await`s.
            let (route, state) = {
                let route_headers = headers::end_to_end(req.headers());
                rt.route(req.method(), req.uri().path(), &route_headers)
            };
            crate::otel::route(&route.name);
            let method = req.method().clone();
            let version = req.version();
            // Kept for the access log only: a copy per request is wasted when it is off.
            let path = crate::access_log::enabled().then(|| req.uri().path().to_owned());
            let grpc = grpc::is_grpc(req.headers());

            let guard = self.admit(rt.config.limits.max_concurrent_requests);
            let (mut resp, outcome, attempts) = if method == Method::CONNECT {
                let refused =
                    respond::refused(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
                (refused, Outcome::Error, 0)
            } else if guard.is_none() {
                self.metrics.shed.inc();
                let (resp, outcome) = self.shed(&rt, route, state, req, peer, &request_id);
                (resp, outcome, 0)
            } else {
                let ctx = Ctx {
                    rt: &rt,
                    route,
                    state,
                    peer,
                    request_id: &request_id,
                    deadline: started
                        + if grpc {
                            grpc::cap(route.policy.timeout, req.headers())
                        } else {
                            route.policy.timeout
                        },
                    grpc,
                };
                let answer = if upgrade::is_upgrade(&req) {
                    // Boxed: a tunnel's setup is large and rare; unboxed, every request's
                    // future would carry its room.
                    Box::pin(self.upgrade(&ctx, req)).await
                } else {
                    self.forward(&ctx, req).await
                };
                (answer.resp, answer.outcome, answer.attempts)
            };

            if grpc {
                resp = grpc::answer(resp, &route.name, &self.metrics);
            }
            // The upstream may speak HTTP/1.0; the client gets the version it asked in.
            *resp.version_mut() = version;
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let headers = resp.headers_mut();
            if !switching {
                // A 101 keeps `Connection: upgrade` and `Upgrade`: they are the answer.
                headers::strip_hop_by_hop(headers);
            }
            // The map was sized to the upstream's headers: grow it once for both.
            headers.reserve(2);
            headers.insert(&ATTEMPTS, headers::count(attempts));
            headers.insert(&headers::REQUEST_ID, request_id.clone());
            let elapsed = started.elapsed();
            let status = resp.status();
            let series = &state.series;
            let m = &self.metrics;
            series
                .request(
                    m,
                    &route.name,
                    method_label(&method),
                    status,
                    outcome.label(),
                )
                .inc();
            series
                .duration(m, &route.name, outcome.label())
                .observe(elapsed.as_secs_f64());
            crate::otel::finish(status.as_u16(), outcome.label(), attempts);
            crate::access_log::record(&crate::access_log::Entry {
                request_id: request_id.to_str().unwrap_or(""),
                method: method.as_str(),
                path: path.as_deref().unwrap_or(""),
                route: &route.name,
                status: status.as_u16(),
                outcome: outcome.label(),
                attempts,
                duration: elapsed,
            });
            if let Some(guard) = guard {
                resp.body_mut().set_guard(guard);
            }
            resp
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
        rt: &Runtime,
        route: &Route,
        state: &RouteState,
        req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
    ) -> (Response<ResponseBody>, Outcome) {
        let (mut parts, _) = req.into_parts();
        // Stale copies are looked up as forwarding would: from the head the upstream gets.
        let head = rt.head(&mut parts, peer, request_id);
        let degraded = head.ok().and_then(|head| {
            let key = forward::store_key(state, &head);
            let failed = Failed {
                method: &head.method,
                stale_key: key.as_deref(),
                headers: &head.headers,
                reason: Reason::Failure(Failure::Overloaded),
            };
            degrade::answer(route, state, &self.metrics, &failed)
        });
        degraded.unwrap_or_else(|| (respond::failure(Failure::Overloaded), Outcome::Error))
    }
}
