//! The admin listener: `/health`, `/live`, `/ready`, `/metrics`, `/config` and
//! `POST /shutdown` (SPEC §4, §7.6), routed with a plain `match` on method and path; [`probe`] is their client,
//! `outrigger probe URL`.
//!
//! It has its own port so that the proxy port never serves these endpoints (a client of
//! the service must not be able to shut the sidecar down or read its metrics), and so that
//! probes and scrapes keep working while the proxy port is draining or saturated.

pub mod config_view;
pub mod descriptors;
pub mod probe;
pub mod time;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::proxy::body::ResponseBody;
use crate::proxy::Proxy;
use crate::resilience::circuit::State;
use crate::server::lifecycle::Lifecycle;

/// What the admin endpoints read and act on; given by `app`, which this module never sees.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
}

/// The admin listener's service for one connection from `peer`: the router below, as a
/// `hyper::service::Service` for the accept loop.
pub fn service(
    admin: Arc<Admin>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Send
       + 'static {
    hyper::service::service_fn(move |req| {
        std::future::ready(Ok::<_, Infallible>(handle(&admin, req, peer)))
    })
}

/// Answers one admin request.
pub fn handle(app: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match (req.uri().path(), read) {
        ("/health", true) => health(app),
        ("/live", true) => json(StatusCode::OK, r#"{"status":"alive"}"#.to_owned()),
        ("/ready", true) if descriptors::scarce() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"not ready","reason":"out of file descriptors"}"#.to_owned(),
        ),
        ("/ready", true) if ready(app) => json(StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
        ("/ready", true) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"not ready"}"#.to_owned(),
        ),
        ("/metrics", true) => metrics(app),
        ("/config", true) => json(StatusCode::OK, config_view::render(&app.proxy.config())),
        ("/shutdown", _) if req.method() == Method::POST => shutdown(app, peer),
        ("/shutdown", _) => not_allowed("POST"),
        ("/health" | "/live" | "/ready" | "/metrics" | "/config", false) => {
            not_allowed("GET, HEAD")
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.to_owned()),
    }
}

fn health(app: &Admin) -> Response<ResponseBody> {
    let timestamp = crate::vocab::time::rfc3339(SystemTime::now());
    let health = &app.proxy.health;
    if health.is_down() {
        let error = crate::vocab::json::escape(&health.last_error());
        let body =
            format!(r#"{{"status":"unhealthy","error":"{error}","timestamp":"{timestamp}"}}"#);
        return json(StatusCode::SERVICE_UNAVAILABLE, body);
    }
    let rt = app.proxy.runtime();
    let mut degraded = false;
    let circuits: Vec<String> = rt
        .circuit_states()
        .map(|(route, s)| {
            degraded |= s == State::Open;
            format!(r#""{}":"{}""#, route.name, s.label())
        })
        .collect();
    // Short of descriptors: degraded, and said why (the field appears only then).
    let scarce = descriptors::scarce();
    let fds = if scarce {
        r#","descriptors":"scarce""#
    } else {
        ""
    };
    let status = if degraded || scarce {
        "degraded"
    } else {
        "healthy"
    };
    let upstream = if health.is_up() {
        "reachable"
    } else {
        "unknown"
    };
    let body = format!(
        r#"{{"status":"{status}","timestamp":"{timestamp}","upstream":"{upstream}"{fds},"circuits":{{{}}}}}"#,
        circuits.join(",")
    );
    json(StatusCode::OK, body)
}

/// Whether `/ready` answers 200: listeners bound and not draining, and, when the health
/// check is set to affect readiness, the upstream not known to be down.
fn ready(app: &Admin) -> bool {
    let gate = app
        .proxy
        .runtime()
        .config
        .upstream
        .health_check
        .as_ref()
        .is_some_and(|h| h.affects_readiness);
    app.lifecycle.is_ready() && !(gate && app.proxy.health.is_down())
}

fn metrics(app: &Admin) -> Response<ResponseBody> {
    // Asking each breaker brings its gauge up to date, so a route that went idle while its
    // circuit was open reads half-open once open_duration has passed, not "open" forever.
    app.proxy.runtime().circuit_states().for_each(drop);
    // The yield is read now, so a route that went quiet after an outage shows its window
    // emptying, not the last value a retry left behind.
    for (route, state) in app.proxy.runtime().routes_with_state() {
        let gauge = &app.metrics.retry_yield;
        match state.budget.retry_yield() {
            Some(y) => gauge.with_label_values(&[&route.name]).set(y),
            None => drop(gauge.remove_label_values(&[&route.name])),
        }
    }
    let mut resp = Response::new(ResponseBody::full(app.metrics.render()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn shutdown(app: &Admin, peer: SocketAddr) -> Response<ResponseBody> {
    if !peer.ip().to_canonical().is_loopback() {
        return json(
            StatusCode::FORBIDDEN,
            r#"{"error":"shutdown is only accepted from a loopback address"}"#.to_owned(),
        );
    }
    app.lifecycle.begin_shutdown();
    json(
        StatusCode::ACCEPTED,
        r#"{"status":"shutting down"}"#.to_owned(),
    )
}

fn not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        r#"{"error":"method not allowed"}"#.to_owned(),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
