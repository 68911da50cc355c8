//! Upstreams that queue or hang, over HTTP/2 and TLS (issue 21 items 4, 5, 7, 8; SPEC §7.8):
//! an HTTP/2 upstream with one stream per connection, a TLS upstream that never answers
//! the handshake, mTLS, and the ALPN offered with `http2: false`.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use outrigger::config::{self, Overrides};
use support::servers;
use support::upstream_tls::{self as peers, client_pki};
use support::{get, metric, send, temp_file, Sidecar};

/// 30 concurrent GETs through a sidecar in front of an HTTP/2 upstream that allows one
/// stream per connection and answers after 200 ms: each request's status and time, the
/// upstream attempts counted as timeouts, and the connections the upstream accepted.
async fn thirty_gets(streams: u32, policy: &str) -> (Vec<(StatusCode, Duration)>, f64, usize) {
    let backend = peers::h2_limited(streams, Duration::from_millis(200)).await;
    let yaml = format!(
        "upstream:\n  url: http://{}\n  http2: true\n{policy}",
        backend.addr
    );
    let sidecar = Sidecar::start(&yaml).await;
    let url = sidecar.url("/slow");
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, _, _) = get(&url).await;
                (status, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for request in requests {
        results.push(request.await.unwrap());
    }
    let metrics = sidecar.metrics().await;
    let attempts = "outrigger_upstream_attempts_total";
    let timeouts = metric(&metrics, attempts, &[("result", "timeout")]);
    let connections = backend.connections.load(Ordering::SeqCst);
    let mut times: Vec<Duration> = results.iter().map(|r| r.1).collect();
    times.sort();
    println!(
        "30 concurrent GETs, max_concurrent_streams={streams}: p50 {:?}, p99 {:?}, \
         {} attempts counted as timeouts, {connections} upstream connections",
        times[14], times[29], timeouts as u64,
    );
    (results, timeouts, connections)
}

/// Issue 21 item 4: 30 concurrent 200 ms GETs against `SETTINGS_MAX_CONCURRENT_STREAMS=1`
/// all succeed, without one attempt charged to the upstream as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_with_one_stream_per_connection_gets_more_connections() {
    let policy = "defaults:\n  retry: { per_try_timeout: 1s }\n";
    let (results, timeouts, connections) = thirty_gets(1, policy).await;
    assert_eq!(timeouts, 0.0, "queueing counted as upstream timeouts");
    assert!(results.iter().all(|r| r.0 == StatusCode::OK), "{results:?}");
    assert!(connections > 1);
}

/// The figure quoted for issue 21 item 4, with the default policy (as in the issue):
/// `cargo test --test upstream_tls bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints the p99, asserts nothing about time"]
async fn bench_thirty_gets_one_stream_per_connection() {
    thirty_gets(1, "").await;
}

/// The common HTTP/2 upstream (100 streams): a burst shares the connection being opened
/// rather than opening one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_burst_shares_one_connection_when_the_upstream_allows_it() {
    let (results, timeouts, connections) = thirty_gets(100, "").await;
    assert!(results.iter().all(|r| r.0 == StatusCode::OK), "{results:?}");
    assert_eq!((timeouts, connections), (0.0, 1));
}

/// Issue 21 item 5: an `https://` upstream that accepts and never answers the handshake is
/// a `connect-failure` after `connect_timeout`, retried even for a POST.
#[tokio::test]
async fn silent_tls_upstream_is_a_connect_failure_within_connect_timeout() {
    let silent = peers::silent().await;
    let yaml = format!(
        "upstream:\n  url: https://127.0.0.1:{}\n  connect_timeout: 200ms\n\
         defaults:\n  timeout: 10s\n  retry: {{ attempts: 2, per_try_timeout: 3s, backoff: {{ base: 5ms, max: 10ms }} }}\n  \
         circuit_breaker: {{ enabled: false }}\n",
        silent.addr.port()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let started = Instant::now();
    let req = Request::post(sidecar.url("/pay"))
        .body(Full::new(Bytes::from_static(b"charge")))
        .unwrap();
    let (status, headers, body) = send(req).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains(r#""reason":"connect-failure""#), "{body}");
    assert_eq!(
        headers["x-outrigger-attempts"], "2",
        "nothing was sent: retried"
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}, not connect_timeout"
    );
}

fn mtls_yaml(backend: std::net::SocketAddr, ca: &str, client: Option<(&str, &str)>) -> String {
    let ca = temp_file("ca.pem", ca);
    let mut tls = format!("ca_file: {}", ca.display());
    if let Some((cert, key)) = client {
        let cert = temp_file("client.pem", cert);
        let key = temp_file("client.key", key);
        tls += &format!(
            ", cert_file: {}, key_file: {}",
            cert.display(),
            key.display()
        );
    }
    format!("upstream:\n  url: https://{backend}\n  tls: {{ {tls} }}\n")
}

/// Issue 21 item 7: the client certificate is presented to an upstream that requires one.
#[tokio::test]
async fn mtls_upstream_gets_the_client_certificate() {
    let pki = servers::pki(&["127.0.0.1"]);
    let client = client_pki();
    let config = peers::server_config(&pki, Some(&client.ca_pem), &[b"http/1.1"]);
    let backend = peers::tls_server(config, false).await;
    let yaml = mtls_yaml(
        backend.addr,
        &pki.ca_pem,
        Some((&client.cert_pem, &client.key_pem)),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let (status, _, body) = get(&sidecar.url("/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "tls-ok"));
}

/// Issue 21 item 7: without a certificate the answer is a `bad-response`, not retried (the
/// log names the certificate requirement: `failure::hint`, unit-tested in the crate).
#[tokio::test]
async fn mtls_upstream_without_a_certificate_is_a_bad_response() {
    let pki = servers::pki(&["127.0.0.1"]);
    let client = client_pki();
    let config = peers::server_config(&pki, Some(&client.ca_pem), &[b"http/1.1"]);
    let backend = peers::tls_server(config, false).await;
    let sidecar = Sidecar::start(&mtls_yaml(backend.addr, &pki.ca_pem, None)).await;
    let (status, headers, body) = get(&sidecar.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(r#""reason":"bad-response""#), "{body}");
    assert_eq!(headers["x-outrigger-attempts"], "1");
}

fn load(yaml: &str) -> Result<config::Config, config::ConfigError> {
    config::load(
        Some(&temp_file("outrigger.yaml", yaml)),
        &Overrides::default(),
    )
}

/// Issue 21 item 7: the client certificate is checked at load: both files, readable, and
/// a key that belongs to the certificate.
#[test]
fn client_certificate_is_checked_at_load() {
    let pki = servers::pki(&["127.0.0.1"]);
    let (one, other) = (client_pki(), client_pki());
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let good = mtls_yaml(addr, &pki.ca_pem, Some((&one.cert_pem, &one.key_pem)));
    assert!(load(&good).is_ok());
    let mismatch = mtls_yaml(addr, &pki.ca_pem, Some((&one.cert_pem, &other.key_pem)));
    let err = load(&mismatch).unwrap_err();
    assert_eq!(err.field, "upstream.tls.key_file");
    assert!(err.message.contains("does not fit"), "{err}");
    let missing = "upstream:\n  url: https://127.0.0.1:1\n  tls: { cert_file: /nonexistent/c.pem, key_file: k.pem }\n";
    let err = load(missing).unwrap_err();
    assert_eq!(err.field, "upstream.tls.cert_file");
    assert!(
        err.message.contains("cannot read /nonexistent/c.pem"),
        "{err}"
    );
    let alone = "upstream:\n  url: https://127.0.0.1:1\n  tls: { cert_file: c.pem }\n";
    assert_eq!(load(alone).unwrap_err().field, "upstream.tls.key_file");
}

/// Issue 21 item 8: with `http2: false` the upstream is offered ALPN `http/1.1`.
#[tokio::test]
async fn http1_tls_upstream_is_offered_alpn_http1() {
    let pki = servers::pki(&["127.0.0.1"]);
    let config = peers::server_config(&pki, None, &[b"http/1.1"]);
    let backend = peers::tls_server(config, false).await;
    let ca = temp_file("ca.pem", &pki.ca_pem);
    let yaml = format!(
        "upstream:\n  url: https://{}\n  tls: {{ ca_file: {} }}\n",
        backend.addr,
        ca.display()
    );
    let sidecar = Sidecar::start(&yaml).await;
    assert_eq!(get(&sidecar.url("/")).await.0, StatusCode::OK);
    let alpn = backend.alpn.lock().unwrap().clone();
    assert_eq!(alpn, vec![Some(b"http/1.1".to_vec())]);
}

/// Issue 21 item 8: an HTTP/2-only upstream with `http2: false` is a protocol mismatch
/// (`bad-response`, not retried), found in the handshake before any request is sent.
#[tokio::test]
async fn h2_only_upstream_with_http2_false_is_a_bad_response() {
    let pki = servers::pki(&["127.0.0.1"]);
    let config = peers::server_config(&pki, None, &[b"h2"]);
    let backend = peers::tls_server(config, true).await;
    let ca = temp_file("ca.pem", &pki.ca_pem);
    let yaml = format!(
        "upstream:\n  url: https://{}\n  tls: {{ ca_file: {} }}\n",
        backend.addr,
        ca.display()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let (status, headers, body) = get(&sidecar.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(r#""reason":"bad-response""#), "{body}");
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(backend.hits.load(Ordering::SeqCst), 0);
    let sessions = backend.alpn.lock().unwrap().clone();
    assert_eq!(
        sessions,
        Vec::<Option<Vec<u8>>>::new(),
        "refused in the handshake"
    );
}
