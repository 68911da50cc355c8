//! One configuration and everything built from it: the upstream client and each route's
//! state (retry budget, circuit breaker, response store).
//!
//! A reload builds a new `Runtime`. State is carried over per route name and per part when
//! that part's policy did not change, so a reload that touches one route does not reset
//! the breakers, budgets and stale copies of the others; a changed policy starts fresh.
//!
//! Metrics follow the config in force, not the objects still alive: a breaker that is not
//! carried over is retired (requests in flight may still make it open, but it no longer
//! writes `outrigger_circuit_state`), the gauges of routes that are gone are removed, and
//! `outrigger_upstream_up` goes when the health check does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method};

use super::upstream::{self, HttpClient};
use crate::config::{Config, Route};
use crate::metrics::Metrics;
use crate::resilience::budget::RetryBudget;
use crate::resilience::circuit::{Breaker, BreakerMetrics, State};
use crate::resilience::coalesce::Coalescer;
use crate::resilience::hedge::HedgeState;
use crate::resilience::rate_limit::RateLimiter;
use crate::resilience::slots::ConcurrencyLimit;
use crate::resilience::store::{ResponseStore, StorePolicy};

/// A configuration in force.
pub struct Runtime {
    pub config: Arc<Config>,
    pub client: HttpClient,
    /// Per-route state, index-aligned with `config.routes`, `default` last.
    states: Vec<RouteState>,
    /// The Redis store replicas share, with a `shared:` block (SPEC §7.4).
    pub shared: Option<Arc<crate::shared::Shared>>,
}

/// What a route remembers between requests.
pub struct RouteState {
    pub budget: Arc<RetryBudget>,
    pub breaker: Option<Arc<Breaker>>,
    /// Fresh cache and stale copies, when the route has either.
    pub store: Option<Arc<ResponseStore>>,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Cache misses in flight, for `cache.coalesce`.
    pub coalescer: Arc<Coalescer>,
    /// Hedge ratio and latency samples, when the route hedges (SPEC §7.2).
    pub hedge: Option<Arc<Mutex<HedgeState>>>,
    /// The adaptive concurrency limit, when the route has one (`concurrency_state`).
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    /// The route's hot metric series, resolved once (`route_metrics`).
    pub series: super::route_metrics::RouteMetrics,
}

impl Runtime {
    /// Builds a runtime, reusing unchanged state from `previous`.
    pub fn new(config: Arc<Config>, previous: Option<&Runtime>, metrics: &Metrics) -> Runtime {
        let mut old: HashMap<&str, &RouteState> = HashMap::new();
        if let Some(prev) = previous {
            old.extend(
                prev.routes()
                    .map(|r| r.name.as_str())
                    .zip(prev.states.iter()),
            );
        }
        retire_removed(&config, &old, metrics);
        if config.upstream.health_check.is_none() {
            metrics.clear_upstream_up();
        }
        let prev_shared = previous.and_then(|p| p.shared.as_ref());
        let shared =
            crate::shared::for_config(config.shared.as_ref(), prev_shared, &metrics.shared);
        let states = all_routes(&config)
            .map(|route| {
                let old = old.get(route.name.as_str()).copied();
                RouteState::new(route, old, metrics, shared.as_ref())
            })
            .collect();
        Runtime {
            client: upstream::client(&config.upstream, &config.limits),
            config,
            states,
            shared,
        }
    }

    /// Every route, `default` last.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        all_routes(&self.config)
    }

    /// Every route with its state.
    pub fn routes_with_state(&self) -> impl Iterator<Item = (&Route, &RouteState)> {
        self.routes().zip(self.states.iter())
    }

    /// Each route that has a circuit breaker, with the breaker's state now. Asking is what
    /// moves an open breaker whose open_duration has run out to half-open (and updates its
    /// gauge), so every reader of circuit states goes through here.
    pub fn circuit_states(&self) -> impl Iterator<Item = (&Route, State)> {
        self.routes_with_state()
            .filter_map(|(route, state)| Some((route, state.breaker.as_ref()?.state())))
    }

    /// A client's request head rewritten for this config's upstream; a request with no
    /// host of its own gets the upstream's ([`HttpClient::default_host`]).
    pub fn head(
        &self,
        parts: &mut http::request::Parts,
        peer: std::net::SocketAddr,
        request_id: &http::HeaderValue,
    ) -> Result<upstream::Head, upstream::BadHead> {
        let upstream = &self.config.upstream;
        let host = self.client.default_host();
        upstream::Head::from_client(parts, upstream, host, peer, request_id)
    }

    /// The route a request takes (first match, else `default`) and its state.
    pub fn route(&self, method: &Method, path: &str, headers: &HeaderMap) -> (&Route, &RouteState) {
        let ix = self.config.route_index(method, path, headers);
        let route = self
            .config
            .routes
            .get(ix)
            .unwrap_or(&self.config.default_route);
        (route, &self.states[ix])
    }
}

/// Retires the breakers of routes that the new config no longer has, and removes their
/// per-route gauges: a renamed or removed route must not stay `open` forever.
fn retire_removed(config: &Config, old: &HashMap<&str, &RouteState>, metrics: &Metrics) {
    let kept: HashSet<&str> = all_routes(config).map(|r| r.name.as_str()).collect();
    for (name, state) in old {
        if kept.contains(name) {
            continue;
        }
        if let Some(b) = &state.breaker {
            b.retire();
        }
        let _ = metrics.circuit_state.remove_label_values(&[name]);
        let _ = metrics.retry_yield.remove_label_values(&[name]);
        super::concurrency_state::retire(state.concurrency.as_deref(), name, metrics);
    }
}

fn all_routes(config: &Config) -> impl Iterator<Item = &Route> {
    config
        .routes
        .iter()
        .chain(std::iter::once(&config.default_route))
}

impl RouteState {
    fn new(
        route: &Route,
        old: Option<&RouteState>,
        metrics: &Metrics,
        shared: Option<&Arc<crate::shared::Shared>>,
    ) -> RouteState {
        let policy = &route.policy;
        let budget = match old {
            Some(o) if o.budget.policy() == policy.retry.budget => Arc::clone(&o.budget),
            _ => Arc::new(RetryBudget::new(policy.retry.budget)),
        };
        let old_breaker = old.and_then(|o| o.breaker.as_ref());
        let kept = old_breaker.filter(|b| Some(b.policy()) == policy.circuit_breaker);
        if let (Some(b), None) = (old_breaker, kept) {
            // Before the new breaker sets the gauge, so the old one cannot overwrite it.
            b.retire();
        }
        let breaker = policy.circuit_breaker.map(|p| match kept {
            Some(b) => Arc::clone(b),
            None => Arc::new(Breaker::new(
                &route.name,
                p,
                breaker_metrics(&route.name, metrics),
            )),
        });
        if breaker.is_none() {
            let _ = metrics.circuit_state.remove_label_values(&[&route.name]);
        }
        let limiter =
            policy
                .rate_limit
                .as_ref()
                .map(|p| match old.and_then(|o| o.limiter.as_ref()) {
                    Some(l) if l.policy() == p && crate::shared::kept(l, shared) => Arc::clone(l),
                    _ => Arc::new(
                        RateLimiter::new(p.clone())
                            .with_shared(crate::shared::limit_for(shared, route)),
                    ),
                });
        let store =
            StorePolicy::for_route(policy).map(|p| match old.and_then(|o| o.store.as_ref()) {
                Some(s) if *s.policy() == p && crate::shared::store_kept(s, shared, route) => {
                    Arc::clone(s)
                }
                _ => Arc::new(
                    ResponseStore::new(p)
                        .with_shared(crate::shared::SharedResponses::for_route(shared, route)),
                ),
            });
        let hedge = policy.hedge.map(|p| {
            let kept = old
                .and_then(|o| o.hedge.as_ref())
                .filter(|h| h.lock().is_ok_and(|h| h.policy() == p));
            kept.map_or_else(
                || Arc::new(Mutex::new(HedgeState::new(p, tokio::time::Instant::now()))),
                Arc::clone,
            )
        });
        RouteState {
            budget,
            breaker,
            store,
            limiter,
            coalescer: old.map_or_else(Default::default, |o| Arc::clone(&o.coalescer)),
            hedge,
            concurrency: super::concurrency_state::carry(route, old, metrics),
            series: Default::default(),
        }
    }
}

fn breaker_metrics(route: &str, metrics: &Metrics) -> BreakerMetrics {
    let to = |state| {
        metrics
            .circuit_transitions
            .with_label_values(&[route, state])
    };
    BreakerMetrics {
        state: metrics.circuit_state.with_label_values(&[route]),
        to: [to("closed"), to("half-open"), to("open")],
    }
}
