//! From `RawConfig` to `Config`: defaults filled in, routes merged over `defaults`, every
//! value range-checked, fallback files read.
//!
//! Errors name the field path the way a user would point at it in the file
//! (`routes[2].retry.backoff.max`) and say what is wrong with the value. Checks that the YAML
//! layer can make (a value's shape) are already done by the time this runs; what is left
//! here needs several values at once, the file system, or a name that must be unique.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::raw::*;
use super::types::*;
use super::ConfigError;

/// Validates a parsed file. `dir` is where `body_file` paths are resolved.
pub fn validate(raw: RawConfig, dir: &Path) -> Result<Config, ConfigError> {
    let upstream = upstream(raw.upstream.unwrap_or_default(), dir)?;
    let limits = limits(raw.limits.unwrap_or_default())?;
    let shutdown = raw.shutdown.unwrap_or_default();
    let listen = raw.listen.map_or(default_addr(8080), |a| a.0);
    let admin_listen = raw.admin_listen.map_or(default_addr(9901), |a| a.0);
    if listen == admin_listen && listen.port() != 0 {
        return Err(field_err(
            "admin_listen",
            format!("{admin_listen} is also `listen`"),
        ));
    }

    let defaults = raw.defaults.unwrap_or_default();
    let default_policy = policy(&defaults, "defaults", dir)?;
    let mut warnings = Vec::new();
    warn_if_attempts_do_not_fit("default", &default_policy, &mut warnings);
    let default_route = Route {
        name: "default".to_owned(),
        matcher: Matcher::default(),
        policy: default_policy,
    };

    let mut routes: Vec<Route> = Vec::new();
    // Names taken so far: a set, not a scan of `routes`, which was quadratic in big files.
    let mut names = std::collections::HashSet::new();
    for (i, raw_route) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        let at = format!("routes[{i}]");
        let (name, raw_match, overrides) = raw_route.into_parts();
        let name = route_name(name, &at, &mut names)?;
        let matcher = matcher(raw_match, &at)?;
        let merged = merge_policy(overrides, &defaults);
        let policy = policy(&merged, &at, dir)?;
        warn_if_attempts_do_not_fit(&name, &policy, &mut warnings);
        if policy.hedge.is_some() {
            super::hedge::warn_if_never_resent(&at, &name, &matcher, &policy.retry, &mut warnings);
        }
        routes.push(Route {
            name,
            matcher,
            policy,
        });
    }

    super::reach::warn_unreachable(&routes, &mut warnings);
    super::grpc::warn_routes(upstream.http2, &default_route, &routes, &mut warnings);
    let all: Vec<&Route> = routes.iter().chain([&default_route]).collect();
    let shared = super::shared::validate(raw.shared, &all)?;
    Ok(Config {
        source: None,
        listen,
        admin_listen,
        worker_threads: worker_threads(raw.worker_threads)?,
        upstream,
        limits,
        shutdown: ShutdownPolicy {
            drain_delay: dur(shutdown.drain_delay, 0),
            timeout: dur(shutdown.timeout, 30_000),
        },
        routes,
        default_route,
        warnings,
        shared,
        tracing: super::tracing::validate(raw.tracing)?,
    })
}

/// The most worker threads accepted. Each one reserves a 2 MiB stack and its own run queue
/// (10,000 ran at 131 MB and 100,000 aborted after seconds of spawning), and a sidecar in
/// front of one backend gains nothing past its CPUs: 1024 is above any CPU count a sidecar
/// is given, and far below where threads cost more than they bring.
pub const MAX_WORKER_THREADS: usize = 1024;

fn worker_threads(value: Option<usize>) -> Result<usize, ConfigError> {
    match value.unwrap_or(0) {
        n if n > MAX_WORKER_THREADS => Err(field_err(
            "worker_threads",
            format!("{n} is over {MAX_WORKER_THREADS} (0 means the CPUs this process may use)"),
        )),
        n => Ok(n),
    }
}

fn default_addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], port))
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(field, message)
}

fn dur(value: Option<super::units::ConfigDuration>, default_ms: u64) -> Duration {
    value.map_or(Duration::from_millis(default_ms), |d| d.0)
}

fn positive(value: Duration, field: &str) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(field_err(field, "must be longer than 0s"));
    }
    Ok(value)
}

fn upstream(raw: RawUpstream, dir: &Path) -> Result<Upstream, ConfigError> {
    let text = raw.url.ok_or_else(|| {
        field_err(
            "upstream.url",
            "is required (set it in the file, with --upstream or OUTRIGGER_UPSTREAM)",
        )
    })?;
    let (url, base_path) = upstream_url(&text)?;
    let raw_tls = raw.tls.unwrap_or_default();
    let tls = if url.scheme_str() == Some("https") {
        Some(tls(raw_tls, dir)?)
    } else if raw_tls.ca_file.is_some()
        || raw_tls.server_name.is_some()
        || raw_tls.cert_file.is_some()
        || raw_tls.key_file.is_some()
    {
        return Err(field_err(
            "upstream.tls",
            "is only used with https:// upstreams",
        ));
    } else {
        None
    };
    let health_check = raw.health_check.map(health_check).transpose()?;
    Ok(Upstream {
        url,
        base_path,
        connect_timeout: positive(dur(raw.connect_timeout, 1000), "upstream.connect_timeout")?,
        http2: raw.http2.unwrap_or(false),
        host_header: raw.host_header.unwrap_or(HostHeader::Preserve),
        pool_idle_timeout: dur(raw.pool_idle_timeout, 90_000),
        pool_max_idle: raw.pool_max_idle.unwrap_or(64),
        tls,
        health_check,
    })
}

fn tls(raw: RawTls, dir: &Path) -> Result<Tls, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let ca_certs = match raw.ca_file {
        None => None,
        Some(file) => {
            let path = dir.join(&file);
            let at = "upstream.tls.ca_file";
            let pem = std::fs::read(&path)
                .map_err(|e| field_err(at, format!("cannot read {}: {e}", path.display())))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| field_err(at, format!("{} is not PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(field_err(
                    at,
                    format!("{} holds no certificate", path.display()),
                ));
            }
            Some(certs)
        }
    };
    let server_name = match raw.server_name {
        None => None,
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            field_err(
                "upstream.tls.server_name",
                format!("`{name}` is not a DNS name or IP address"),
            )
        })?),
    };
    Ok(Tls {
        ca_certs,
        server_name,
        client_cert: super::client_cert::load(raw.cert_file, raw.key_file, dir)?,
    })
}

/// Checks an upstream URL; returns it with its path prefix (no trailing slash).
///
/// Userinfo (`http://user:secret@host`) is refused, not sent: outrigger adds no
/// `Authorization` of its own, and a URL holding a password would end up in logs. No error
/// message repeats the userinfo (see [`redact_userinfo`]), since a failed reload is logged.
pub fn upstream_url(text: &str) -> Result<(Uri, String), ConfigError> {
    let at = "upstream.url";
    let shown = redact_userinfo(text);
    let url: Uri = text.parse().map_err(|_| {
        field_err(
            at,
            format!("`{shown}` is not a URL such as http://127.0.0.1:3000"),
        )
    })?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(field_err(
                at,
                format!("`{shown}` must start with http:// or https://"),
            ))
        }
    }
    let Some(authority) = url.authority().filter(|a| !a.host().is_empty()) else {
        return Err(field_err(at, format!("`{shown}` has no host")));
    };
    if authority.as_str().contains('@') {
        return Err(field_err(
            at,
            format!("`{shown}` has user information (user:password@); outrigger does not send credentials upstream, so remove it (an Authorization header from the client is forwarded)"),
        ));
    }
    if let Some(port) = port_text(authority.as_str()) {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(field_err(
                at,
                format!("`{shown}` has port `{port}`; a port is 1 to 65535"),
            ));
        }
    }
    if url.query().is_some() {
        return Err(field_err(at, format!("`{shown}` must not have a query")));
    }
    let base_path = url.path().trim_end_matches('/').to_owned();
    Ok((url, base_path))
}

/// The port as written after the host (`[::1]:80` or `host:80`), if a `:` is there at all.
fn port_text(authority: &str) -> Option<&str> {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    after_host.rfind(':').map(|i| &after_host[i + 1..])
}

/// The URL text with any `user:password@` replaced by `***@`, for error messages.
pub fn redact_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &text[..start], &text[start + at + 1..]).into(),
        None => text.into(),
    }
}

fn health_check(raw: RawHealthCheck) -> Result<HealthCheck, ConfigError> {
    let path = raw.path.unwrap_or_else(|| "/healthz".to_owned());
    if !path.starts_with('/') {
        return Err(field_err(
            "upstream.health_check.path",
            format!("`{path}` must start with /"),
        ));
    }
    // The probe sends it as the request target: it must be a valid URI path (no spaces or
    // control characters; write them percent-encoded).
    if path.parse::<http::uri::PathAndQuery>().is_err() || path.contains('#') {
        return Err(field_err(
            "upstream.health_check.path",
            format!(
                "`{}` is not a valid URI path (percent-encode spaces and other special characters)",
                path.escape_debug()
            ),
        ));
    }
    let interval = positive(dur(raw.interval, 5000), "upstream.health_check.interval")?;
    let timeout = positive(dur(raw.timeout, 1000), "upstream.health_check.timeout")?;
    let healthy_threshold = at_least_one(
        raw.healthy_threshold,
        2,
        "upstream.health_check.healthy_threshold",
    )?;
    let unhealthy_threshold = at_least_one(
        raw.unhealthy_threshold,
        3,
        "upstream.health_check.unhealthy_threshold",
    )?;
    Ok(HealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        affects_readiness: raw.affects_readiness.unwrap_or(false),
    })
}

fn at_least_one(value: Option<u32>, default: u32, field: &str) -> Result<u32, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(field_err(field, "must be at least 1")),
        n => Ok(n),
    }
}

fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let max_concurrent_requests = raw.max_concurrent_requests.unwrap_or(1024);
    if max_concurrent_requests == 0 {
        return Err(field_err(
            "limits.max_concurrent_requests",
            "must be at least 1",
        ));
    }
    let header_bytes = raw.max_request_header_bytes.map_or(64 << 10, |s| s.0);
    if !(8192..=(16 << 20)).contains(&header_bytes) {
        return Err(field_err(
            "limits.max_request_header_bytes",
            format!("{header_bytes} bytes is outside 8KiB..16MiB"),
        ));
    }
    let body_buffer = raw.request_body_buffer.map_or(64 << 10, |s| s.0);
    if body_buffer > (64 << 20) {
        return Err(field_err(
            "limits.request_body_buffer",
            format!("{body_buffer} bytes is over 64MiB; large bodies should stream"),
        ));
    }
    let max_tunnels = raw.max_tunnels.unwrap_or(1024);
    if max_tunnels == 0 {
        return Err(field_err("limits.max_tunnels", "must be at least 1"));
    }
    Ok(Limits {
        max_concurrent_requests,
        max_tunnels,
        tunnel_idle_timeout: positive(
            dur(raw.tunnel_idle_timeout, 3_600_000),
            "limits.tunnel_idle_timeout",
        )?,
        request_body_buffer: body_buffer as usize,
        max_request_header_bytes: header_bytes as usize,
        header_read_timeout: positive(
            dur(raw.header_read_timeout, 10_000),
            "limits.header_read_timeout",
        )?,
        send_timeout: positive(dur(raw.send_timeout, 30_000), "limits.send_timeout")?,
        idle_timeout: positive(dur(raw.idle_timeout, 60_000), "limits.idle_timeout")?,
    })
}

fn route_name(
    name: Option<String>,
    at: &str,
    earlier: &mut std::collections::HashSet<String>,
) -> Result<String, ConfigError> {
    let name = name.ok_or_else(|| field_err(format!("{at}.name"), "is required"))?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(field_err(
            format!("{at}.name"),
            format!("`{name}` must be 1-64 letters, digits, `-`, `_` or `.`"),
        ));
    }
    if name == "default" {
        return Err(field_err(
            format!("{at}.name"),
            "`default` is reserved for requests that match no route",
        ));
    }
    if !earlier.insert(name.clone()) {
        return Err(field_err(
            format!("{at}.name"),
            format!("`{name}` is used by an earlier route"),
        ));
    }
    Ok(name)
}

fn matcher(raw: Option<RawMatch>, at: &str) -> Result<Matcher, ConfigError> {
    let raw = raw.unwrap_or_default();
    let path = match (raw.path, raw.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(field_err(
                format!("{at}.match"),
                "give `path` or `path_prefix`, not both",
            ))
        }
        (Some(p), None) => PathMatch::Exact(route_path(p, &format!("{at}.match.path"))?),
        (None, Some(p)) => {
            let p = route_path(p, &format!("{at}.match.path_prefix"))?;
            PathMatch::Prefix(p.trim_end_matches('/').to_owned())
        }
        (None, None) => PathMatch::Any,
    };
    let methods = raw
        .methods
        .map(|ms| ms.into_iter().map(|m| m.0).collect::<Vec<Method>>());
    if methods.as_ref().is_some_and(Vec::is_empty) {
        return Err(field_err(
            format!("{at}.match.methods"),
            "`[]` matches no request; leave `methods` out to match every method",
        ));
    }
    let headers = header_pairs(
        raw.headers.unwrap_or_default(),
        &format!("{at}.match.headers"),
    )?;
    Ok(Matcher {
        path,
        methods,
        headers: headers.into_iter().collect(),
    })
}

/// A route's path, in the normal form request paths are compared in.
fn route_path(p: String, field: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(field_err(field, format!("`{p}` must start with /")));
    }
    Ok(super::path::normalize(&p).into_owned())
}

fn header_pairs(
    raw: BTreeMap<String, String>,
    field: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    raw.into_iter()
        .map(|(name, value)| {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| field_err(field, format!("`{name}` is not a header name")))?;
            let v = HeaderValue::from_str(&value)
                .map_err(|_| field_err(format!("{field}.{name}"), "is not a valid header value"))?;
            Ok((n, v))
        })
        .collect()
}

/// Lays a route's partial overrides over `defaults`, key by key.
fn merge_policy(route: RawPolicy, defaults: &RawPolicy) -> RawPolicy {
    RawPolicy {
        timeout: route.timeout.or(defaults.timeout),
        retry: Some(merge_retry(route.retry, defaults.retry.as_ref())),
        circuit_breaker: Some(merge_breaker(
            route.circuit_breaker,
            defaults.circuit_breaker.as_ref(),
        )),
        fallback: route.fallback.or_else(|| defaults.fallback.clone()),
        stale_if_error: match (route.stale_if_error, &defaults.stale_if_error) {
            (Some(Some(r)), Some(Some(d))) => Some(Some(merge_stale(r, d))),
            (Some(r), _) => Some(r),
            (None, d) => d.clone(),
        },
        cache: route.cache.or_else(|| defaults.cache.clone()),
        rate_limit: route.rate_limit.or_else(|| defaults.rate_limit.clone()),
        fault: route.fault.or_else(|| defaults.fault.clone()),
        hedge: route.hedge.or_else(|| defaults.hedge.clone()),
        concurrency: route.concurrency.or_else(|| defaults.concurrency.clone()),
    }
}

fn merge_retry(route: Option<RawRetry>, defaults: Option<&RawRetry>) -> RawRetry {
    let (r, d) = (
        route.unwrap_or_default(),
        defaults.cloned().unwrap_or_default(),
    );
    let (rb, db) = (r.backoff.unwrap_or_default(), d.backoff.unwrap_or_default());
    let (rg, dg) = (r.budget.unwrap_or_default(), d.budget.unwrap_or_default());
    RawRetry {
        attempts: r.attempts.or(d.attempts),
        per_try_timeout: r.per_try_timeout.or(d.per_try_timeout),
        backoff: Some(RawBackoff {
            base: rb.base.or(db.base),
            max: rb.max.or(db.max),
            jitter: rb.jitter.or(db.jitter),
        }),
        when: r.when.or(d.when),
        methods: r.methods.or(d.methods),
        idempotency_header: r.idempotency_header.or(d.idempotency_header),
        respect_retry_after: r.respect_retry_after.or(d.respect_retry_after),
        budget: Some(RawBudget {
            ratio: rg.ratio.or(dg.ratio),
            min_per_second: rg.min_per_second.or(dg.min_per_second),
            adaptive: rg.adaptive.or(dg.adaptive),
        }),
    }
}

fn merge_breaker(route: Option<RawBreaker>, defaults: Option<&RawBreaker>) -> RawBreaker {
    let (r, d) = (
        route.unwrap_or_default(),
        defaults.cloned().unwrap_or_default(),
    );
    RawBreaker {
        enabled: r.enabled.or(d.enabled),
        failure_ratio: r.failure_ratio.or(d.failure_ratio),
        min_requests: r.min_requests.or(d.min_requests),
        window: r.window.or(d.window),
        open_duration: r.open_duration.or(d.open_duration),
        half_open_requests: r.half_open_requests.or(d.half_open_requests),
    }
}

fn merge_stale(r: RawStale, d: &RawStale) -> RawStale {
    RawStale {
        max_age: r.max_age.or(d.max_age),
        max_entries: r.max_entries.or(d.max_entries),
        max_bytes: r.max_bytes.or(d.max_bytes),
        key_headers: r.key_headers.or_else(|| d.key_headers.clone()),
        scope: r.scope.or(d.scope),
    }
}

fn policy(raw: &RawPolicy, at: &str, dir: &Path) -> Result<Policy, ConfigError> {
    let timeout = positive(dur(raw.timeout, 10_000), &format!("{at}.timeout"))?;
    let fallback = match raw.fallback.clone().flatten() {
        Some(f) => Some(fallback(f, &format!("{at}.fallback"), dir)?),
        None => None,
    };
    let stale_if_error = match raw.stale_if_error.clone().flatten() {
        Some(s) => Some(stale(s, &format!("{at}.stale_if_error"))?),
        None => None,
    };
    let cache = match raw.cache.clone().flatten() {
        Some(c) => Some(CachePolicy {
            ttl: positive(dur(c.ttl, 1000), &format!("{at}.cache.ttl"))?,
            coalesce: c.coalesce.unwrap_or(true),
            scope: c.scope.unwrap_or_default(),
        }),
        None => None,
    };
    let rate_limit = match raw.rate_limit.clone().flatten() {
        Some(r) => Some(rate_limit(r, &format!("{at}.rate_limit"))?),
        None => None,
    };
    let fault = match raw.fault.clone().flatten() {
        Some(f) => Some(fault(f, &format!("{at}.fault"))?),
        None => None,
    };
    let concurrency = match raw.concurrency.clone().flatten() {
        Some(c) => Some(super::concurrency::validate(
            c,
            &format!("{at}.concurrency"),
        )?),
        None => None,
    };
    Ok(Policy {
        timeout,
        retry: retry(
            raw.retry.clone().unwrap_or_default(),
            &format!("{at}.retry"),
        )?,
        circuit_breaker: breaker(
            raw.circuit_breaker.clone().unwrap_or_default(),
            &format!("{at}.circuit_breaker"),
        )?,
        fallback,
        stale_if_error,
        cache,
        rate_limit,
        fault,
        hedge: raw.hedge.clone().flatten().map(Into::into),
        concurrency,
    })
}

const DEFAULT_METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PUT,
    Method::DELETE,
    Method::TRACE,
];

fn retry(raw: RawRetry, at: &str) -> Result<RetryPolicy, ConfigError> {
    let attempts = raw.attempts.unwrap_or(3);
    if !(1..=10).contains(&attempts) {
        return Err(field_err(
            format!("{at}.attempts"),
            format!("{attempts} is outside 1..10"),
        ));
    }
    let per_try_timeout = positive(
        dur(raw.per_try_timeout, 3000),
        &format!("{at}.per_try_timeout"),
    )?;
    let b = raw.backoff.unwrap_or_default();
    let backoff = Backoff {
        base: dur(b.base, 10),
        max: dur(b.max, 2000),
        jitter: b.jitter.unwrap_or(Jitter::Full),
    };
    if backoff.max < backoff.base {
        return Err(field_err(
            format!("{at}.backoff.max"),
            format!(
                "{} is less than base {}",
                super::units::format_duration(backoff.max),
                super::units::format_duration(backoff.base)
            ),
        ));
    }
    let when = raw.when.unwrap_or_else(|| {
        vec![
            Condition::ConnectFailure,
            Condition::Reset,
            Condition::Timeout,
            Condition::Status(502),
            Condition::Status(503),
            Condition::Status(504),
        ]
    });
    if let Some(c) = when.iter().find(|c| {
        matches!(
            c,
            Condition::BadResponse
                | Condition::CircuitOpen
                | Condition::Overloaded
                | Condition::RateLimited
        )
    }) {
        return Err(field_err(format!("{at}.when"), format!("{c:?} is not a retry condition (use connect-failure, reset, timeout, 5xx or a status 400-599)")));
    }
    let idempotency_header = match raw.idempotency_header {
        None => Some(HeaderName::from_static("idempotency-key")),
        Some(None) => None,
        Some(Some(name)) => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            field_err(
                format!("{at}.idempotency_header"),
                format!("`{name}` is not a header name"),
            )
        })?),
    };
    let g = raw.budget.unwrap_or_default();
    let ratio = g.ratio.unwrap_or(0.2);
    if !(0.0..=1000.0).contains(&ratio) {
        return Err(field_err(
            format!("{at}.budget.ratio"),
            format!("{ratio} is outside 0..1000"),
        ));
    }
    Ok(RetryPolicy {
        attempts,
        per_try_timeout,
        backoff,
        when,
        methods: raw.methods.map_or_else(
            || DEFAULT_METHODS.to_vec(),
            |ms| ms.into_iter().map(|m| m.0).collect(),
        ),
        idempotency_header,
        respect_retry_after: raw.respect_retry_after.unwrap_or(true),
        budget: BudgetPolicy {
            ratio,
            min_per_second: g.min_per_second.unwrap_or(10),
            adaptive: g.adaptive.unwrap_or(true),
        },
    })
}

fn breaker(raw: RawBreaker, at: &str) -> Result<Option<BreakerPolicy>, ConfigError> {
    let failure_ratio = raw.failure_ratio.unwrap_or(0.5);
    if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
        return Err(field_err(
            format!("{at}.failure_ratio"),
            format!("{failure_ratio} is outside (0, 1]"),
        ));
    }
    let policy = BreakerPolicy {
        failure_ratio,
        min_requests: at_least_one(raw.min_requests, 20, &format!("{at}.min_requests"))?,
        window: positive(dur(raw.window, 10_000), &format!("{at}.window"))?,
        open_duration: positive(dur(raw.open_duration, 5000), &format!("{at}.open_duration"))?,
        half_open_requests: at_least_one(
            raw.half_open_requests,
            1,
            &format!("{at}.half_open_requests"),
        )?,
    };
    Ok(raw.enabled.unwrap_or(true).then_some(policy))
}

fn status(code: u16, field: &str) -> Result<StatusCode, ConfigError> {
    match StatusCode::from_u16(code) {
        Ok(s) if (200..=599).contains(&code) => Ok(s),
        _ => Err(field_err(
            field,
            format!("{code} is not a status from 200 to 599"),
        )),
    }
}

/// Headers a fallback may not set: the proxy frames the body itself (a wrong
/// `content-length` desynchronises the client's keep-alive connection), and hop-by-hop
/// headers (SPEC §3) describe one connection, not the answer.
const FRAMING_HEADERS: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

fn fallback(raw: RawFallback, at: &str, dir: &Path) -> Result<Fallback, ConfigError> {
    let grpc = super::grpc::fallback(raw.grpc, at, dir)?;
    if let Some(when) = &raw.when {
        super::grpc::refuse_in_fallback(when, at)?;
    }
    let body = match (raw.body, raw.body_file) {
        (Some(_), Some(_)) => return Err(field_err(at, "give `body` or `body_file`, not both")),
        (Some(text), None) => Bytes::from(text),
        (None, Some(file)) => {
            let path = dir.join(&file);
            let data = std::fs::read(&path).map_err(|e| {
                field_err(
                    format!("{at}.body_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Bytes::from(data)
        }
        (None, None) => Bytes::new(),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in header_pairs(raw.headers.unwrap_or_default(), &format!("{at}.headers"))? {
        if FRAMING_HEADERS.contains(&name.as_str()) {
            return Err(field_err(
                format!("{at}.headers.{name}"),
                "is set by the proxy (it frames the response or belongs to one connection); remove it",
            ));
        }
        headers.insert(name, value);
    }
    Ok(Fallback {
        status: status(raw.status.unwrap_or(200), &format!("{at}.status"))?,
        headers,
        body,
        when: raw.when.unwrap_or_else(|| {
            vec![
                Condition::ConnectFailure,
                Condition::Reset,
                Condition::Timeout,
                Condition::BadResponse,
                Condition::CircuitOpen,
                Condition::Overloaded,
                Condition::Status(502),
                Condition::Status(503),
                Condition::Status(504),
            ]
        }),
        grpc,
    })
}

const MAX_STORED_RESPONSE: u64 = 1 << 20;

fn stale(raw: RawStale, at: &str) -> Result<StalePolicy, ConfigError> {
    let max_bytes = raw.max_bytes.map_or(64 << 20, |s| s.0);
    if max_bytes < MAX_STORED_RESPONSE {
        return Err(field_err(
            format!("{at}.max_bytes"),
            format!("{max_bytes} bytes is less than 1MiB"),
        ));
    }
    let key_headers = raw
        .key_headers
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                field_err(
                    format!("{at}.key_headers"),
                    format!("`{n}` is not a header name"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let max_entries = raw.max_entries.unwrap_or(10_000);
    if max_entries == 0 {
        return Err(field_err(format!("{at}.max_entries"), "must be at least 1"));
    }
    Ok(StalePolicy {
        max_age: positive(dur(raw.max_age, 300_000), &format!("{at}.max_age"))?,
        max_entries,
        max_bytes,
        key_headers,
        scope: raw.scope.unwrap_or_default(),
    })
}

fn rate_limit(raw: RawRateLimit, at: &str) -> Result<RateLimitPolicy, ConfigError> {
    let rate = raw
        .rate
        .ok_or_else(|| field_err(format!("{at}.rate"), "is required (e.g. 100/s)"))?
        .0;
    let key = match raw.key.as_deref().unwrap_or("route") {
        "route" => RateKey::Route,
        "client-ip" => RateKey::ClientIp,
        other => match other.strip_prefix("header:") {
            Some(name) => {
                RateKey::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    field_err(
                        format!("{at}.key"),
                        format!("`{name}` is not a header name"),
                    )
                })?)
            }
            None => {
                return Err(field_err(
                    format!("{at}.key"),
                    format!("`{other}` is not route, client-ip or header:NAME"),
                ))
            }
        },
    };
    let burst = raw
        .burst
        .unwrap_or_else(|| (rate * 2.0).ceil().max(1.0) as u32);
    if burst == 0 {
        return Err(field_err(format!("{at}.burst"), "must be at least 1"));
    }
    Ok(RateLimitPolicy {
        rate,
        burst,
        key,
        max_keys: raw.max_keys.unwrap_or(100_000).max(1),
        scope: raw.scope.unwrap_or_default(),
    })
}

fn percent(value: Option<f64>, field: &str) -> Result<f64, ConfigError> {
    let p = value.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&p) {
        return Err(field_err(field, format!("{p} is outside 0..100")));
    }
    Ok(p)
}

fn fault(raw: RawFault, at: &str) -> Result<FaultPolicy, ConfigError> {
    let abort = match raw.abort {
        Some(a) => Some((
            percent(a.percent, &format!("{at}.abort.percent"))?,
            status(a.status.unwrap_or(503), &format!("{at}.abort.status"))?,
        )),
        None => None,
    };
    let delay = match raw.delay {
        Some(d) => Some((
            percent(d.percent, &format!("{at}.delay.percent"))?,
            dur(d.duration, 0),
        )),
        None => None,
    };
    Ok(FaultPolicy { abort, delay })
}

/// The longest a route's attempts can take: every try to its per-try timeout, every
/// backoff at its cap before jitter.
fn warn_if_attempts_do_not_fit(name: &str, policy: &Policy, warnings: &mut Vec<String>) {
    let r = &policy.retry;
    let tries = r.per_try_timeout * r.attempts;
    let backoff: Duration = (1..r.attempts).map(|n| r.backoff.ceiling(n)).sum();
    if tries + backoff > policy.timeout {
        warnings.push(format!(
            "route `{name}`: {} attempts x per_try_timeout {} plus backoff {} do not fit in timeout {}; later attempts will be cut short",
            r.attempts,
            super::units::format_duration(r.per_try_timeout),
            super::units::format_duration(backoff),
            super::units::format_duration(policy.timeout),
        ));
    }
}
