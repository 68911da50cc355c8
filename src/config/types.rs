//! The validated configuration: types that cannot hold a bad value.
//!
//! Everything the proxy reads at request time comes from here, already checked, already
//! merged (a route's partial overrides over `defaults`, `defaults` over the built-in
//! values), with durations as `Duration` and names as `HeaderName`/`Method`. Nothing on the
//! request path has to re-validate or can panic on a config value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

pub use super::concurrency::ConcurrencyPolicy;
pub use super::raw::{Condition, HostHeader, Jitter};

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; `None` in zero-config mode. SIGHUP re-reads it.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Runtime worker threads; already resolved from `0` to the usable CPUs.
    pub worker_threads: usize,
    pub upstream: Upstream,
    pub limits: Limits,
    pub shutdown: ShutdownPolicy,
    /// Configured routes in file order: the first match wins.
    pub routes: Vec<Route>,
    /// What a request that matches no route uses: `defaults`, named `default`.
    pub default_route: Route,
    /// Things worth telling the operator that are not errors.
    pub warnings: Vec<String>,
    /// `shared:`, when some state is kept in Redis (SPEC §7.4).
    pub shared: Option<super::shared::SharedConfig>,
    /// Where spans go (SPEC §7.5); `None`: no spans exported.
    pub tracing: Option<super::tracing::Tracing>,
}

/// Where and how to reach the one backend.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The URL as configured, e.g. `http://127.0.0.1:3000`.
    pub url: Uri,
    /// Path prefix of `url` (empty or without trailing slash) put before each request path.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub http2: bool,
    pub host_header: HostHeader,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Set for `https://` upstreams.
    pub tls: Option<Tls>,
    pub health_check: Option<HealthCheck>,
}

/// How to verify an `https://` upstream.
#[derive(Debug, Clone)]
pub struct Tls {
    /// A private CA to trust instead of the built-in webpki roots.
    pub ca_certs: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
    /// The name to send (SNI) and verify instead of the URL's host.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// Our certificate, for upstreams that require mTLS.
    pub client_cert: Option<std::sync::Arc<super::client_cert::ClientCert>>,
}

/// The optional active probe of the upstream.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub affects_readiness: bool,
}

/// Per-process bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_requests: usize,
    /// Upgraded connections (WebSocket) open at once; beyond, upgrades get 503.
    pub max_tunnels: usize,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Request bodies up to this many bytes are kept for replay.
    pub request_body_buffer: usize,
    pub max_request_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// A client that accepts no response bytes for this long is cut off.
    pub send_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
}

/// What SIGTERM does.
#[derive(Debug, Clone)]
pub struct ShutdownPolicy {
    pub drain_delay: Duration,
    pub timeout: Duration,
}

/// A named route: which requests it takes and the policy they get.
#[derive(Debug, Clone)]
pub struct Route {
    /// The `route` label in metrics and logs.
    pub name: String,
    pub matcher: Matcher,
    pub policy: Policy,
}

/// Which requests a route takes. All given parts must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// How a route matches the request path.
#[derive(Debug, Clone, Default)]
pub enum PathMatch {
    /// Every path.
    #[default]
    Any,
    /// Exactly this path.
    Exact(String),
    /// This path or anything below it, segment-aware; stored without a trailing slash.
    Prefix(String),
}

/// The resilience policy of one route.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Overall deadline: all attempts and backoff, until response headers.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `None` when `circuit_breaker.enabled` is false.
    pub circuit_breaker: Option<BreakerPolicy>,
    pub fallback: Option<Fallback>,
    pub stale_if_error: Option<StalePolicy>,
    pub cache: Option<CachePolicy>,
    pub rate_limit: Option<RateLimitPolicy>,
    pub fault: Option<FaultPolicy>,
    /// SPEC §7.2; `None`: no hedging.
    pub hedge: Option<super::hedge::HedgePolicy>,
    /// The adaptive concurrency limit (SPEC §7.3), when the route has one.
    pub concurrency: Option<ConcurrencyPolicy>,
}

/// When and how a failed attempt is tried again.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries, the first included; at least 1.
    pub attempts: u32,
    pub per_try_timeout: Duration,
    pub backoff: Backoff,
    /// Only `connect-failure`, `reset`, `timeout`, `5xx` and statuses appear here.
    pub when: Vec<Condition>,
    pub methods: Vec<Method>,
    pub idempotency_header: Option<HeaderName>,
    pub respect_retry_after: bool,
    pub budget: BudgetPolicy,
}

/// Exponential backoff parameters; `max >= base` holds.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

/// How much retries may add to live traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// In `[0, 1000]`: retries per first attempt.
    pub ratio: f64,
    pub min_per_second: u32,
    /// SPEC §7.1: room follows the retry yield (`ratio` then has no effect).
    pub adaptive: bool,
}

/// Circuit breaker parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// In `(0, 1]`.
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_duration: Duration,
    pub half_open_requests: u32,
}

/// A canned answer for failures.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub when: Vec<Condition>,
    /// The answer for gRPC calls instead of the HTTP one (`fallback.grpc`).
    pub grpc: Option<super::grpc::GrpcFallback>,
}

/// Serving the last good response when the upstream fails.
#[derive(Debug, Clone, PartialEq)]
pub struct StalePolicy {
    pub max_age: Duration,
    pub max_entries: usize,
    pub max_bytes: u64,
    pub key_headers: Vec<HeaderName>,
    pub scope: super::shared::Scope,
}

/// The fresh micro-cache.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub coalesce: bool,
    pub scope: super::shared::Scope,
}

/// A token bucket in front of the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    /// Tokens per second.
    pub rate: f64,
    pub burst: u32,
    pub key: RateKey,
    pub max_keys: usize,
    pub scope: super::shared::Scope,
}

/// What a rate limit counts separately.
#[derive(Debug, Clone, PartialEq)]
pub enum RateKey {
    Route,
    ClientIp,
    Header(HeaderName),
}

/// Deliberate failures for drills.
#[derive(Debug, Clone)]
pub struct FaultPolicy {
    /// Percent of requests answered at once with the status.
    pub abort: Option<(f64, StatusCode)>,
    /// Percent of requests delayed by the duration before the upstream call.
    pub delay: Option<(f64, Duration)>,
}

impl Backoff {
    /// The un-jittered delay before retry `n` (1-based): `min(max, base * 2^(n-1))`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

impl Limits {
    /// How many header fields an HTTP/1.1 head may have, in requests and in upstream
    /// answers: one per 32 bytes of `max_request_header_bytes`, at least hyper's default of
    /// 100 and at most 1,024 (hyper parses into arrays of this many entries, 32 bytes each).
    pub fn header_cap(&self) -> usize {
        (self.max_request_header_bytes / 32).clamp(100, 1024)
    }
}

impl Config {
    /// The index of the first configured route that matches, `routes.len()` for `default`.
    /// `path` is the request path as received; it is compared in its normal form (see
    /// [`super::path`]), so no spelling of a path escapes its route.
    pub fn route_index(&self, method: &Method, path: &str, headers: &HeaderMap) -> usize {
        let path = super::path::normalize(path);
        self.routes
            .iter()
            .position(|r| r.matcher.matches(method, &path, headers))
            .unwrap_or(self.routes.len())
    }

    /// The route a request takes: the first configured match, else `default`.
    pub fn route_for(&self, method: &Method, path: &str, headers: &HeaderMap) -> &Route {
        let ix = self.route_index(method, path, headers);
        self.routes.get(ix).unwrap_or(&self.default_route)
    }
}

impl Matcher {
    /// Whether a request with this method, path and headers belongs to the route. `path`
    /// must already be normal ([`super::path::normalize`]); `Config::route_index` sees to it.
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        };
        path_ok
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }
}
