//! The admin listener: `/health`, `/live`, `/ready`, `/metrics` and `POST /shutdown`
//! (SPEC §4), routed with a plain `match` on method and path.
//!
//! It has its own port so that the proxy port never serves these endpoints (a client of
//! the service must not be able to shut the sidecar down or read its metrics), and so that
//! probes and scrapes keep working while the proxy port is draining or saturated.

pub mod time;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::proxy::body::ResponseBody;

/// Answers one admin request.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match (req.uri().path(), read) {
        ("/health", true) => health(&app),
        ("/live", true) => json(StatusCode::OK, r#"{"status":"alive"}"#.to_owned()),
        ("/ready", true) if app.lifecycle.is_ready() => {
            json(StatusCode::OK, r#"{"status":"ready"}"#.to_owned())
        }
        ("/ready", true) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"not ready"}"#.to_owned(),
        ),
        ("/metrics", true) => metrics(&app),
        ("/shutdown", _) if req.method() == Method::POST => shutdown(&app, peer),
        ("/shutdown", _) => not_allowed("POST"),
        ("/health" | "/live" | "/ready" | "/metrics", false) => not_allowed("GET, HEAD"),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.to_owned()),
    }
}

fn health(_app: &App) -> Response<ResponseBody> {
    let body = format!(
        r#"{{"status":"healthy","timestamp":"{}","upstream":"unknown","circuits":{{}}}}"#,
        time::rfc3339(SystemTime::now())
    );
    json(StatusCode::OK, body)
}

fn metrics(app: &App) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(app.metrics.render()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn shutdown(app: &App, peer: SocketAddr) -> Response<ResponseBody> {
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
