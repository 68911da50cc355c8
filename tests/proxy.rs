//! The core request path: forwarding, header rewriting, routing, limits and the
//! proxy-made answers, all over real loopback sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn forwards_request_and_streams_answer_back() {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 201,
        headers: vec![("x-from".into(), "backend".into())],
        body: b"created".to_vec(),
    }]);
    let sidecar = Sidecar::in_front_of(&backend, "").await;

    let req = Request::post(sidecar.url("/orders?id=7"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"one order")))
        .unwrap();
    let (status, headers, body) = send(req).await;

    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "created");
    assert_eq!(headers["x-from"], "backend");
    assert_eq!(headers["x-outrigger-attempts"], "1");
    let seen = backend.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/orders?id=7");
    assert_eq!(seen[0].body, b"one order");
    assert_eq!(seen[0].header("x-outrigger-attempt"), Some("1"));
}

#[tokio::test]
async fn large_bodies_stream_intact_both_ways() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();

    let req = Request::put(sidecar.url("/blob"))
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = within(http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed body differs");
    assert_eq!(backend.received()[0].body.len(), payload.len());
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 200,
        headers: vec![
            ("connection".into(), "x-backend-private".into()),
            ("x-backend-private".into(), "1".into()),
            ("keep-alive".into(), "timeout=5".into()),
            ("x-public".into(), "yes".into()),
        ],
        body: b"ok".to_vec(),
    }]);
    let sidecar = Sidecar::in_front_of(&backend, "").await;

    let req = Request::get(sidecar.url("/"))
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=9")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers, gzip")
        .header("upgrade", "websocket")
        .header("x-kept", "kept")
        .body(Full::default())
        .unwrap();
    let (_, headers, _) = send(req).await;

    let seen = &backend.received()[0];
    for name in ["x-private", "keep-alive", "proxy-connection", "upgrade"] {
        assert_eq!(seen.header(name), None, "{name} was forwarded");
    }
    // TE is hop-by-hop: only the proxy's own `te: trailers` goes on, as the client offered
    // trailers (SPEC §3, §7.7; issue 18), never its other codings.
    assert_eq!(seen.header("te"), Some("trailers"));
    assert_eq!(seen.header("x-kept"), Some("kept"));
    assert!(seen
        .header("connection")
        .is_none_or(|v| !v.contains("x-private")));
    assert!(headers.get("x-backend-private").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(headers["x-public"], "yes");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_appended() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;

    let req = Request::get(sidecar.url("/"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::default())
        .unwrap();
    send(req).await;
    get(&sidecar.url("/plain")).await;

    let seen = backend.received();
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(
        seen[0].header("host"),
        Some("shop.example"),
        "host_header: preserve"
    );
    assert_eq!(seen[1].header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn host_header_upstream_sends_the_upstream_authority() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "  host_header: upstream\n").await;
    let req = Request::get(sidecar.url("/"))
        .header("host", "shop.example")
        .body(Full::default())
        .unwrap();
    send(req).await;
    let seen = &backend.received()[0];
    assert_eq!(seen.header("host"), Some(backend.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example"));
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_returned() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;

    let req = Request::get(sidecar.url("/"))
        .header("x-request-id", "trace-abc-123")
        .body(Full::default())
        .unwrap();
    let (_, kept, _) = send(req).await;
    let (_, made, _) = get(&sidecar.url("/")).await;

    assert_eq!(kept["x-request-id"], "trace-abc-123");
    let seen = backend.received();
    assert_eq!(seen[0].header("x-request-id"), Some("trace-abc-123"));
    let generated = made["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 32);
    assert_eq!(seen[1].header("x-request-id"), Some(generated));
}

#[tokio::test]
async fn absolute_form_goes_to_the_configured_upstream_only() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let answer = raw(
        sidecar.addr,
        b"GET http://other-host.invalid:81/steal?x=1 HTTP/1.1\r\nhost: other-host.invalid:81\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &backend.received()[0];
    assert_eq!(seen.target, "/steal?x=1");
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let answer = raw(
        sidecar.addr,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn oversized_headers_get_431_and_others_are_still_served() {
    let backend = Backend::start().await;
    let sidecar =
        Sidecar::in_front_of(&backend, "limits:\n  max_request_header_bytes: 16KiB\n").await;
    let big = "a".repeat(20_000);
    let answer = raw(
        sidecar.addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let (status, _, _) = get(&sidecar.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn malformed_request_gets_400_and_others_are_still_served() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let answer = raw(
        sidecar.addr,
        b"GARBAGE\x01\x02 / NOT-HTTP\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let (status, _, _) = get(&sidecar.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "limits:\n  header_read_timeout: 200ms\n").await;
    let started = std::time::Instant::now();
    // Half a request line, then silence: the connection must be closed by the proxy.
    let answer = raw(
        sidecar.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(10),
    )
    .await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    assert!(!answer.contains("200"), "{answer}");
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn routes_match_first_wins_segment_aware() {
    let backend = Backend::start().await;
    let yaml = "routes:
  - name: exact
    match: { path: /status }
  - name: convs
    match: { path_prefix: /conversations/ , methods: [GET] }
  - name: tenant
    match: { headers: { x-tenant: acme } }
";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    get(&sidecar.url("/status")).await;
    get(&sidecar.url("/conversations")).await;
    get(&sidecar.url("/conversations/7")).await;
    get(&sidecar.url("/conversationsX")).await;
    send(
        Request::delete(sidecar.url("/conversations/7"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    send(
        Request::get(sidecar.url("/x"))
            .header("x-tenant", "acme")
            .body(Full::default())
            .unwrap(),
    )
    .await;

    let m = sidecar.metrics().await;
    let count = |route| metric(&m, "outrigger_requests_total", &[("route", route)]);
    assert_eq!(count("exact"), 1.0);
    assert_eq!(count("convs"), 2.0);
    assert_eq!(count("tenant"), 1.0);
    assert_eq!(
        count("default"),
        2.0,
        "/conversationsX and DELETE fall through"
    );
    assert_eq!(backend.count(), 6);
}

#[tokio::test]
async fn connection_refused_gives_502_json() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let sidecar = Sidecar::start(&format!(
        "upstream:\n  url: http://127.0.0.1:{port}\ndefaults:\n  retry: {{ attempts: 1 }}\n"
    ))
    .await;
    let (status, headers, body) = get(&sidecar.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        r#"{"error":"could not connect to the upstream","reason":"connect-failure"}"#
    );
    assert!(headers.get("x-outrigger-fallback").is_none());
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_requests_total",
            &[("code", "502"), ("outcome", "error")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_upstream_attempts_total",
            &[("result", "connect-failure")]
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_errors_map_to_reasons() {
    let backend = Backend::start().await;
    backend.script([
        Action::Reset,
        Action::Garbage,
        Action::Delay(Duration::from_secs(2), Box::new(Action::Status(200))),
    ]);
    let yaml = "defaults:\n  retry: { attempts: 1, per_try_timeout: 300ms }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;

    let (s1, _, b1) = get(&sidecar.url("/a")).await;
    let (s2, _, b2) = get(&sidecar.url("/b")).await;
    let (s3, _, b3) = get(&sidecar.url("/c")).await;
    assert_eq!(
        (s1, b1.contains(r#""reason":"reset""#)),
        (StatusCode::BAD_GATEWAY, true),
        "{b1}"
    );
    assert_eq!(
        (s2, b2.contains(r#""reason":"bad-response""#)),
        (StatusCode::BAD_GATEWAY, true),
        "{b2}"
    );
    assert_eq!(
        (s3, b3.contains(r#""reason":"timeout""#)),
        (StatusCode::GATEWAY_TIMEOUT, true),
        "{b3}"
    );
}

#[tokio::test]
async fn upstream_error_status_is_passed_through() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(500));
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let (status, headers, body) = get(&sidecar.url("/")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, "status 500");
    assert_eq!(
        headers["x-outrigger-attempts"], "1",
        "500 is not in the default retry list"
    );
}

#[tokio::test]
async fn over_the_concurrency_limit_requests_are_shed() {
    let backend = Backend::start().await;
    backend.script([Action::Delay(
        Duration::from_millis(800),
        Box::new(Action::Status(200)),
    )]);
    let sidecar = Sidecar::in_front_of(&backend, "limits:\n  max_concurrent_requests: 1\n").await;

    let slow_url = sidecar.url("/slow");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    eventually(|| backend.count() == 1).await;
    let (status, _, body) = get(&sidecar.url("/shed")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""reason":"overloaded""#), "{body}");
    assert_eq!(within(slow).await.unwrap().0, StatusCode::OK);
    assert_eq!(backend.count(), 1);
    let m = sidecar.metrics().await;
    assert_eq!(metric(&m, "outrigger_shed_total", &[]), 1.0);
    assert_eq!(metric(&m, "outrigger_in_flight_requests", &[]), 0.0);
}

#[tokio::test]
async fn proxy_port_never_serves_admin_endpoints() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    for path in ["/metrics", "/health", "/ready", "/live"] {
        get(&sidecar.url(path)).await;
    }
    let raw_shutdown = send(
        Request::post(sidecar.url("/shutdown"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(raw_shutdown.0, StatusCode::OK, "answered by the backend");
    assert_eq!(backend.count(), 5);
    assert!(sidecar.app.lifecycle.is_ready());
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = within(
        h2.request(
            Request::get(sidecar.url("/h2"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-outrigger-attempts"], "1");
    let seen = &backend.received()[0];
    assert_eq!(seen.target, "/h2");
    assert_eq!(seen.header("host"), Some(sidecar.addr.to_string().as_str()));
}

#[tokio::test]
async fn clients_that_stall_before_the_protocol_is_known_are_cut_off() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "limits:\n  header_read_timeout: 200ms\n").await;
    let started = std::time::Instant::now();
    // The first bytes of the HTTP/2 preface, then silence.
    let answer = raw(sidecar.addr, b"PRI * HT", Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started.elapsed()
    );
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(get(&sidecar.url("/")).await.0, StatusCode::OK);
}
