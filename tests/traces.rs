//! OpenTelemetry traces (SPEC §7.5), checked by a real OTLP/HTTP receiver that decodes what
//! arrives with the OpenTelemetry protobuf definitions.

mod support;

use std::time::Duration;

use outrigger::config::{self, Overrides};
use support::otlp::{Collector, ReceivedSpan};
use support::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn tracing_yaml(endpoint: &str, ratio: f64) -> String {
    format!(
        "tracing:\n  otlp_endpoint: {endpoint}\n  sample_ratio: {ratio}\n  service_name: edge-test\n"
    )
}

/// Waits until the collector holds at least `n` spans of `trace_id`.
async fn spans_of(collector: &Collector, trace_id: &str, n: usize) -> Vec<ReceivedSpan> {
    within(async {
        loop {
            let spans: Vec<_> = collector
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_sampled_request_gives_a_server_span_and_one_client_span_per_attempt() {
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    backend.script([
        Action::Status(503),
        Action::Respond {
            status: 200,
            headers: vec![("set-cookie".into(), "sid=set-cookie-secret".into())],
            body: b"ok".to_vec(),
        },
    ]);
    let yaml = format!(
        "{}routes:\n  - name: api\n    match:\n      path_prefix: /api\n",
        tracing_yaml(&collector.endpoint(), 0.0)
    );
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let req = get_with(
        &sidecar.url("/api/items?token=query-secret"),
        &[
            ("traceparent", &parent),
            ("tracestate", "vendor=kept"),
            ("authorization", "Bearer authorization-secret"),
            ("proxy-authorization", "Basic proxy-secret"),
            ("cookie", "sid=cookie-secret"),
        ],
    );
    let (status, headers, _) = send(req).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");

    // sample_ratio 0, but the client's sampled parent is followed.
    let spans = spans_of(&collector, CLIENT_TRACE, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(server.parent_span_id, CLIENT_SPAN);
    assert_eq!(server.name, "GET api");
    assert_eq!(server.service_name, "edge-test");
    let attr = |s: &ReceivedSpan, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr(server, "http.route"), "api");
    assert_eq!(attr(server, "http.request.method"), "GET");
    assert_eq!(attr(server, "http.response.status_code"), "200");
    assert_eq!(attr(server, "url.path"), "/api/items");
    assert_eq!(attr(server, "outrigger.attempts"), "2");

    let mut clients: Vec<_> = spans.iter().filter(|s| s.kind == 3).collect();
    clients.sort_by_key(|s| attr(s, "outrigger.attempt"));
    assert_eq!(clients.len(), 2);
    for c in &clients {
        assert_eq!(
            c.parent_span_id, server.span_id,
            "attempt spans are children"
        );
    }
    assert_eq!(attr(clients[0], "outrigger.attempt"), "1");
    assert_eq!(attr(clients[0], "outrigger.reason"), "status-503");
    assert_eq!(attr(clients[0], "http.response.status_code"), "503");
    assert!(!attr(clients[0], "outrigger.backoff_ms").is_empty());
    assert_eq!(
        clients[0].status_code, 2,
        "a failed attempt is an error span"
    );
    assert_eq!(attr(clients[1], "outrigger.attempt"), "2");
    assert_eq!(attr(clients[1], "outrigger.reason"), "");
    assert_eq!(attr(clients[1], "http.response.status_code"), "200");

    // The upstream saw each attempt's own span as its parent, in the client's trace.
    let seen = backend.received();
    assert_eq!(seen.len(), 2);
    for (r, span) in seen.iter().zip(&clients) {
        let expected = format!("00-{CLIENT_TRACE}-{}-01", span.span_id);
        assert_eq!(r.header("traceparent"), Some(expected.as_str()));
        assert_eq!(r.header("tracestate"), Some("vendor=kept"));
    }

    for secret in [
        "authorization-secret",
        "proxy-secret",
        "cookie-secret",
        "set-cookie-secret",
        "query-secret",
    ] {
        assert!(
            !collector.saw_bytes(secret.as_bytes()),
            "{secret} reached the collector"
        );
    }
}

#[tokio::test]
async fn unsampled_requests_export_nothing_and_fallbacks_are_span_events() {
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = format!(
        "{}defaults:\n  retry:\n    attempts: 1\n  fallback:\n    status: 200\n    body: canned\n",
        tracing_yaml(&collector.endpoint(), 0.0)
    );
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    // No parent and ratio 0: not sampled, yet the upstream still gets a trace context.
    let (status, _, _) = get(&sidecar.url("/quiet")).await;
    assert_eq!(status, http::StatusCode::OK);
    let quiet = backend.received()[0]
        .header("traceparent")
        .map(str::to_owned);
    assert!(
        quiet.as_deref().is_some_and(|t| t.ends_with("-00")),
        "{quiet:?}"
    );

    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, headers, body) =
        send(get_with(&sidecar.url("/loud"), &[("traceparent", &parent)])).await;
    assert_eq!((status, body.as_str()), (http::StatusCode::OK, "canned"));
    assert_eq!(headers["x-outrigger-fallback"], "status-503");
    let spans = spans_of(&collector, CLIENT_TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.events, ["fallback"]);
    assert_eq!(server.attributes["outrigger.outcome"], "fallback");
    // Spans are exported in the order they ended: the unsampled request's would be here.
    assert!(collector.spans().iter().all(|s| s.trace_id == CLIENT_TRACE));
}

#[tokio::test]
async fn span_attributes_stay_small_whatever_the_client_sends() {
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}routes:\n  - name: api\n    match:\n      path_prefix: /api\n",
        tracing_yaml(&collector.endpoint(), 0.0)
    );
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    // A sampled parent forces a span; a 4 KiB path must not make it 4 KiB.
    let long = format!("/api/{}", "a".repeat(4096));
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, _, _) = send(get_with(&sidecar.url(&long), &[("traceparent", &parent)])).await;
    assert_eq!(status, http::StatusCode::OK);
    let spans = spans_of(&collector, CLIENT_TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let path = &server.attributes["url.path"];
    assert_eq!(path.len(), outrigger::otel::MAX_PATH);
    assert!(long.starts_with(path.as_str()));

    // A method outside HTTP's own set is `_OTHER`, and the span is named `HTTP <route>`.
    let other = "1af7651916cd43dd8448eb211c80319c";
    let req = http::Request::builder()
        .method(http::Method::from_bytes(b"FROBNICATE").unwrap())
        .uri(sidecar.url("/api/x"))
        .header("traceparent", format!("00-{other}-{CLIENT_SPAN}-01"))
        .body(Default::default())
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, http::StatusCode::OK);
    let spans = spans_of(&collector, other, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(server.name, "HTTP api");
    assert_eq!(server.attributes["http.request.method"], "_OTHER");
    let client = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(client.attributes["http.request.method"], "_OTHER");
}

/// Whether the SDK's trace-id-ratio rule samples `trace_id` (hex) at ratio 0.5.
fn ratio_half_samples(trace_id: &str) -> bool {
    let low = u64::from_str_radix(&trace_id[16..], 16).unwrap();
    (low >> 1) < 1u64 << 62
}

#[tokio::test]
async fn new_traces_are_sampled_by_their_trace_id_and_every_upstream_gets_our_parent() {
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, &tracing_yaml(&collector.endpoint(), 0.5)).await;
    for i in 0..40 {
        let (status, _, _) = get(&sidecar.url(&format!("/n{i}"))).await;
        assert_eq!(status, http::StatusCode::OK);
    }
    // Each request started a trace; the upstream names its parent and the sampler's say.
    let mut sampled = Vec::new();
    for r in backend.received() {
        let tp = r.header("traceparent").expect("a traceparent").to_owned();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            (parts.len(), parts[0], parts[1].len(), parts[2].len()),
            (4, "00", 32, 16)
        );
        assert_ne!(parts[2], "0000000000000000");
        let flagged = parts[3] == "01";
        assert_eq!(flagged, ratio_half_samples(parts[1]), "{tp}");
        if flagged {
            sampled.push((parts[1].to_owned(), parts[2].to_owned()));
        }
    }
    assert!(
        (5..=35).contains(&sampled.len()),
        "{} of 40 at 0.5",
        sampled.len()
    );
    // Exactly the flagged traces are exported, under the trace id the upstream saw.
    for (trace, parent) in &sampled {
        let spans = spans_of(&collector, trace, 2).await;
        let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
        assert_eq!(
            server.parent_span_id, "",
            "a new trace's server span is a root"
        );
        let client = spans.iter().find(|s| s.kind == 3).expect("a client span");
        assert_eq!(&client.span_id, parent);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exported: std::collections::HashSet<String> =
        collector.spans().into_iter().map(|s| s.trace_id).collect();
    assert_eq!(exported.len(), sampled.len());

    // An unsampled parent: its trace, a span id of ours, unsampled; its tracestate kept.
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let req = get_with(
        &sidecar.url("/unsampled"),
        &[("traceparent", &parent), ("tracestate", "vendor=kept")],
    );
    assert_eq!(send(req).await.0, http::StatusCode::OK);
    let seen = backend.received();
    let r = seen.last().unwrap();
    let tp = r.header("traceparent").unwrap();
    assert!(tp.starts_with(&format!("00-{CLIENT_TRACE}-")), "{tp}");
    assert!(tp.ends_with("-00"), "{tp}");
    assert_ne!(
        tp, parent,
        "the upstream's parent is our span, not the client's"
    );
    assert_eq!(r.header("tracestate"), Some("vendor=kept"));

    // A malformed parent: a new trace, and the tracestate that went with it is dropped.
    let req = get_with(
        &sidecar.url("/malformed"),
        &[
            ("traceparent", "00-NOT-A-TRACE"),
            ("tracestate", "vendor=orphan"),
        ],
    );
    assert_eq!(send(req).await.0, http::StatusCode::OK);
    let seen = backend.received();
    let r = seen.last().unwrap();
    let tp = r.header("traceparent").unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
    assert_eq!(r.header("tracestate"), None);
}

#[tokio::test]
async fn a_refusing_or_absent_collector_costs_requests_nothing_and_drops_are_counted() {
    let collector = Collector::start().await;
    collector.refuse();
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backend = Backend::start().await;
    for endpoint in [collector.endpoint(), format!("http://{down}")] {
        let sidecar = Sidecar::in_front_of(&backend, &tracing_yaml(&endpoint, 1.0)).await;
        let started = std::time::Instant::now();
        for i in 0..20 {
            let (status, _, _) = get(&sidecar.url(&format!("/r{i}"))).await;
            assert_eq!(status, http::StatusCode::OK);
        }
        eprintln!(
            "20 requests with collector {endpoint}: {:?}",
            started.elapsed()
        );
        within(async {
            loop {
                let m = sidecar.metrics().await;
                // 20 requests, each one server and one client span.
                if metric(&m, "outrigger_spans_dropped_total", &[]) >= 40.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    assert!(collector.requests() > 0, "the refusing collector was asked");
    assert!(collector.spans().is_empty());
}

#[test]
fn tracing_config_errors_name_the_path_and_line() {
    let load = |yaml: &str| config::from_text(yaml, None, &Overrides::default());
    let err =
        load("upstream:\n  url: http://127.0.0.1:1\ntracing:\n  sample_ratio: 1.5\n").unwrap_err();
    assert_eq!(err.field, "tracing.sample_ratio");
    assert_eq!(err.location.map(|l| l.0), Some(4), "{err}");
    assert!(err.message.contains("outside 0..1"), "{err}");

    let err =
        load("upstream:\n  url: http://127.0.0.1:1\ntracing:\n  otlp_endpoint: collector:4318\n")
            .unwrap_err();
    assert_eq!(err.field, "tracing.otlp_endpoint");
    assert_eq!(err.location.map(|l| l.0), Some(4), "{err}");

    // Unreachable is not an error: nothing listens on port 1.
    let ok = load(
        "upstream:\n  url: http://127.0.0.1:1\ntracing:\n  otlp_endpoint: http://127.0.0.1:1\n",
    )
    .unwrap();
    let t = ok.tracing.expect("tracing on");
    assert_eq!(t.otlp_endpoint, "http://127.0.0.1:1");
    assert_eq!(t.sample_ratio, 0.01);
    assert!(load("upstream:\n  url: http://127.0.0.1:1\n")
        .unwrap()
        .tracing
        .is_none());
}

/// The real binary's log lines for a traced request (SPEC §7.5): the warn line of its failed
/// attempt and its access line both carry the trace id and the server span's id.
#[tokio::test]
async fn a_traced_request_s_log_lines_carry_its_trace_and_span_ids() {
    use support::process::{free_port, wait_ready, Process};
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    backend.script([Action::Status(503)]);
    let (listen, admin) = (free_port(), free_port());
    let config = temp_file(
        "traced-logs.yaml",
        &format!(
            "listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nupstream: {{ url: \"{}\" }}\n\
             defaults:\n  retry: {{ backoff: {{ base: 5ms, max: 5ms, jitter: none }} }}\n{}",
            backend.url(),
            tracing_yaml(&collector.endpoint(), 0.0)
        ),
    );
    let log = config.with_file_name("stdout.log");
    let mut p = Process::spawn_logging(&["--config", config.to_str().unwrap()], &log);
    wait_ready(format!("127.0.0.1:{admin}").parse().unwrap()).await;
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let req = get_with(
        &format!("http://127.0.0.1:{listen}/items"),
        &[("traceparent", &parent)],
    );
    let (status, headers, _) = send(req).await;
    assert_eq!(
        (status, &headers["x-outrigger-attempts"]),
        (http::StatusCode::OK, &"2".parse().unwrap())
    );
    let spans = spans_of(&collector, CLIENT_TRACE, 3).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let warn = lines
        .iter()
        .find(|l| l["level"] == "WARN")
        .expect("the failed attempt's line");
    let access = lines
        .iter()
        .find(|l| l["target"] == "access")
        .expect("the access line");
    for line in [warn, access] {
        assert_eq!(line["trace_id"], CLIENT_TRACE, "{line}");
        assert_eq!(line["span_id"], server.span_id.as_str(), "{line}");
    }
    let untraced: Vec<_> = lines
        .iter()
        .filter(|l| l.get("trace_id").is_none())
        .collect();
    assert!(untraced.iter().all(|l| l["level"] != "WARN"), "{text}");
}
