//! The config file exactly as written: serde types that mirror SPEC §2 key for key.
//!
//! Every struct denies unknown keys (a typo such as `retyr:` is an error, never ignored) and
//! every key is optional, so that `validate` can tell "absent" (inherit or default) from
//! "set". Values whose shape alone can be wrong (durations, addresses, status codes,
//! methods, conditions) are parsed here, where the YAML layer still knows the line and
//! column; checks that need two values at once live in `validate`.
//!
//! Serde's `flatten` cannot be combined with `deny_unknown_fields`, which is why `RawRoute`
//! spells out the policy keys again instead of embedding `RawPolicy`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::units::{ByteSize, ConfigDuration};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<Addr>,
    pub admin_listen: Option<Addr>,
    pub worker_threads: Option<usize>,
    pub upstream: Option<RawUpstream>,
    pub limits: Option<RawLimits>,
    pub shutdown: Option<RawShutdown>,
    pub defaults: Option<RawPolicy>,
    pub routes: Option<Vec<RawRoute>>,
    pub shared: Option<super::shared::RawShared>,
    pub tracing: Option<super::tracing::RawTracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: Option<ConfigDuration>,
    pub http2: Option<bool>,
    pub host_header: Option<HostHeader>,
    pub pool_idle_timeout: Option<ConfigDuration>,
    pub pool_max_idle: Option<usize>,
    pub tls: Option<RawTls>,
    pub health_check: Option<RawHealthCheck>,
}

/// Which `Host` the upstream sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostHeader {
    /// The client's own `Host`.
    Preserve,
    /// The authority of `upstream.url`.
    Upstream,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub affects_readiness: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_concurrent_requests: Option<usize>,
    pub max_tunnels: Option<usize>,
    pub tunnel_idle_timeout: Option<ConfigDuration>,
    pub request_body_buffer: Option<ByteSize>,
    pub max_request_header_bytes: Option<ByteSize>,
    pub header_read_timeout: Option<ConfigDuration>,
    pub send_timeout: Option<ConfigDuration>,
    pub idle_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain_delay: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
}

/// The policy keys shared by `defaults` and each route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub timeout: Option<ConfigDuration>,
    pub retry: Option<RawRetry>,
    pub circuit_breaker: Option<RawBreaker>,
    /// `Some(None)`: written as `null`, which switches an inherited fallback off.
    #[serde(default, deserialize_with = "explicit_null")]
    pub fallback: Option<Option<RawFallback>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub stale_if_error: Option<Option<RawStale>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub cache: Option<Option<RawCache>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub rate_limit: Option<Option<RawRateLimit>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub fault: Option<Option<RawFault>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub hedge: Option<Option<super::hedge::RawHedge>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub concurrency: Option<Option<super::concurrency::RawConcurrency>>,
}

/// One entry of `routes`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub timeout: Option<ConfigDuration>,
    pub retry: Option<RawRetry>,
    pub circuit_breaker: Option<RawBreaker>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub fallback: Option<Option<RawFallback>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub stale_if_error: Option<Option<RawStale>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub cache: Option<Option<RawCache>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub rate_limit: Option<Option<RawRateLimit>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub fault: Option<Option<RawFault>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub hedge: Option<Option<super::hedge::RawHedge>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub concurrency: Option<Option<super::concurrency::RawConcurrency>>,
}

impl RawRoute {
    /// Splits the route into its identity and its policy overrides.
    pub fn into_parts(self) -> (Option<String>, Option<RawMatch>, RawPolicy) {
        let policy = RawPolicy {
            timeout: self.timeout,
            retry: self.retry,
            circuit_breaker: self.circuit_breaker,
            fallback: self.fallback,
            stale_if_error: self.stale_if_error,
            cache: self.cache,
            rate_limit: self.rate_limit,
            fault: self.fault,
            hedge: self.hedge,
            concurrency: self.concurrency,
        };
        (self.name, self.matcher, policy)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<MethodName>>,
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub per_try_timeout: Option<ConfigDuration>,
    pub backoff: Option<RawBackoff>,
    pub when: Option<Vec<Condition>>,
    pub methods: Option<Vec<MethodName>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub idempotency_header: Option<Option<String>>,
    pub respect_retry_after: Option<bool>,
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub base: Option<ConfigDuration>,
    pub max: Option<ConfigDuration>,
    pub jitter: Option<Jitter>,
}

/// How a backoff delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, d]`.
    Full,
    /// `d/2` plus uniform in `[0, d/2]`.
    Equal,
    /// Exactly `d`.
    None,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
    pub adaptive: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<ConfigDuration>,
    pub open_duration: Option<ConfigDuration>,
    pub half_open_requests: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub status: Option<u16>,
    pub headers: Option<BTreeMap<String, String>>,
    pub body: Option<String>,
    pub body_file: Option<PathBuf>,
    pub when: Option<Vec<Condition>>,
    /// The answer for gRPC calls (SPEC §7.7).
    pub grpc: Option<super::grpc::RawGrpcFallback>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStale {
    pub max_age: Option<ConfigDuration>,
    pub max_entries: Option<usize>,
    pub max_bytes: Option<ByteSize>,
    pub key_headers: Option<Vec<String>>,
    pub scope: Option<super::shared::Scope>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub ttl: Option<ConfigDuration>,
    pub coalesce: Option<bool>,
    pub scope: Option<super::shared::Scope>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    pub key: Option<String>,
    pub max_keys: Option<usize>,
    pub scope: Option<super::shared::Scope>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub abort: Option<RawAbort>,
    pub delay: Option<RawDelay>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbort {
    pub percent: Option<f64>,
    pub status: Option<u16>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelay {
    pub percent: Option<f64>,
    pub duration: Option<ConfigDuration>,
}

/// A socket address such as `0.0.0.0:8080` or `[::1]:9901`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct Addr(pub SocketAddr);

impl TryFrom<String> for Addr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
            .map(Addr)
            .map_err(|_| format!("`{text}` is not an address such as 0.0.0.0:8080"))
    }
}

/// An HTTP method name, upper-cased.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct MethodName(pub http::Method);

impl TryFrom<String> for MethodName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let upper = text.to_ascii_uppercase();
        if upper == "CONNECT" {
            return Err("CONNECT is never proxied".to_owned());
        }
        http::Method::from_bytes(upper.as_bytes())
            .map(MethodName)
            .map_err(|_| format!("`{text}` is not an HTTP method"))
    }
}

/// One entry of a `when` list: a failure kind or a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "ConditionText")]
pub enum Condition {
    ConnectFailure,
    Reset,
    Timeout,
    BadResponse,
    CircuitOpen,
    Overloaded,
    RateLimited,
    /// Any status from 500 to 599.
    Any5xx,
    /// One status from 400 to 599.
    Status(u16),
    /// A trailers-only gRPC answer with this `grpc-status` (`grpc-unavailable`, ...):
    /// retry conditions only (SPEC §7.7).
    Grpc(u8),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConditionText {
    Number(u16),
    Text(String),
}

impl TryFrom<ConditionText> for Condition {
    type Error = String;
    fn try_from(raw: ConditionText) -> Result<Self, String> {
        let text = match raw {
            ConditionText::Number(n) => n.to_string(),
            ConditionText::Text(t) => t,
        };
        Ok(match text.as_str() {
            "connect-failure" => Condition::ConnectFailure,
            "reset" => Condition::Reset,
            "timeout" => Condition::Timeout,
            "bad-response" => Condition::BadResponse,
            "circuit-open" => Condition::CircuitOpen,
            "overloaded" => Condition::Overloaded,
            "rate-limited" => Condition::RateLimited,
            "5xx" => Condition::Any5xx,
            other if other.starts_with("grpc-") => match crate::proxy::grpc::code_named(other) {
                Some(code) => Condition::Grpc(code),
                None => return Err(format!("`{other}` is not a known condition (gRPC ones: grpc-unavailable, grpc-resource-exhausted, grpc-deadline-exceeded, grpc-cancelled, grpc-internal)")),
            },
            other => match other.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => Condition::Status(code),
                Ok(_) => return Err(format!("status {other} is not a failure (use 400-599)")),
                Err(_) => return Err(format!("`{other}` is not a known condition")),
            },
        })
    }
}

impl Condition {
    /// The condition as written in the config, for messages.
    pub fn label(self) -> String {
        match self {
            Condition::Grpc(code) => crate::proxy::grpc::condition_name(code).to_owned(),
            other => format!("{other:?}"),
        }
    }
}

/// A token rate written `100/s` or `6000/m`, kept as tokens per second.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate(pub f64);

impl Rate {
    /// The smallest rate, one token an hour, in tokens per second. Anything slower is a
    /// switch-off in disguise, and rates like `1e-20/s` give waits no clock can hold.
    pub const MIN: f64 = 1.0 / 3600.0;
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a rate such as 100/s or 6000/m");
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: f64 = count.trim().parse().map_err(|_| bad())?;
        let per_secs = match per.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(format!("`{text}` must be more than zero"));
        }
        let rate = count / per_secs;
        // A little below MIN, so that `1/h` itself passes whatever the rounding.
        if rate < Rate::MIN * (1.0 - 1e-9) {
            return Err(format!("`{text}` is less than the smallest rate, 1/h"));
        }
        Ok(Rate(rate))
    }
}

/// Keeps "absent" (`None`) apart from "written as null" (`Some(None)`).
fn explicit_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
