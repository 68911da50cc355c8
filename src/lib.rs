//! # outrigger
//!
//! A reverse-proxy sidecar that makes one unreliable HTTP backend look reliable: it retries
//! what is safe to retry, backs off, refuses to multiply load on a failing backend, and
//! reports everything on `/health` and `/metrics`.
//!
//! ```text
//!  client ──▶ server::accept ──▶ proxy::Proxy::handle ─────────────────────────▶ upstream
//!              (h1 + h2c,         1. route + request id          proxy::attempts
//!               limits,           2. CONNECT / shed (overloaded)  per-try timeout,
//!               graceful)         3. proxy::upstream: head        classify, retry?
//!                                 4. body: replayable or once     resilience::{backoff,
//!                                 5. attempts ────────────────▶     budget, retry}
//!                                 6. upstream answer streamed, or proxy::respond
//!                                 7. metrics + access log
//!
//!  operator ──▶ admin (/health /live /ready /metrics POST /shutdown)
//!  signals ───▶ server::signals (TERM/INT: drain; HUP: app::App::reload)
//! ```
//!
//! Modules:
//! - [`config`]: the YAML file, validated into types that cannot hold a bad value.
//! - [`app`]: wires the listeners, the proxy and the admin endpoints; the shutdown sequence.
//! - [`proxy`]: the request path, top to bottom.
//! - [`resilience`]: backoff, retry budget, retry rules; no I/O.
//! - [`admin`]: the admin endpoints.
//! - [`metrics`]: the Prometheus registry.
//! - [`server`]: accept loop, lifecycle state, signals.
//! - [`logging`]: JSON or text logs; [`access_log`]: the per-request line, written by hand.

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod config;
pub mod edge;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod proxy;
pub mod resilience;
pub mod server;
