//! gRPC through the sidecar (SPEC §7.7).

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

/// gRPC servers refuse a call without `te: trailers`. `TE` is hop-by-hop, so the proxy
/// strips it, and then puts back that one value (and nothing else of `TE`) when the client
/// offered it, over HTTP/1.1 (where `Connection: te` names it) and HTTP/2 alike.
#[tokio::test]
async fn te_trailers_and_nothing_else_of_te_reaches_the_upstream() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    // HTTP/2 allows `trailers` alone in `TE`.
    for offered in [Some("trailers"), None] {
        let mut req = Request::post(sidecar.url("/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc");
        if let Some(te) = offered {
            req = req.header("te", te);
        }
        let resp = within(h2_client().request(req.body(Full::default()).unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // HTTP/1.1 may offer codings beside it.
    for offered in ["gzip;q=0.5, Trailers", "gzip"] {
        let request = format!("POST /h1 HTTP/1.1\r\nhost: x\r\nte: {offered}\r\nconnection: te, close\r\ncontent-length: 0\r\n\r\n");
        let answer = raw(sidecar.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seen = backend.received();
    let te: Vec<Vec<&str>> = seen.iter().map(|r| r.headers_named("te")).collect();
    assert_eq!(te, [vec!["trailers"], vec![], vec!["trailers"], vec![]]);
}

// ---- Real gRPC parts (tonic's server and client) through the real binary ----

#[path = "grpc/echo.rs"]
mod echo;
#[path = "grpc/raw.rs"]
mod raw;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use echo::{EchoClient, GrpcServer, Msg};
use prost::Message as _;
use support::process::{free_port, run, wait_ready, Process};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The `outrigger` binary in front of a gRPC server, over h2c both sides.
struct Through {
    _proxy: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Through {
    /// Starts the binary with `upstream: { url: http://UPSTREAM, http2: true }` and `extra`.
    async fn start(upstream: SocketAddr, extra: &str) -> Through {
        let yaml = format!("upstream:\n  url: http://{upstream}\n  http2: true\n{extra}");
        let path = temp_file("outrigger.yaml", &yaml);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proxy = Process::spawn(
            &[
                "--config",
                path.to_str().unwrap(),
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ],
            &[],
        );
        wait_ready(admin).await;
        Through {
            _proxy: proxy,
            addr,
            admin,
        }
    }

    async fn echo(&self) -> EchoClient {
        within(EchoClient::connect(self.addr)).await
    }

    async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin)).await.2
    }
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.to_owned(),
        ..Msg::default()
    }
}

fn attempts_of(meta: &tonic::metadata::MetadataMap) -> Option<String> {
    meta.get("x-outrigger-attempts")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Unary (health Check and Echo), server streaming (health Watch, live), metadata both ways
/// and error statuses with their metadata, all through the binary.
#[tokio::test]
async fn unary_and_server_streaming_calls_with_metadata_and_errors_pass_through() {
    let server = GrpcServer::start().await;
    let through = Through::start(server.addr, "").await;
    let channel = within(echo::channel(through.addr)).await;
    let mut health = HealthClient::new(channel.clone());
    let check = within(health.check(HealthCheckRequest::default()))
        .await
        .expect("Check through the proxy");
    assert_eq!(check.get_ref().status, ServingStatus::Serving as i32);
    assert_eq!(attempts_of(check.metadata()).as_deref(), Some("1"));

    // Watch streams: the current status at once, then each change as it happens.
    let mut watch = within(health.watch(HealthCheckRequest::default()))
        .await
        .expect("Watch")
        .into_inner();
    let first = within(watch.message()).await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server
        .health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let second = within(watch.message()).await.unwrap().unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);

    // Metadata both ways.
    let mut echo = EchoClient::new(channel);
    let mut req = tonic::Request::new(msg("hello"));
    req.metadata_mut()
        .insert("x-echo", "from-the-client".parse().unwrap());
    let resp = within(echo.unary("Unary", req)).await.expect("Unary");
    assert_eq!(resp.get_ref().text, "hello");
    assert_eq!(resp.metadata().get("x-echoed").unwrap(), "from-the-client");

    // An error status with its message and metadata (trailers-only from tonic).
    let failing = Msg {
        fail: Code::NotFound as i32,
        ..msg("nope")
    };
    let status = within(echo.unary("Unary", tonic::Request::new(failing)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "asked to fail: nope");
    assert_eq!(
        status.metadata().get("x-fail-detail").unwrap(),
        "on purpose"
    );
    let metrics = through.metrics().await;
    let route = [("route", "default")];
    let count = |code| {
        metric(
            &metrics,
            "outrigger_grpc_responses_total",
            &[route[0], ("grpc_status", code)],
        )
    };
    // Check and Echo answered OK (in trailers), the failure 5 (trailers-only).
    assert_eq!(count("0"), 2.0, "{metrics}");
    assert_eq!(count("5"), 1.0, "{metrics}");
    drop(through);
}

/// Client streaming, and a bidirectional call in ping-pong (each message waits for the
/// answer to the one before: a proxy that held the request body would hang here), ended by
/// an error status in the trailers after answers went out.
#[tokio::test]
async fn client_and_bidirectional_streaming_pass_through() {
    let server = GrpcServer::start().await;
    let through = Through::start(server.addr, "").await;
    let mut echo = through.echo().await;
    let parts: Vec<Msg> = ["a", "b", "c"]
        .iter()
        .map(|t| Msg {
            data: vec![1; 10],
            ..msg(t)
        })
        .collect();
    let collected = within(echo.collect(parts))
        .await
        .expect("Collect")
        .into_inner();
    assert_eq!((collected.text.as_str(), collected.size), ("abc", 30));

    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let mut answers = within(echo.chat(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("Chat")
        .into_inner();
    for text in ["ping-1", "ping-2", "ping-3"] {
        tx.send(msg(text)).await.unwrap();
        let answer = within(answers.message()).await.unwrap().unwrap();
        assert_eq!(answer.text, text);
    }
    let ending = Msg {
        fail: Code::FailedPrecondition as i32,
        ..msg("stop")
    };
    tx.send(ending).await.unwrap();
    let status = within(answers.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.metadata().get("x-fail-detail").unwrap(),
        "on purpose"
    );
    drop(through);
}

/// Messages of several MiB each way: a 6 MiB unary request and answer, 8 MiB streamed down
/// in 1 MiB messages, 8 MiB streamed up.
#[tokio::test]
async fn large_messages_stream_through() {
    let server = GrpcServer::start().await;
    let through = Through::start(server.addr, "").await;
    let mut echo = through.echo().await;
    let big = Msg {
        data: vec![7; 6 << 20],
        ..msg("big")
    };
    let resp = within(echo.unary("Unary", tonic::Request::new(big)))
        .await
        .expect("6 MiB unary");
    assert_eq!(resp.get_ref().data.len(), 6 << 20);
    assert!(resp.get_ref().data.iter().all(|b| *b == 7));

    let mut down = within(echo.download(8 << 20))
        .await
        .expect("Download")
        .into_inner();
    let mut total = 0;
    while let Some(m) = within(down.message()).await.expect("stream") {
        total += m.data.len();
    }
    assert_eq!(total, 8 << 20);

    let up: Vec<Msg> = (0..8)
        .map(|_| Msg {
            data: vec![1; 1 << 20],
            ..Msg::default()
        })
        .collect();
    let collected = within(echo.collect(up))
        .await
        .expect("Collect")
        .into_inner();
    assert_eq!(collected.size, 8 << 20);
    drop(through);
}

const FLAKY_ROUTE: &str = "/outrigger.test.Echo/Flaky";

fn flaky(code: Code) -> tonic::Request<Msg> {
    tonic::Request::new(Msg {
        fail: code as i32,
        ..msg("flaky")
    })
}

/// A trailers-only UNAVAILABLE is retried like a 503 where the route declares the call
/// safe (`retry.methods: [POST]`), within the route's attempts.
#[tokio::test]
async fn grpc_unavailable_is_retried_where_the_route_declares_post_safe() {
    let server = GrpcServer::start().await;
    let yaml = format!(
        "routes:\n  - name: flaky\n    match: {{ path: {FLAKY_ROUTE} }}\n    retry:\n      attempts: 3\n      backoff: {{ base: 10ms, max: 20ms }}\n      methods: [POST]\n      when: [connect-failure, grpc-unavailable, grpc-resource-exhausted]\n"
    );
    let through = Through::start(server.addr, &yaml).await;
    let mut echo = through.echo().await;
    server.state.flaky_failures.store(2, Ordering::SeqCst);
    let resp = within(echo.unary("Flaky", flaky(Code::Unavailable)))
        .await
        .expect("answered after two retries");
    assert_eq!(resp.get_ref().text, "flaky");
    assert_eq!(attempts_of(resp.metadata()).as_deref(), Some("3"));
    assert_eq!(server.state.flaky_calls.load(Ordering::SeqCst), 3);

    // A status not in `when` (INTERNAL) is passed on at once.
    server.state.flaky_failures.store(1, Ordering::SeqCst);
    let status = within(echo.unary("Flaky", flaky(Code::Internal)))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Internal, "flaky"));
    assert_eq!(server.state.flaky_calls.load(Ordering::SeqCst), 4);
    let metrics = through.metrics().await;
    let retries = metric(
        &metrics,
        "outrigger_retries_total",
        &[("route", "flaky"), ("reason", "grpc-unavailable")],
    );
    assert_eq!(retries, 2.0, "{metrics}");
    drop(through);
}

/// A gRPC call is a POST: where the route does not declare it safe, a retryable gRPC status
/// is passed on and the call is never sent twice.
#[tokio::test]
async fn an_undeclared_grpc_call_is_never_sent_twice() {
    let server = GrpcServer::start().await;
    let yaml = "defaults:\n  retry:\n    attempts: 3\n    backoff: { base: 10ms, max: 20ms }\n    when: [connect-failure, reset, grpc-unavailable, grpc-internal]\n";
    let through = Through::start(server.addr, yaml).await;
    let mut echo = through.echo().await;
    server.state.flaky_failures.store(2, Ordering::SeqCst);
    let status = within(echo.unary("Flaky", flaky(Code::Unavailable)))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "flaky")
    );
    assert_eq!(
        server.state.flaky_calls.load(Ordering::SeqCst),
        1,
        "sent twice"
    );
    assert_eq!(attempts_of(status.metadata()).as_deref(), Some("1"));
    let metrics = through.metrics().await;
    let skipped = metric(
        &metrics,
        "outrigger_retries_skipped_total",
        &[("route", "default"), ("reason", "method")],
    );
    assert_eq!(skipped, 1.0, "{metrics}");
    // With the idempotency header the same call may be resent.
    let mut req = flaky(Code::Unavailable);
    req.metadata_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    let resp = within(echo.unary("Flaky", req)).await.expect("resent");
    assert_eq!(attempts_of(resp.metadata()).as_deref(), Some("2"));
    assert_eq!(server.state.flaky_calls.load(Ordering::SeqCst), 3);
    drop(through);
}

/// The breaker counts trailers-only UNAVAILABLE and RESOURCE_EXHAUSTED as failures: after
/// enough of them the next call is turned away by outrigger (circuit-open, UNAVAILABLE).
#[tokio::test]
async fn the_breaker_counts_grpc_unavailable_and_resource_exhausted() {
    let server = GrpcServer::start().await;
    let yaml = "defaults:\n  retry: { attempts: 1 }\n  circuit_breaker: { min_requests: 4, failure_ratio: 0.5, open_duration: 30s }\n";
    let through = Through::start(server.addr, yaml).await;
    let mut echo = through.echo().await;
    server.state.flaky_failures.store(4, Ordering::SeqCst);
    for code in [
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::Unavailable,
        Code::ResourceExhausted,
    ] {
        let status = within(echo.unary("Flaky", flaky(code))).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (code, "flaky"));
    }
    let status = within(echo.unary("Flaky", flaky(Code::Unavailable)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("outrigger: circuit-open"),
        "{status:?}"
    );
    assert_eq!(attempts_of(status.metadata()).as_deref(), Some("0"));
    assert_eq!(server.state.flaky_calls.load(Ordering::SeqCst), 4);
    drop(through);
}

/// `grpc-timeout` caps the route's deadline (10s here): the call ends at the client's 300ms
/// with a DEADLINE_EXCEEDED made by outrigger. A longer one does not extend a short route
/// timeout, and a malformed one is ignored, never a 500.
#[tokio::test]
async fn grpc_timeout_caps_the_deadline_and_a_malformed_one_is_ignored() {
    let server = raw::slow_h2c(Duration::from_millis(1500)).await;
    let yaml = "defaults:\n  timeout: 10s\n  retry: { attempts: 1, per_try_timeout: 10s }\nroutes:\n  - name: short\n    match: { path_prefix: /short }\n    timeout: 500ms\n    retry: { attempts: 1, per_try_timeout: 10s }\n";
    let through = Through::start(server.addr, yaml).await;
    let call = |path: &str, timeout: Option<&str>| {
        let mut req = Request::post(format!("http://{}{path}", through.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        h2_client().request(
            req.body(Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0])))
                .unwrap(),
        )
    };
    let started = std::time::Instant::now();
    let resp = within(call("/svc/M", Some("300m"))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "4");
    let message = resp.headers()["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("outrigger: timeout"), "{message}");
    assert!(took < Duration::from_millis(1400), "{took:?}");

    // Longer than the route's 500ms: the route's deadline holds.
    let started = std::time::Instant::now();
    let resp = within(call("/short/M", Some("1H"))).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "4");
    assert!(started.elapsed() < Duration::from_millis(1400));

    // Malformed: ignored, the call answered by the upstream.
    for bad in ["soon", "123456789S", "10"] {
        let resp = within(call("/svc/M", Some(bad))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{bad}");
        assert_eq!(resp.headers()["grpc-status"], "0", "{bad}");
    }
    // The header itself goes on to the upstream untouched.
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0]["grpc-timeout"], "300m");
    drop(through);
}

/// outrigger's own errors for gRPC calls are trailers-only gRPC errors naming the REASON:
/// UNAVAILABLE for connect-failure, RESOURCE_EXHAUSTED for rate-limited; non-gRPC requests
/// keep the JSON answer.
#[tokio::test]
async fn proxy_made_errors_are_grpc_errors_for_grpc_calls() {
    let mut server = GrpcServer::start().await;
    let yaml = "defaults:\n  retry: { attempts: 1 }\nroutes:\n  - name: limited\n    match: { path: /outrigger.test.Echo/Unary }\n    rate_limit: { rate: 1/m, burst: 1 }\n";
    let through = Through::start(server.addr, yaml).await;
    let mut echo = through.echo().await;
    within(echo.unary("Unary", tonic::Request::new(msg("one"))))
        .await
        .expect("within the limit");
    let status = within(echo.unary("Unary", tonic::Request::new(msg("two"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("outrigger: rate-limited"),
        "{status:?}"
    );

    server.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fresh = through.echo().await;
    let status = within(fresh.unary("Flaky", flaky(Code::Ok)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("outrigger: connect-failure"),
        "{status:?}"
    );
    assert!(attempts_of(status.metadata()).is_some());
    // A plain HTTP request still gets the JSON 502.
    let (code, _, body) = get(&format!("http://{}/plain", through.addr)).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert!(body.contains("\"reason\":\"connect-failure\""), "{body}");
    let metrics = through.metrics().await;
    for (route, code) in [("limited", "8"), ("default", "14")] {
        let n = metric(
            &metrics,
            "outrigger_grpc_responses_total",
            &[("route", route), ("grpc_status", code)],
        );
        assert_eq!(n, 1.0, "{route} {code}: {metrics}");
    }
    drop(through);
}

/// `fallback.grpc`: a serialized message (framed by outrigger) with status 0, or a chosen
/// status; plain HTTP requests on the same route get the HTTP fallback.
#[tokio::test]
async fn grpc_fallbacks_answer_with_a_message_or_a_chosen_status() {
    let answer = Msg {
        text: "from the fallback".to_owned(),
        size: 42,
        ..Msg::default()
    };
    let file = temp_file("answer.bin", "");
    std::fs::write(&file, answer.encode_to_vec()).unwrap();
    // A port with nothing listening: every call fails with connect-failure.
    let nothing: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "defaults:\n  retry: {{ attempts: 1 }}\nroutes:\n  - name: canned\n    match: {{ path: /outrigger.test.Echo/Unary }}\n    fallback:\n      status: 200\n      body: plain\n      grpc: {{ status: 0, message_file: {} }}\n  - name: refused\n    match: {{ path: {FLAKY_ROUTE} }}\n    fallback:\n      grpc: {{ status: 14, message: \"try again later\" }}\n",
        file.display()
    );
    let through = Through::start(nothing, &yaml).await;
    let mut echo = through.echo().await;
    let resp = within(echo.unary("Unary", tonic::Request::new(msg("x"))))
        .await
        .expect("fallback message");
    assert_eq!(resp.get_ref(), &answer);
    assert_eq!(
        resp.metadata().get("x-outrigger-fallback").unwrap(),
        "connect-failure"
    );

    let status = within(echo.unary("Flaky", flaky(Code::Ok)))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "try again later")
    );

    let (code, _, body) = get(&format!(
        "http://{}/outrigger.test.Echo/Unary",
        through.addr
    ))
    .await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "plain"));
    let metrics = through.metrics().await;
    for (route, code) in [("canned", "0"), ("refused", "14")] {
        let n = metric(
            &metrics,
            "outrigger_grpc_responses_total",
            &[("route", route), ("grpc_status", code)],
        );
        assert_eq!(n, 1.0, "{route} {code}: {metrics}");
    }
    drop(through);
}

/// Bad gRPC config: a missing message_file and a status outside 0-16 are errors naming the
/// field; grpc-* retry conditions on an HTTP/1.1 upstream a warning naming it.
#[test]
fn grpc_config_errors_and_warnings_name_their_field() {
    let cases = [
        (
            "fallback:\n    grpc: { status: 0, message_file: /nonexistent/answer.bin }",
            "defaults.fallback.grpc.message_file: cannot read /nonexistent/answer.bin",
        ),
        (
            "fallback:\n    grpc: { status: 17 }",
            "defaults.fallback.grpc.status: 17 is not a gRPC status (use 0-16)",
        ),
        (
            "fallback:\n    when: [grpc-unavailable]",
            "defaults.fallback.when: grpc-unavailable is a retry condition",
        ),
        (
            "retry:\n    when: [grpc-unavalable]",
            "`grpc-unavalable` is not a known condition",
        ),
    ];
    for (policy, expected) in cases {
        let yaml =
            format!("upstream:\n  url: http://127.0.0.1:9\n  http2: true\ndefaults:\n  {policy}\n");
        let path = temp_file("bad.yaml", &yaml);
        let out = run(&["check", "--config", path.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{policy}: {stderr}");
        assert!(stderr.contains(expected), "{policy}: {stderr}");
    }
    let yaml = "upstream:\n  url: http://127.0.0.1:9\nroutes:\n  - name: rpc\n    match: { path_prefix: /svc }\n    retry: { when: [grpc-unavailable] }\n";
    let path = temp_file("warn.yaml", yaml);
    let out = run(&["check", "--config", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: routes[0].retry.when: route `rpc` lists grpc-unavailable but upstream.http2 is false"),
        "{stderr}"
    );
}
