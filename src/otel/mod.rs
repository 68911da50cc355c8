//! OpenTelemetry traces (SPEC §7.5): a server span per request, a client span per upstream
//! attempt, exported over OTLP/HTTP protobuf.
//!
//! Where it sits: `proxy::Proxy::handle` asks [`Traces::start`] for a [`RequestTrace`]
//! and, when there is one, runs the request inside [`scope`]; the request path then calls
//! the free functions of this module ([`route`], [`attempt_start`], [`inject`],
//! [`attempt_end`], [`event`], [`finish`]), each one line at its step, each a no-op outside
//! a traced request. The trace rides in a tokio task-local rather than in the request
//! path's structs, so the policy code keeps its signatures and tracing off costs one
//! failed task-local lookup per hook.
//!
//! Why the OpenTelemetry API directly and not `tracing-opentelemetry`: the bridge turns
//! every `tracing` span and event into OpenTelemetry work and puts a layer on every event
//! of the process, traced or not; the access log is written by hand precisely because the
//! generic `tracing` path was a quarter of a request's cost (see `access_log`). Here a request
//! that is not sampled never touches OpenTelemetry, and a sampled one pays for two spans.
//!
//! Sampling is parent-based: a sampled `traceparent` from the client is always followed, an
//! unsampled one never, and a new trace is sampled with `sample_ratio`. The decision is
//! made in [`context`] before any OpenTelemetry object exists: an unsampled request gets no
//! `RequestTrace` and no scope; its `traceparent` is rewritten once, at the edge, to name a
//! span id of ours (flagged unsampled), and the request path forwards it to every attempt
//! like any other header (the client's `tracestate` goes along untouched). A sampled
//! request's spans are the SDK's, and the upstream gets a `traceparent` whose parent is the
//! attempt's span, with the client's `tracestate`.
//!
//! No header value is ever put on a span: the attributes are the method, path (never the
//! query), route, status, peer address and the attempt's own facts. Sensitive headers
//! (`Authorization`, `Cookie`, ...) therefore cannot reach a collector.

pub mod context;
pub mod export;

use std::cell::RefCell;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use crate::config::tracing::Tracing;
use crate::metrics::Metrics;
use context::TRACESTATE;

/// `url.path` is cut to this many bytes on a span: a client cannot make every span huge.
pub const MAX_PATH: usize = 1024;

tokio::task_local! {
    static CURRENT: RequestTrace;
}

/// The tracer of one proxy, or nothing when `tracing:` is absent.
#[derive(Clone, Default)]
pub struct Traces {
    on: Option<On>,
}

#[derive(Clone)]
struct On {
    tracer: SdkTracer,
    /// New traces are sampled by this (`TraceIdRatioBased(sample_ratio)`).
    root: Sampler,
    /// Kept so the provider (and its processor) lives as long as the proxy.
    _provider: SdkTracerProvider,
}

impl Traces {
    /// The tracer for this config; `outrigger_spans_dropped_total` is registered either way
    /// so dashboards see a zero rather than a missing series.
    pub fn new(config: Option<&Tracing>, metrics: &Metrics) -> Traces {
        let dropped = metrics.plain_counter(
            "outrigger_spans_dropped_total",
            "Spans not exported: queue full, or the collector unreachable or refusing.",
        );
        let Some(config) = config else {
            return Traces::default();
        };
        match provider(config, dropped) {
            Ok(provider) => Traces {
                on: Some(On {
                    tracer: provider.tracer("outrigger"),
                    root: Sampler::TraceIdRatioBased(config.sample_ratio),
                    _provider: provider,
                }),
            },
            Err(e) => {
                tracing::error!(error = %e, "the OTLP exporter could not be built; no spans will be exported");
                Traces::default()
            }
        }
    }

    /// Decides whether this request is sampled (see [`context`]). Sampled: its server span
    /// is started, a child of the client's `traceparent` if it sent one, and returned for
    /// the request path to run in ([`scope`]). Not sampled: `None`, and the request's
    /// `traceparent` now names a span id of ours, flagged unsampled, in the client's trace
    /// or a new one (a new trace drops the client's `tracestate`, which belonged to no
    /// valid parent); the request path forwards it like any header.
    pub fn start<B>(&self, req: &mut Request<B>, peer: SocketAddr) -> Option<RequestTrace> {
        let on = self.on.as_ref()?;
        let decision = context::settle(req.headers_mut(), &on.root);
        if !decision.sampled {
            return None;
        }
        let parent = match decision.parent {
            None => Context::new(),
            Some(p) => {
                let state = req
                    .headers()
                    .get(&TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| TraceState::from_str(v).ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(p.trace_id),
                    SpanId::from(p.span_id),
                    TraceFlags::SAMPLED,
                    true,
                    state,
                ))
            }
        };
        let (name, method) = method(req.method());
        let builder = on
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", truncated(req.uri().path(), MAX_PATH).to_owned()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("network.protocol.version", protocol(req.version())),
                KeyValue::new("client.address", peer.ip().to_string()),
            ]);
        // A new trace keeps the trace id its decision was made on (a parent's is the SDK's
        // to take from the context).
        let span = context::as_root(decision.trace_id, || {
            builder.start_with_context(&on.tracer, &parent)
        });
        Some(RequestTrace {
            tracer: on.tracer.clone(),
            name,
            method,
            server: parent.with_span(span),
            attempt: RefCell::new(None),
        })
    }
}

/// The span name's method and the `http.request.method` value (semantic conventions: a
/// method outside the HTTP standard's set is `_OTHER`, and names its span `HTTP`).
fn method(m: &Method) -> (&'static str, &'static str) {
    let known = match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return ("HTTP", "_OTHER"),
    };
    (known, known)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn provider(config: &Tracing, dropped: IntCounter) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", config.otlp_endpoint))
        .with_timeout(Duration::from_secs(5))
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_id_generator(context::Ids)
        .with_resource(resource)
        .with_span_processor(export::Queue::start(exporter, dropped))
        .build())
}

/// One request's spans: the server span and the attempt in progress.
pub struct RequestTrace {
    tracer: SdkTracer,
    /// The method as span names spell it, and as `http.request.method` does.
    name: &'static str,
    method: &'static str,
    server: Context,
    attempt: RefCell<Option<Context>>,
}

/// Runs `fut` (the request path) with `trace` as the current request's trace. Give it a
/// boxed future: the request path's future is large, and this moves it.
pub fn scope<F: std::future::Future>(
    trace: RequestTrace,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(trace, fut)
}

fn with_current(f: impl FnOnce(&RequestTrace)) {
    let _ = CURRENT.try_with(f);
}

/// The route was chosen: the server span is named and labelled after it.
pub fn route(name: &str) {
    with_current(|t| {
        let span = t.server.span();
        if !span.is_recording() {
            return;
        }
        span.update_name(format!("{} {name}", t.name));
        span.set_attribute(KeyValue::new("http.route", name.to_owned()));
    });
}

/// Attempt `n` begins: its client span starts, a child of the server span. (An unsampled
/// request has no trace here: its `traceparent` was settled at the edge.)
pub fn attempt_start(n: u32) {
    with_current(|t| {
        if !t.server.span().is_recording() {
            return;
        }
        let span = t
            .tracer
            .span_builder(t.name)
            .with_kind(SpanKind::Client)
            .with_attributes(vec![
                KeyValue::new("http.request.method", t.method),
                KeyValue::new("outrigger.attempt", i64::from(n)),
                KeyValue::new("http.request.resend_count", i64::from(n.saturating_sub(1))),
            ])
            .start_with_context(&t.tracer, &t.server);
        if let Some(old) = t.attempt.replace(Some(t.server.with_span(span))) {
            old.span().end();
        }
    });
}

/// Puts the current attempt's (else the server span's) context in the upstream request.
pub fn inject(headers: &mut http::HeaderMap) {
    with_current(|t| {
        let attempt = t.attempt.borrow();
        let cx = attempt.as_ref().unwrap_or(&t.server);
        TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
    });
}

/// The attempt ended: its status, the REASON when it failed and the backoff chosen.
pub fn attempt_end<R: std::ops::Deref<Target = Response<B>>, B, E: Display>(
    result: &Result<R, E>,
    reason: Option<&dyn Display>,
    backoff: Option<Duration>,
) {
    with_current(|t| {
        let Some(cx) = t.attempt.borrow_mut().take() else {
            return;
        };
        let span = cx.span();
        if let Ok(resp) = result {
            let status = i64::from(resp.status().as_u16());
            span.set_attribute(KeyValue::new("http.response.status_code", status));
        }
        if let Some(reason) = reason {
            span.set_attribute(KeyValue::new("outrigger.reason", reason.to_string()));
            span.set_attribute(KeyValue::new("error.type", reason.to_string()));
            span.set_status(Status::error(reason.to_string()));
        }
        if let Some(wait) = backoff {
            span.set_attribute(KeyValue::new(
                "outrigger.backoff_ms",
                wait.as_millis() as i64,
            ));
        }
        span.end();
    });
}

/// Something the request path decided without the upstream: `circuit-open`, ...
pub fn event(name: &'static str) {
    with_current(|t| t.server.span().add_event(name, Vec::new()));
}

/// The answer is decided: outcome events, status, and the server span ends.
pub fn finish(status: u16, outcome: &str, attempts: u32) {
    with_current(|t| {
        if let Some(cx) = t.attempt.borrow_mut().take() {
            cx.span().end();
        }
        let span = t.server.span();
        if matches!(outcome, "fallback" | "stale" | "cache") {
            span.add_event(outcome.to_owned(), Vec::new());
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.set_attribute(KeyValue::new("outrigger.outcome", outcome.to_owned()));
        span.set_attribute(KeyValue::new("outrigger.attempts", i64::from(attempts)));
        if status >= 500 {
            span.set_status(Status::error(format!("{status}")));
        }
        span.end();
    });
}

/// The current request's trace and server span ids (hex), when it is traced and sampled.
pub fn ids() -> Option<(String, String)> {
    CURRENT
        .try_with(|t| {
            let cx = t.server.span().span_context().clone();
            cx.is_sampled()
                .then(|| (cx.trace_id().to_string(), cx.span_id().to_string()))
        })
        .ok()
        .flatten()
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            // The SDK writes an empty `tracestate` when there is none: send none.
            self.0.remove(key);
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces(ratio: f64) -> Traces {
        let config = Tracing {
            otlp_endpoint: "http://127.0.0.1:1".into(),
            sample_ratio: ratio,
            service_name: "test".into(),
        };
        Traces::new(Some(&config), &Metrics::new())
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[tokio::test]
    async fn a_new_trace_the_ratio_samples_is_recorded_under_that_trace_id() {
        let traces = traces(0.5);
        let mut kept = 0;
        for _ in 0..200 {
            let mut req = Request::new(());
            match traces.start(&mut req, peer()) {
                Some(t) => {
                    // The SDK span carries the trace id the decision was made on, so its
                    // own sampler (the same rule) agrees and records it.
                    let span = t.server.span();
                    assert!(span.is_recording());
                    let trace_id = span.span_context().trace_id().to_bytes();
                    let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap());
                    assert!(low >> 1 < 1 << 62);
                    kept += 1;
                }
                None => {
                    let tp = req.headers()[&context::TRACEPARENT].to_str().unwrap();
                    let p = context::parse(tp.as_bytes()).unwrap();
                    assert!(!p.sampled);
                    assert!((p.trace_id as u64) >> 1 >= 1 << 62, "{tp}");
                }
            }
        }
        assert!((50..150).contains(&kept), "{kept} of 200 at 0.5");
    }

    #[tokio::test]
    async fn tracing_off_leaves_the_request_alone() {
        let traces = Traces::new(None, &Metrics::new());
        let mut req = Request::new(());
        req.headers_mut()
            .insert(&context::TRACEPARENT, HeaderValue::from_static("x"));
        assert!(traces.start(&mut req, peer()).is_none());
        assert_eq!(req.headers()[&context::TRACEPARENT], "x");
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("/short", 1024), "/short");
        assert_eq!(truncated(&"a".repeat(2000), 1024).len(), 1024);
        let accented = format!("/{}", "é".repeat(600));
        let cut = truncated(&accented, 1024);
        assert_eq!(cut.len(), 1023);
        assert!(accented.starts_with(cut));
    }

    #[test]
    fn methods_outside_the_standard_set_are_other() {
        assert_eq!(method(&Method::GET), ("GET", "GET"));
        assert_eq!(method(&Method::PATCH), ("PATCH", "PATCH"));
        let odd = Method::from_bytes(b"FROBNICATE").unwrap();
        assert_eq!(method(&odd), ("HTTP", "_OTHER"));
    }
}
