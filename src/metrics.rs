//! The one Prometheus registry and every metric outrigger exports (SPEC §5).
//!
//! Built once at start-up and shared by the proxy and the admin listener; it survives
//! config reloads so counters never go back to zero while the process lives. Label values
//! come from closed sets only: route names from the config, methods folded to the standard
//! ones or `other`, reasons and results from enums. A client cannot grow the label space.

use std::sync::Mutex;

use http::Method;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// route, method, code, outcome
    pub requests: IntCounterVec,
    /// route, outcome
    pub request_duration: HistogramVec,
    /// route, result
    pub upstream_attempts: IntCounterVec,
    /// route
    pub upstream_attempt_duration: HistogramVec,
    /// route, reason
    pub retries: IntCounterVec,
    /// route, reason
    pub retries_skipped: IntCounterVec,
    /// route, result
    pub retried_requests: IntCounterVec,
    /// route, reason
    pub fallbacks: IntCounterVec,
    /// route, result
    pub cache_requests: IntCounterVec,
    /// route
    pub rate_limited: IntCounterVec,
    /// route, kind
    pub faults_injected: IntCounterVec,
    /// route
    pub stale_responses: IntCounterVec,
    /// route, grpc_status
    pub grpc_responses: IntCounterVec,
    /// route: 0 closed, 1 half-open, 2 open
    pub circuit_state: IntGaugeVec,
    /// route, to
    pub circuit_transitions: IntCounterVec,
    /// In the registry only while a health check has a result (absent without one).
    pub upstream_up: IntGauge,
    /// Whether `upstream_up` is in the registry now; only the probe task and reloads flip it.
    upstream_up_registered: Mutex<bool>,
    pub in_flight: IntGauge,
    /// Upgraded connections (WebSocket) open now.
    pub tunnels_open: IntGauge,
    pub shed: IntCounter,
    /// result
    pub config_reloads: IntCounterVec,
    /// route: the retry yield the adaptive budget believes (SPEC §7.1), set at each scrape.
    pub retry_yield: GaugeVec,
    /// route, result (`won`, `lost`, `skipped`): hedged attempts (SPEC §7.2).
    pub hedges: IntCounterVec,
    /// route: the adaptive concurrency limit now (issue 15)
    pub concurrency_limit: IntGaugeVec,
    /// route: attempts in flight to the upstream, on routes with `concurrency`
    pub upstream_in_flight: IntGaugeVec,
    /// route: requests that found no slot within `queue_timeout`
    pub concurrency_rejected: IntCounterVec,
    /// `outrigger_shared_store_*` (SPEC §7.4).
    pub shared: crate::shared::SharedMetrics,
    /// Counters other modules registered with [`Metrics::plain_counter`].
    extra_counters: Mutex<Vec<(String, IntCounter)>>,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("metric definition is valid");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

/// `outrigger_config_reloads_total` with both results at 0 from the start, so that
/// `increase(...{result="failure"}[5m])` sees the first failed reload.
fn reloads(registry: &Registry) -> IntCounterVec {
    let c = counter(
        registry,
        "outrigger_config_reloads_total",
        "Config reloads on SIGHUP, by result.",
        &["result"],
    );
    for result in ["success", "failure"] {
        c.with_label_values(&[result]);
    }
    c
}

impl Metrics {
    /// Creates the registry with every metric and the process collector.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let in_flight = IntGauge::new("outrigger_in_flight_requests", "Requests being served now.")
            .expect("metric definition is valid");
        r.register(Box::new(in_flight.clone())).expect("unique");
        let tunnels_open =
            IntGauge::new("outrigger_tunnels_open", "Upgraded connections open now.")
                .expect("metric definition is valid");
        r.register(Box::new(tunnels_open.clone())).expect("unique");
        let shed = IntCounter::new(
            "outrigger_shed_total",
            "Requests refused at once because too many were in flight.",
        )
        .expect("metric definition is valid");
        r.register(Box::new(shed.clone())).expect("unique");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "outrigger_build_info",
                "Always 1; the version label says which build runs.",
            ),
            &["version"],
        )
        .expect("metric definition is valid");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        r.register(Box::new(build_info)).expect("unique");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique");

        Metrics {
            requests: counter(
                &r,
                "outrigger_requests_total",
                "Client requests answered, by how they were answered.",
                &["route", "method", "code", "outcome"],
            ),
            request_duration: histogram(
                &r,
                "outrigger_request_duration_seconds",
                "Time from request to response headers.",
                &["route", "outcome"],
            ),
            upstream_attempts: counter(
                &r,
                "outrigger_upstream_attempts_total",
                "Requests sent to the upstream, retries included, by result.",
                &["route", "result"],
            ),
            upstream_attempt_duration: histogram(
                &r,
                "outrigger_upstream_attempt_duration_seconds",
                "Time of one upstream attempt until response headers or failure.",
                &["route"],
            ),
            retries: counter(
                &r,
                "outrigger_retries_total",
                "Retries made, by the reason the previous attempt failed.",
                &["route", "reason"],
            ),
            retries_skipped: counter(
                &r,
                "outrigger_retries_skipped_total",
                "Retries that the policy wanted but did not make, by why not.",
                &["route", "reason"],
            ),
            retried_requests: counter(
                &r,
                "outrigger_retried_requests_total",
                "Requests that needed at least one retry, by final result.",
                &["route", "result"],
            ),
            fallbacks: counter(
                &r,
                "outrigger_fallbacks_total",
                "Fallback answers served, by the reason the upstream failed.",
                &["route", "reason"],
            ),
            cache_requests: counter(
                &r,
                "outrigger_cache_requests_total",
                "Cache lookups, by result (hit, miss, coalesced).",
                &["route", "result"],
            ),
            rate_limited: counter(
                &r,
                "outrigger_rate_limited_total",
                "Requests refused by the rate limit.",
                &["route"],
            ),
            faults_injected: counter(
                &r,
                "outrigger_faults_injected_total",
                "Faults injected on purpose, by kind (abort, delay).",
                &["route", "kind"],
            ),
            stale_responses: counter(
                &r,
                "outrigger_stale_responses_total",
                "Stale copies served because the upstream failed.",
                &["route"],
            ),
            grpc_responses: counter(
                &r,
                "outrigger_grpc_responses_total",
                "gRPC calls answered, by grpc-status (0-16, or other).",
                &["route", "grpc_status"],
            ),
            circuit_state: gauge(
                &r,
                "outrigger_circuit_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                &["route"],
            ),
            circuit_transitions: counter(
                &r,
                "outrigger_circuit_transitions_total",
                "Circuit breaker state changes, by new state.",
                &["route", "to"],
            ),
            upstream_up: IntGauge::new(
                "outrigger_upstream_up",
                "1 while the active health check finds the upstream up, else 0.",
            )
            .expect("metric definition is valid"),
            upstream_up_registered: Mutex::new(false),
            config_reloads: reloads(&r),
            retry_yield: float_gauge(
                &r,
                "outrigger_retry_yield",
                "Share of the route's recent retries that succeeded, as the adaptive retry budget believes it (0 to 1).",
                &["route"],
            ),
            hedges: counter(
                &r,
                "outrigger_hedges_total",
                "Hedged attempts, by result: won (its answer was used), lost (cancelled), skipped (max_ratio or open circuit).",
                &["route", "result"],
            ),
            concurrency_limit: gauge(
                &r,
                "outrigger_concurrency_limit",
                "Adaptive limit on attempts in flight to the upstream, per route.",
                &["route"],
            ),
            upstream_in_flight: gauge(
                &r,
                "outrigger_upstream_in_flight",
                "Attempts in flight to the upstream, per route with a concurrency limit.",
                &["route"],
            ),
            concurrency_rejected: counter(
                &r,
                "outrigger_concurrency_rejected_total",
                "Requests that found no concurrency slot within queue_timeout (answered overloaded).",
                &["route"],
            ),
            extra_counters: Mutex::new(Vec::new()),
            in_flight,
            tunnels_open,
            shed,
            shared: crate::shared::SharedMetrics::register(&r),
            registry: r,
        }
    }

    /// Sets `outrigger_upstream_up`, registering it when it is not exported yet.
    pub fn set_upstream_up(&self, up: bool) {
        self.upstream_up.set(i64::from(up));
        if let Ok(mut registered) = self.upstream_up_registered.lock() {
            if !*registered {
                *registered = self
                    .registry
                    .register(Box::new(self.upstream_up.clone()))
                    .is_ok();
            }
        }
    }

    /// Withdraws `outrigger_upstream_up`: the config no longer has a health check, so
    /// neither up nor down is known (SPEC: absent without a health check).
    pub fn clear_upstream_up(&self) {
        if let Ok(mut registered) = self.upstream_up_registered.lock() {
            if *registered {
                let _ = self.registry.unregister(Box::new(self.upstream_up.clone()));
                *registered = false;
            }
        }
    }

    /// A counter without labels registered by a module that owns it (e.g. `otel`); the
    /// same counter when asked twice (several proxies in one process share the registry).
    pub fn plain_counter(&self, name: &str, help: &str) -> IntCounter {
        let counter = IntCounter::new(name, help).expect("a valid metric name");
        match self.registry.register(Box::new(counter.clone())) {
            Err(prometheus::Error::AlreadyReg) => self
                .extra_counters
                .lock()
                .ok()
                .and_then(|m| m.iter().find(|(n, _)| n == name).map(|(_, c)| c.clone()))
                .unwrap_or(counter),
            _ => {
                if let Ok(mut m) = self.extra_counters.lock() {
                    m.push((name.to_owned(), counter.clone()));
                }
                counter
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A method as a bounded label value: the standard methods by name, anything else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The `result` label of an upstream attempt that got a status.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
