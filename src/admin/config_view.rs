//! `GET /config` (SPEC §7.6): the configuration in force, as JSON, secrets redacted.
//!
//! It renders the validated [`Config`], not the file: what an operator sees is what the
//! proxy reads after the built-in defaults, the command line, the environment and the last
//! reload were applied, which is the question "what did my reload actually do?" asks.
//!
//! Why by hand and not `#[derive(Serialize)]` on the config types: those types hold
//! `Uri`, `HeaderName`, certificates and parsed TLS names that serde cannot write as they
//! are, and the redaction decision belongs in one reviewed place rather than spread over
//! attributes. What is redacted:
//! - a password in any URL's userinfo (`http://user:***@host`), e.g. a Redis URL;
//! - header values that are credentials: in a route's `match.headers` and a fallback's
//!   `headers`, the value of `authorization`, `proxy-authorization`, `cookie`,
//!   `set-cookie`, of every header a stale store names in `key_headers` (those are the
//!   headers whose values partition private answers), and of every header whose name says
//!   it holds a credential (`x-api-key`, `x-auth-token`, `x-client-secret`, ...: a name
//!   with `key`, `token`, `secret`, `auth`, `pass`, `session` or `signature` in it), so
//!   that a route matched on an API key does not show it;
//! - certificates and keys are never rendered, only whether one is configured.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::hedge::HedgeDelay;
use crate::config::shared::Scope;
use crate::config::{Condition, Config, PathMatch, Policy, RateKey, Route};
use crate::vocab::json::escape_into;

/// What redacted values read as.
pub const REDACTED: &str = "[redacted]";

/// Headers whose values are credentials wherever they appear.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// The JSON document `GET /config` answers with.
pub fn render(config: &Config) -> String {
    let secret = secret_headers(config);
    let mut o = Obj::new();
    o.str(
        "source",
        &config
            .source
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string()),
    );
    o.str("listen", &config.listen.to_string());
    o.str("admin_listen", &config.admin_listen.to_string());
    o.num("worker_threads", config.worker_threads);
    o.raw("upstream", &upstream(config));
    o.raw("limits", &limits(config));
    let mut s = Obj::new();
    s.dur("drain_delay", config.shutdown.drain_delay);
    s.dur("timeout", config.shutdown.timeout);
    o.raw("shutdown", &s.end());
    let routes: Vec<String> = config.routes.iter().map(|r| route(r, &secret)).collect();
    o.raw("routes", &format!("[{}]", routes.join(",")));
    o.raw("defaults", &route(&config.default_route, &secret));
    match &config.shared {
        None => o.raw("shared", "null"),
        Some(sh) => {
            let mut so = Obj::new();
            // `RedisUrl` prints itself with the password redacted.
            so.str("redis", &sh.redis.to_string());
            so.str("namespace", &sh.namespace);
            so.dur("timeout", sh.timeout);
            o.raw("shared", &so.end());
        }
    }
    match &config.tracing {
        None => o.raw("tracing", "null"),
        Some(t) => {
            let mut tr = Obj::new();
            tr.str("otlp_endpoint", &redact_url(&t.otlp_endpoint));
            tr.float("sample_ratio", t.sample_ratio);
            tr.str("service_name", &t.service_name);
            o.raw("tracing", &tr.end());
        }
    }
    o.end()
}

/// Redacts the password of a URL's userinfo, if it has one.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}@{host}{tail}"),
        None => url.to_owned(),
    }
}

fn secret_headers(config: &Config) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = SECRET_HEADERS
        .iter()
        .map(|n| HeaderName::from_static(n))
        .collect();
    let routes = config.routes.iter().chain(Some(&config.default_route));
    for stale in routes.filter_map(|r| r.policy.stale_if_error.as_ref()) {
        names.extend(stale.key_headers.iter().cloned());
    }
    names
}

fn upstream(config: &Config) -> String {
    let u = &config.upstream;
    let mut o = Obj::new();
    o.str("url", &redact_url(&u.url.to_string()));
    o.dur("connect_timeout", u.connect_timeout);
    o.bool("http2", u.http2);
    o.str(
        "host_header",
        &format!("{:?}", u.host_header).to_lowercase(),
    );
    o.dur("pool_idle_timeout", u.pool_idle_timeout);
    o.num("pool_max_idle", u.pool_max_idle);
    if let Some(tls) = &u.tls {
        let mut t = Obj::new();
        t.bool("ca_file", tls.ca_certs.is_some());
        if let Some(name) = &tls.server_name {
            t.str("server_name", &name.to_str());
        }
        t.bool("client_cert", tls.client_cert.is_some());
        o.raw("tls", &t.end());
    }
    if let Some(h) = &u.health_check {
        let mut c = Obj::new();
        c.str("path", &h.path);
        c.dur("interval", h.interval);
        c.dur("timeout", h.timeout);
        c.num("healthy_threshold", h.healthy_threshold);
        c.num("unhealthy_threshold", h.unhealthy_threshold);
        c.bool("affects_readiness", h.affects_readiness);
        o.raw("health_check", &c.end());
    }
    o.end()
}

fn limits(config: &Config) -> String {
    let l = &config.limits;
    let mut o = Obj::new();
    o.num("max_concurrent_requests", l.max_concurrent_requests);
    o.num("max_tunnels", l.max_tunnels);
    o.dur("tunnel_idle_timeout", l.tunnel_idle_timeout);
    o.num("request_body_buffer", l.request_body_buffer);
    o.num("max_request_header_bytes", l.max_request_header_bytes);
    o.dur("header_read_timeout", l.header_read_timeout);
    o.dur("send_timeout", l.send_timeout);
    o.dur("idle_timeout", l.idle_timeout);
    o.end()
}

fn route(r: &Route, secret: &[HeaderName]) -> String {
    let mut o = Obj::new();
    o.str("name", &r.name);
    let mut m = Obj::new();
    match &r.matcher.path {
        PathMatch::Any => {}
        PathMatch::Exact(p) => m.str("path", p),
        PathMatch::Prefix(p) => m.str("path_prefix", if p.is_empty() { "/" } else { p }),
    }
    if let Some(methods) = &r.matcher.methods {
        m.list("methods", methods.iter().map(|m| m.as_str()));
    }
    if !r.matcher.headers.is_empty() {
        let pairs = r.matcher.headers.iter().map(|(n, v)| (n, v));
        m.raw("headers", &headers(pairs, secret));
    }
    o.raw("match", &m.end());
    policy(&mut o, &r.policy, secret);
    o.end()
}

fn policy(o: &mut Obj, p: &Policy, secret: &[HeaderName]) {
    o.dur("timeout", p.timeout);
    let r = &p.retry;
    let mut retry = Obj::new();
    retry.num("attempts", r.attempts);
    retry.dur("per_try_timeout", r.per_try_timeout);
    let mut b = Obj::new();
    b.dur("base", r.backoff.base);
    b.dur("max", r.backoff.max);
    b.str("jitter", &format!("{:?}", r.backoff.jitter).to_lowercase());
    retry.raw("backoff", &b.end());
    retry.list("when", r.when.iter().map(condition));
    retry.list("methods", r.methods.iter().map(|m| m.as_str()));
    if let Some(h) = &r.idempotency_header {
        retry.str("idempotency_header", h.as_str());
    }
    retry.bool("respect_retry_after", r.respect_retry_after);
    let mut budget = Obj::new();
    budget.float("ratio", r.budget.ratio);
    budget.num("min_per_second", r.budget.min_per_second);
    budget.bool("adaptive", r.budget.adaptive);
    retry.raw("budget", &budget.end());
    o.raw("retry", &retry.end());
    let mut cb = Obj::new();
    cb.bool("enabled", p.circuit_breaker.is_some());
    if let Some(c) = &p.circuit_breaker {
        cb.float("failure_ratio", c.failure_ratio);
        cb.num("min_requests", c.min_requests);
        cb.dur("window", c.window);
        cb.dur("open_duration", c.open_duration);
        cb.num("half_open_requests", c.half_open_requests);
    }
    o.raw("circuit_breaker", &cb.end());
    if let Some(f) = &p.fallback {
        let mut fb = Obj::new();
        fb.num("status", f.status.as_u16());
        fb.raw("headers", &headers(header_pairs(&f.headers), secret));
        fb.str("body", &String::from_utf8_lossy(&f.body));
        fb.list("when", f.when.iter().map(condition));
        if let Some(g) = &f.grpc {
            let mut go = Obj::new();
            go.num("status", g.status);
            if let Some(m) = &g.message {
                go.str("message", m);
            }
            go.bool("message_file", g.framed.is_some());
            fb.raw("grpc", &go.end());
        }
        o.raw("fallback", &fb.end());
    }
    if let Some(s) = &p.stale_if_error {
        let mut st = Obj::new();
        st.dur("max_age", s.max_age);
        st.num("max_entries", s.max_entries);
        st.num("max_bytes", s.max_bytes);
        st.list("key_headers", s.key_headers.iter().map(|h| h.as_str()));
        st.str("scope", scope(s.scope));
        o.raw("stale_if_error", &st.end());
    }
    if let Some(c) = &p.cache {
        let mut ca = Obj::new();
        ca.dur("ttl", c.ttl);
        ca.bool("coalesce", c.coalesce);
        ca.str("scope", scope(c.scope));
        o.raw("cache", &ca.end());
    }
    if let Some(rl) = &p.rate_limit {
        let mut r = Obj::new();
        r.float("rate", rl.rate);
        r.num("burst", rl.burst);
        let key = match &rl.key {
            RateKey::Route => "route".to_owned(),
            RateKey::ClientIp => "client_ip".to_owned(),
            RateKey::Header(h) => format!("header:{h}"),
        };
        r.str("key", &key);
        r.num("max_keys", rl.max_keys);
        r.str("scope", scope(rl.scope));
        o.raw("rate_limit", &r.end());
    }
    if let Some(h) = &p.hedge {
        let mut ho = Obj::new();
        match h.delay {
            HedgeDelay::Auto => ho.str("delay", "auto"),
            HedgeDelay::Fixed(d) => ho.dur("delay", d),
        }
        ho.float("max_ratio", h.max_ratio);
        o.raw("hedge", &ho.end());
    }
    if let Some(c) = &p.concurrency {
        let mut co = Obj::new();
        co.num("initial", c.bounds.initial);
        co.num("min", c.bounds.min);
        co.num("max", c.bounds.max);
        co.dur("queue_timeout", c.queue_timeout);
        o.raw("concurrency", &co.end());
    }
    if let Some(f) = &p.fault {
        let mut fo = Obj::new();
        if let Some((percent, status)) = f.abort {
            fo.raw(
                "abort",
                &format!(r#"{{"percent":{percent},"status":{}}}"#, status.as_u16()),
            );
        }
        if let Some((percent, d)) = f.delay {
            fo.raw(
                "delay",
                &format!(r#"{{"percent":{percent},"duration":"{}"}}"#, duration(d)),
            );
        }
        o.raw("fault", &fo.end());
    }
}

fn header_pairs(map: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    map.iter()
}

fn headers<'a>(
    pairs: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    secret: &[HeaderName],
) -> String {
    let mut o = Obj::new();
    for (name, value) in pairs {
        if secret.contains(name) || looks_secret(name) {
            o.str(name.as_str(), REDACTED);
        } else {
            o.str(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        }
    }
    o.end()
}

/// Whether a header's name says its value is a credential.
fn looks_secret(name: &HeaderName) -> bool {
    const HINTS: [&str; 7] = [
        "key",
        "token",
        "secret",
        "auth",
        "pass",
        "session",
        "signature",
    ];
    HINTS.iter().any(|hint| name.as_str().contains(hint))
}

fn scope(s: Scope) -> &'static str {
    match s {
        Scope::Local => "local",
        Scope::Shared => "shared",
    }
}

/// A `when` condition as the config file spells it.
fn condition(c: &Condition) -> String {
    match c {
        Condition::ConnectFailure => "connect-failure".into(),
        Condition::Reset => "reset".into(),
        Condition::Timeout => "timeout".into(),
        Condition::BadResponse => "bad-response".into(),
        Condition::CircuitOpen => "circuit-open".into(),
        Condition::Overloaded => "overloaded".into(),
        Condition::RateLimited => "rate-limited".into(),
        Condition::Any5xx => "5xx".into(),
        Condition::Status(s) => s.to_string(),
        Condition::Grpc(code) => crate::vocab::reason::grpc_condition_name(*code).into(),
    }
}

/// A duration as the config file spells it: `250ms`, `2s`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A JSON object written field by field.
struct Obj(String);

impl Obj {
    fn new() -> Obj {
        Obj(String::from("{"))
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        let _ = write!(self.0, "\"{key}\":");
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.0.push_str(json);
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push('"');
        escape_into(&mut self.0, value);
        self.0.push('"');
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        self.key(key);
        let _ = write!(self.0, "{value}");
    }

    fn float(&mut self, key: &str, value: f64) {
        self.key(key);
        let value = if value.is_finite() { value } else { 0.0 };
        let _ = write!(self.0, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.num(key, value);
    }

    fn dur(&mut self, key: &str, value: Duration) {
        self.str(key, &duration(value));
    }

    fn list<S: AsRef<str>>(&mut self, key: &str, items: impl Iterator<Item = S>) {
        self.key(key);
        self.0.push('[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.0.push('"');
            escape_into(&mut self.0, item.as_ref());
            self.0.push('"');
        }
        self.0.push(']');
    }

    fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url("redis://app:hunter2@cache:6379/0"),
            "redis://app:[redacted]@cache:6379/0"
        );
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("http://user@h/p"), "http://user@h/p");
        assert_eq!(redact_url("http://h/p?a=b@c"), "http://h/p?a=b@c");
    }

    #[test]
    fn durations_read_as_the_file_spells_them() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
    }
}
