//! Protocol breadth: HTTPS and HTTP/2 upstreams, HTTP/2 clients, WebSocket pass-through,
//! and fault injection.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::servers::{self, H2Step};
use support::*;

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let pki = servers::pki(&["localhost", "127.0.0.1"]);
    let backend = servers::tls_backend(&pki).await;
    let ca = temp_file("ca.pem", &pki.ca_pem);
    let yaml = format!(
        "upstream:\n  url: https://{}\n  tls: {{ ca_file: {} }}\n",
        backend.addr,
        ca.display()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let (status, _, body) = get(&sidecar.url("/secure")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "tls:HTTP/1.1"));
}

#[tokio::test]
async fn https_upstream_over_http2_by_alpn() {
    let pki = servers::pki(&["127.0.0.1"]);
    let backend = servers::tls_backend(&pki).await;
    let ca = temp_file("ca.pem", &pki.ca_pem);
    let yaml = format!(
        "upstream:\n  url: https://{}\n  http2: true\n  tls: {{ ca_file: {} }}\n",
        backend.addr,
        ca.display()
    );
    let sidecar = Sidecar::start(&yaml).await;
    assert_eq!(get(&sidecar.url("/")).await.2, "tls:HTTP/2.0");
}

#[tokio::test]
async fn server_name_overrides_the_name_checked() {
    let pki = servers::pki(&["backend.internal"]);
    let backend = servers::tls_backend(&pki).await;
    let ca = temp_file("ca.pem", &pki.ca_pem);
    let yaml = format!(
        "upstream:\n  url: https://{}\n  tls: {{ ca_file: {}, server_name: backend.internal }}\n",
        backend.addr,
        ca.display()
    );
    let sidecar = Sidecar::start(&yaml).await;
    assert_eq!(get(&sidecar.url("/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn certificate_errors_are_bad_responses_never_retried() {
    let pki = servers::pki(&["backend.internal"]);
    let backend = servers::tls_backend(&pki).await;
    let ca = temp_file("ca.pem", &pki.ca_pem);
    // Wrong hostname: the certificate is for backend.internal, we reach 127.0.0.1.
    let wrong_name = format!(
        "upstream:\n  url: https://{}\n  tls: {{ ca_file: {} }}\n",
        backend.addr,
        ca.display()
    );
    // Untrusted: the default webpki roots do not know our test CA.
    let untrusted = format!(
        "upstream:\n  url: https://{}\n  tls: {{ server_name: backend.internal }}\n",
        backend.addr
    );
    for yaml in [wrong_name, untrusted] {
        let sidecar = Sidecar::start(&yaml).await;
        let req = Request::post(sidecar.url("/x"))
            .header("idempotency-key", "k")
            .body(Full::default())
            .unwrap();
        let (status, headers, body) = send(req).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains(r#""reason":"bad-response""#), "{body}");
        assert_eq!(
            headers["x-outrigger-attempts"], "1",
            "a certificate error does not heal: no retry"
        );
        let m = sidecar.metrics().await;
        assert_eq!(
            metric(
                &m,
                "outrigger_upstream_attempts_total",
                &[("result", "bad-response")]
            ),
            1.0
        );
    }
    assert_eq!(
        backend.hits.load(Ordering::SeqCst),
        0,
        "no request went over an unverified connection"
    );
}

#[tokio::test]
async fn plain_http2_upstream_and_retries_over_it() {
    let backend = servers::h2c_backend(vec![H2Step::Status(503), H2Step::Ok]).await;
    let yaml = format!("upstream:\n  url: http://{}\n  http2: true\ndefaults:\n  retry: {{ backoff: {{ base: 5ms, max: 10ms }} }}\n", backend.addr);
    let sidecar = Sidecar::start(&yaml).await;
    let (status, headers, body) = get(&sidecar.url("/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "h2c:HTTP/2.0"));
    assert_eq!(headers["x-outrigger-attempts"], "2");
}

#[tokio::test]
async fn refused_streams_are_retried_for_any_method() {
    let backend = servers::h2c_backend(vec![H2Step::Refuse, H2Step::Ok]).await;
    let yaml = format!("upstream:\n  url: http://{}\n  http2: true\ndefaults:\n  retry: {{ backoff: {{ base: 5ms, max: 10ms }} }}\n", backend.addr);
    let sidecar = Sidecar::start(&yaml).await;
    let req = Request::post(sidecar.url("/pay"))
        .body(Full::new(Bytes::from_static(b"once")))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-outrigger-attempts"], "2",
        "REFUSED_STREAM means not processed"
    );
    assert_eq!(
        backend.hits.load(Ordering::SeqCst),
        1,
        "processed exactly once"
    );
}

#[tokio::test]
async fn http2_clients_get_trailers_retries_and_fallbacks() {
    let backend = servers::h2c_backend(vec![
        H2Step::Status(503),
        H2Step::Trailers,
        H2Step::Status(503),
        H2Step::Status(503),
    ])
    .await;
    let yaml = format!(
        "upstream:\n  url: http://{}\n  http2: true\ndefaults:\n  retry: {{ attempts: 2, backoff: {{ base: 5ms, max: 10ms }} }}\n  fallback: {{ body: later }}\n",
        backend.addr
    );
    let sidecar = Sidecar::start(&yaml).await;
    let client = h2_client();
    let resp = within(
        client.request(
            Request::get(sidecar.url("/stream"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-outrigger-attempts"], "2");
    let collected = within(resp.into_body().collect()).await.unwrap();
    assert_eq!(
        collected.trailers().expect("trailers arrive")["grpc-status"],
        "0"
    );
    assert_eq!(collected.to_bytes(), "h2c:HTTP/2.0");

    let resp = within(
        client.request(
            Request::get(sidecar.url("/down"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["x-outrigger-fallback"], "status-503");
    assert_eq!(
        within(resp.into_body().collect()).await.unwrap().to_bytes(),
        "later"
    );
}

#[tokio::test]
async fn http2_client_with_stale_copies_like_http1() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(
        &backend,
        "defaults:\n  retry: { attempts: 1 }\n  stale_if_error: { max_age: 1m }\n",
    )
    .await;
    let client = h2_client();
    let fetch = || {
        client.request(
            Request::get(sidecar.url("/doc"))
                .body(Full::default())
                .unwrap(),
        )
    };
    assert_eq!(within(fetch()).await.unwrap().status(), StatusCode::OK);
    backend.set_default(Action::Status(503));
    let resp = within(fetch()).await.unwrap();
    assert_eq!(resp.headers()["x-outrigger-stale"], "0");
    assert_eq!(
        within(resp.into_body().collect()).await.unwrap().to_bytes(),
        "ok"
    );
}

#[tokio::test]
async fn websocket_passes_through_both_ways() {
    let echo = servers::websocket_echo().await;
    let sidecar = Sidecar::start(&format!("upstream:\n  url: http://{}\n", echo.addr)).await;
    let (mut ws, resp) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/chat",
        sidecar.addr
    )))
    .await
    .expect("handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "second message", &"x".repeat(100_000)] {
        within(ws.send(tokio_tungstenite::tungstenite::Message::text(text)))
            .await
            .unwrap();
        let back = within(ws.next()).await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap(), text);
    }
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_requests_total", &[("code", "101")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_upstream_attempts_total",
            &[("result", "2xx")]
        ),
        1.0,
        "the handshake is one attempt"
    );
    assert_eq!(sidecar.app.proxy.tunnels.open(), 1);
    drop(ws);
    eventually(|| sidecar.app.proxy.tunnels.open() == 0).await;
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_within_the_timeout() {
    let echo = servers::websocket_echo().await;
    let sidecar = Sidecar::start(&format!(
        "upstream:\n  url: http://{}\nshutdown:\n  timeout: 300ms\n",
        echo.addr
    ))
    .await;
    let (mut ws, _) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/chat",
        sidecar.addr
    )))
    .await
    .unwrap();
    let started = Instant::now();
    sidecar.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let next = within(ws.next()).await;
    assert!(
        !matches!(next, Some(Ok(ref m)) if m.is_text()),
        "tunnel closed: {next:?}"
    );
}

#[tokio::test]
async fn injected_aborts_and_delays() {
    let backend = Backend::start().await;
    let yaml = "routes:
  - name: abort
    match: { path_prefix: /abort }
    fault: { abort: { percent: 100, status: 503 } }
  - name: drill
    match: { path_prefix: /drill }
    fault: { abort: { percent: 100, status: 502 } }
    fallback: { body: fallback served }
  - name: slow
    match: { path_prefix: /slow }
    fault: { delay: { percent: 100, duration: 300ms } }
";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (status, headers, _) = get(&sidecar.url("/abort")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-outrigger-fault"], "abort");
    let (_, headers, body) = get(&sidecar.url("/drill")).await;
    assert_eq!(body, "fallback served");
    assert_eq!(
        (
            headers["x-outrigger-fault"].to_str().unwrap(),
            headers["x-outrigger-fallback"].to_str().unwrap()
        ),
        ("abort", "status-502")
    );
    assert_eq!(
        backend.count(),
        0,
        "aborted requests never reach the upstream"
    );

    let started = Instant::now();
    let (status, headers, _) = get(&sidecar.url("/slow")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (status, headers["x-outrigger-fault"].to_str().unwrap()),
        (StatusCode::OK, "delay")
    );
    assert_eq!(backend.count(), 1);
    let (_, headers, _) = get(&sidecar.url("/plain")).await;
    assert!(headers.get("x-outrigger-fault").is_none());

    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_faults_injected_total",
            &[("route", "abort"), ("kind", "abort")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_faults_injected_total",
            &[("route", "slow"), ("kind", "delay")]
        ),
        1.0
    );
}

#[tokio::test]
async fn cache_hits_are_not_rehearsed_outages() {
    let backend = Backend::start().await;
    let base = format!(
        "upstream:\n  url: {}\ndefaults:\n  cache: {{ ttl: 60s }}\n",
        backend.url()
    );
    let sidecar = Sidecar::start(&base).await;
    assert_eq!(get(&sidecar.url("/cached")).await.0, StatusCode::OK);
    // The same route, now with every request aborted; the store survives the reload.
    std::fs::write(
        &sidecar.config_path,
        format!("{base}  fault: {{ abort: {{ percent: 100, status: 503 }} }}\n"),
    )
    .unwrap();
    sidecar.app.reload().expect("valid config");
    let (status, headers, _) = get(&sidecar.url("/cached")).await;
    assert_eq!(
        (status, headers["x-outrigger-cache"].to_str().unwrap()),
        (StatusCode::OK, "hit")
    );
    assert!(headers.get("x-outrigger-fault").is_none());
    let (status, headers, _) = get(&sidecar.url("/not-cached")).await;
    assert_eq!(
        (status, headers["x-outrigger-fault"].to_str().unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "abort")
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_faults_injected_total", &[("kind", "abort")]),
        1.0
    );
    assert_eq!(backend.count(), 1);
}
