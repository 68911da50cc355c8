//! # outrigger
//!
//! A reverse-proxy sidecar that makes one unreliable HTTP backend look reliable: it retries
//! what is safe to retry, backs off, refuses to multiply load on a failing backend, and
//! reports everything on `/health` and `/metrics`.
//!
//! ```text
//!  client ──▶ server::accept ──▶ edge ──────────▶ proxy::Proxy::handle ─────────────────▶ upstream
//!              (h1 + h2c,          request id       1. route + request id   proxy::attempts
//!               limits,            (kept or new),   2. CONNECT / shed       per-try timeout,
//!               graceful,          trace            3. proxy::upstream      classify, retry?,
//!               watchdog,                           4. body: replayable     one client span
//!               per_request: panics caught)         5. attempts ───────▶    each (otel)
//!                                                   6. answer streamed, or proxy::respond
//!                                                   7. metrics, access log, server span end
//!
//!  operator ──▶ server::accept ──▶ admin::service (/health /live /ready /metrics /config
//!                                   POST /shutdown), given proxy, metrics and lifecycle only
//!  signals ───▶ server::signals (TERM/INT: drain; HUP: the reload function app gives it)
//!  spans ─────▶ otel::export (bounded queue, own task) ──▶ OTLP/HTTP collector
//! ```
//!
//! Layers, top to bottom (a module imports only from its own layer or below):
//! `main` → `app` → `edge`, `admin` → `proxy` → `resilience`, `server`, `otel`,
//! `access_log`, `event_json` → `config`, `metrics`, `vocab`. Services sit only at the edge: the accept
//! loop takes any `hyper::service::Service` and hands it to hyper; the policy inside stays
//! plain async functions.
//!
//! Modules:
//! - [`config`]: the YAML file, validated into types that cannot hold a bad value.
//! - [`app`]: wires the listeners, the proxy and the admin endpoints; the shutdown sequence.
//! - [`edge`]: what stands in front of the handlers (request id, trace, panics).
//! - [`proxy`]: the request path, top to bottom; `proxy::grpc` is what a gRPC call adds to it.
//! - [`resilience`]: backoff, retry budget, retry rules; no I/O, nothing from `proxy`.
//! - [`admin`]: the admin endpoints, a service of their own.
//! - [`metrics`]: the Prometheus registry.
//! - [`otel`]: OpenTelemetry spans and their export.
//! - [`server`]: accept loop (serves whatever service it is given), lifecycle, signals.
//! - [`shared`]: rate limits and stored copies shared by replicas through Redis (`scope: shared`).
//! - [`logging`]: JSON or text logs; [`access_log`]: the per-request line, and
//!   [`event_json`]: every other event's JSON line, both written by hand.
//! - [`vocab`]: the words every layer shares (REASON, JSON escaping, RFC 3339 time).

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod config;
pub mod edge;
pub mod event_json;
pub mod hex;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod proxy;
pub mod resilience;
pub mod server;
pub mod shared;
pub mod vocab;
