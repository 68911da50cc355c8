//! SPEC §7.2 through the real server: a slow first attempt is hedged and the first headers
//! win, the loser's connection is closed, a POST without an idempotency key is never
//! hedged, `max_ratio` holds under concurrency, and bad `hedge` config is refused.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use outrigger::config::{self, Overrides};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend whose first connection never answers (it waits for the proxy to close it and
/// records that it did); every later connection answers `200` at once. Returns its URL,
/// the number of connections and whether the first one was closed by the proxy.
async fn first_one_stalls() -> (String, Arc<AtomicUsize>, Arc<Mutex<Option<bool>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let conns = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(Mutex::new(None));
    let (c, cl) = (Arc::clone(&conns), Arc::clone(&closed));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let cl = Arc::clone(&cl);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                if n == 0 {
                    // Hold the answer; a cancelled hedge loser shows up as EOF here.
                    let eof = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                        .await
                        .is_ok_and(|r| matches!(r, Ok(0) | Err(_)));
                    *cl.lock().unwrap() = Some(eof);
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    (url, conns, closed)
}

#[tokio::test]
async fn a_slow_first_attempt_is_hedged_and_the_loser_is_cancelled() {
    let (url, conns, closed) = first_one_stalls().await;
    let yaml =
        format!("upstream:\n  url: {url}\ndefaults:\n  hedge: {{ delay: 50ms, max_ratio: 1.0 }}\n");
    let sidecar = Sidecar::start(&yaml).await;
    let (status, headers, body) = get(&sidecar.url("/slow")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");
    assert_eq!(
        headers["x-outrigger-attempts"], "2",
        "the hedge is an attempt"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    eventually(|| closed.lock().unwrap().is_some()).await;
    assert_eq!(
        *closed.lock().unwrap(),
        Some(true),
        "the losing attempt's connection is closed"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_hedges_total", &[("result", "won")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_upstream_attempts_total",
            &[("result", "2xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_hedge_carries_its_attempt_number_and_a_fast_first_attempt_is_not_hedged() {
    let backend = Backend::start().await;
    backend.script([Action::Delay(
        Duration::from_millis(400),
        Box::new(Action::Status(200)),
    )]);
    let yaml = "defaults:\n  hedge: { delay: 40ms, max_ratio: 1.0 }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (status, headers, _) = get(&sidecar.url("/a")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");
    let seen: Vec<String> = backend
        .received()
        .iter()
        .map(|r| r.header("x-outrigger-attempt").unwrap_or("").to_owned())
        .collect();
    assert_eq!(seen, ["1", "2"]);
    // Answered at once: no hedge.
    let (_, headers, _) = get(&sidecar.url("/b")).await;
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(backend.count(), 3);
}

async fn post(url: &str, key: Option<&str>, body: &'static [u8]) -> StatusCode {
    let mut req = Request::builder().method(Method::POST).uri(url);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    send(req.body(Full::new(Bytes::from_static(body))).unwrap())
        .await
        .0
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_never_hedged() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(300),
        Box::new(Action::Status(200)),
    ));
    let yaml = "defaults:\n  hedge: { delay: 20ms, max_ratio: 1.0 }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    // With a body (streamed once) and without one (nothing to keep): both are sent once.
    for body in [&b"pay"[..], b"", b"pay"] {
        assert_eq!(post(&sidecar.url("/pay"), None, body).await, StatusCode::OK);
    }
    assert_eq!(backend.count(), 3, "each POST sent exactly once");
    // The same request with a key may be sent twice, and is hedged.
    let keyed = post(&sidecar.url("/pay"), Some("k1"), b"pay").await;
    assert_eq!(keyed, StatusCode::OK);
    assert_eq!(backend.count(), 5);
    let m = sidecar.metrics().await;
    assert_eq!(metric(&m, "outrigger_hedges_total", &[]), 1.0);
}

#[tokio::test]
async fn max_ratio_holds_under_concurrency() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(60),
        Box::new(Action::Status(200)),
    ));
    let yaml = "defaults:\n  hedge: { delay: 5ms, max_ratio: 0.1 }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (next, url) = (Arc::clone(&next), sidecar.url("/r"));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < 400 {
                assert_eq!(get(&url).await.0, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
    let m = sidecar.metrics().await;
    let started = metric(&m, "outrigger_hedges_total", &[("result", "won")])
        + metric(&m, "outrigger_hedges_total", &[("result", "lost")]);
    assert!(started <= 40.0, "{started} hedges for 400 requests");
    assert!(started >= 10.0, "hedging did happen: {started}");
    assert!(metric(&m, "outrigger_hedges_total", &[("result", "skipped")]) > 0.0);
    assert!(
        backend.count() <= 440,
        "{} upstream requests for 400",
        backend.count()
    );
}

fn load(yaml: &str) -> Result<config::Config, config::ConfigError> {
    config::from_text(
        &format!("upstream:\n  url: http://127.0.0.1:1\n{yaml}"),
        Some(Path::new("/etc/o.yaml")),
        &Overrides::default(),
    )
}

#[test]
fn bad_hedge_and_budget_values_are_refused_with_their_place() {
    let zero = load("defaults:\n  hedge: { delay: 0s }\n")
        .unwrap_err()
        .to_string();
    assert!(
        zero.starts_with("/etc/o.yaml:4:") && zero.contains("defaults.hedge.delay"),
        "{zero}"
    );
    let ratio = load("routes:\n  - name: a\n    hedge: { max_ratio: 1.5 }\n")
        .unwrap_err()
        .to_string();
    assert!(
        ratio.contains("routes[0].hedge.max_ratio") && ratio.contains("1.5 is outside 0..1"),
        "{ratio}"
    );
    let auto = load("defaults:\n  hedge: { delay: auto }\n").unwrap();
    assert!(auto.default_route.policy.hedge.is_some());
    let soon = load("defaults:\n  hedge: { delay: soon }\n").unwrap_err();
    assert!(soon.to_string().contains("or `auto`"), "{soon}");
}

#[test]
fn a_hedge_on_a_route_that_is_never_resent_is_a_warning() {
    let c = load(
        "defaults:\n  retry: { idempotency_header: null }\nroutes:\n  - name: pay\n    match: { methods: [POST] }\n    hedge: { delay: 20ms }\n  - name: read\n    match: { methods: [GET, POST] }\n    hedge: { delay: 20ms }\n",
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("routes[0].hedge") && c.warnings[0].contains("`pay`"),
        "{:?}",
        c.warnings
    );
}
