//! Slow and stuck clients (issue 21, items 1 and 2): a client that stops reading is cut off
//! after `limits.send_timeout` with its in-flight slot and upstream connection released, an
//! idle keep-alive connection is closed after `limits.idle_timeout`, and the time a client
//! takes to upload is its own: never charged to the route's `timeout` or to the upstream.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::review_conn::{get_request, RawConn};
use support::slowclients::{h2_zero_window, post, EndlessUpstream, Paced};
use support::{get, metric, within, Action, Backend, Sidecar};

/// Polls the sidecar's metrics until `check` holds (bounded by the test limit).
async fn metrics_until(sidecar: &Sidecar, check: impl Fn(&str) -> bool) {
    within(async {
        while !check(&sidecar.metrics().await) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn in_flight(text: &str) -> f64 {
    metric(text, "outrigger_in_flight_requests", &[])
}

const SEND_LIMITS: &str = "limits:\n  send_timeout: 1s\n  idle_timeout: 60s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_http2_client_is_cut_after_send_timeout() {
    let upstream = EndlessUpstream::start().await;
    let yaml = format!("upstream:\n  url: {}\n{SEND_LIMITS}", upstream.url());
    let sidecar = Sidecar::start(&yaml).await;
    let (send, conn) = h2_zero_window(sidecar.addr).await;
    let url = sidecar.url("/big");
    // The head arrives (not flow-controlled); not one body byte can.
    let head = within(async {
        let mut send = send.clone().ready().await.expect("ready");
        let req = http::Request::get(&url).body(()).expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        resp.await.expect("response head")
    })
    .await;
    assert_eq!(head.status(), 200);
    let stalled_at = Instant::now();
    metrics_until(&sidecar, |m| in_flight(m) == 1.0).await;

    // Meanwhile other clients are served.
    let (status, _, body) = get(&sidecar.url("/other")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));

    metrics_until(&sidecar, |m| in_flight(m) == 0.0).await;
    let released_after = stalled_at.elapsed();
    assert!(
        released_after >= Duration::from_millis(900),
        "{released_after:?}"
    );
    within(async {
        while upstream.released.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The stalled client's connection is gone.
    within(conn).await.expect("connection task");
    drop(head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_http1_client_is_cut_after_send_timeout() {
    let upstream = EndlessUpstream::start().await;
    let yaml = format!("upstream:\n  url: {}\n{SEND_LIMITS}", upstream.url());
    let sidecar = Sidecar::start(&yaml).await;
    let mut stalled = RawConn::connect(sidecar.addr).await;
    // Sent and never read: kernel buffers and hyper's fill, then nothing moves.
    stalled.send(&get_request("1.1", "/big", "")).await;
    within(async {
        while upstream.started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    metrics_until(&sidecar, |m| in_flight(m) == 1.0).await;

    let (status, _, body) = get(&sidecar.url("/other")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));

    metrics_until(&sidecar, |m| in_flight(m) == 0.0).await;
    within(async {
        while upstream.released.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(upstream.released.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let backend = Backend::start().await;
    backend.on_path(
        "/slow",
        Action::Delay(Duration::from_millis(1500), Box::new(Action::Status(200))),
    );
    let sidecar = Sidecar::in_front_of(&backend, "limits:\n  idle_timeout: 1s\n").await;

    // A request in flight longer than idle_timeout is not idle: it is answered.
    let mut conn = RawConn::connect(sidecar.addr).await;
    conn.send(&get_request("1.1", "/slow", "")).await;
    let (head, _) = conn.response().await.expect("slow answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // Then the connection idles and is closed.
    let idle_from = Instant::now();
    assert!(conn.closed().await, "the idle connection was closed");
    let idled = idle_from.elapsed();
    assert!(
        idled >= Duration::from_millis(900) && idled < Duration::from_secs(5),
        "{idled:?}"
    );

    // HTTP/2: the idle connection ends too (GOAWAY, then closed).
    let (send, task) = support::review_conn::h2_client(sidecar.addr).await;
    assert_eq!(
        support::review_conn::h2_get(&send, &sidecar.url("/")).await,
        200
    );
    within(task).await.expect("h2 connection ended");
}

/// 200 MiB at about 20 MiB/s: ten seconds of upload under a 4 s route timeout.
const BIG: u64 = 200 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_uploads_at_a_limited_rate_succeed_over_http1_and_h2() {
    let backend = Backend::start().await;
    let extra = "defaults:\n  timeout: 4s\n  retry:\n    per_try_timeout: 3s\n";
    let sidecar = Sidecar::in_front_of(&backend, extra).await;
    let limit = Duration::from_secs(60);
    let paced = || Paced::new(BIG, 1 << 20, Duration::from_millis(50), None);
    let started = Instant::now();
    let (h1, h2) = tokio::join!(
        post(sidecar.addr, false, "/upload", paced(), limit),
        post(sidecar.addr, true, "/upload", paced(), limit),
    );
    let took = started.elapsed();
    assert_eq!(h1.map(|s| s.as_u16()), Some(200));
    assert_eq!(h2.map(|s| s.as_u16()), Some(200));
    assert!(
        took > Duration::from_secs(5),
        "the uploads were paced: {took:?}"
    );
    let sizes: Vec<usize> = backend.received().iter().map(|r| r.body.len()).collect();
    assert_eq!(sizes, vec![BIG as usize; 2]);
    let m = sidecar.metrics().await;
    let timeouts = metric(
        &m,
        "outrigger_upstream_attempts_total",
        &[("result", "timeout")],
    );
    assert_eq!(timeouts, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_the_clients_408_after_the_route_timeout() {
    let backend = Backend::start().await;
    let extra = "defaults:\n  timeout: 1s\n  retry:\n    per_try_timeout: 500ms\n";
    let sidecar = Sidecar::in_front_of(&backend, extra).await;
    let limit = Duration::from_secs(15);
    for http2 in [false, true] {
        // 3 MiB over 1.5 s (longer than the timeout), then nothing.
        let body = Paced::new(BIG, 256 << 10, Duration::from_millis(125), Some(3 << 20));
        let started = Instant::now();
        let status = post(sidecar.addr, http2, "/upload", body, limit).await;
        let took = started.elapsed();
        assert_eq!(status.map(|s| s.as_u16()), Some(408), "http2: {http2}");
        // Stalled at about 1.5 s, cut one route timeout later.
        assert!(
            took >= Duration::from_millis(2300),
            "http2: {http2}: {took:?}"
        );
        assert!(took < Duration::from_secs(6), "http2: {http2}: {took:?}");
    }
    let m = sidecar.metrics().await;
    let timeouts = metric(
        &m,
        "outrigger_upstream_attempts_total",
        &[("result", "timeout")],
    );
    assert_eq!(timeouts, 0.0);
    metrics_until(&sidecar, |m| in_flight(m) == 0.0).await;
}

#[test]
fn send_and_idle_timeouts_load_with_defaults_and_reject_zero() {
    use outrigger::config::{self, Overrides};
    let path = support::temp_file("outrigger.yaml", "upstream:\n  url: http://127.0.0.1:1\n");
    let loaded = config::load(Some(&path), &Overrides::default()).expect("valid");
    assert_eq!(loaded.limits.send_timeout, Duration::from_secs(30));
    assert_eq!(loaded.limits.idle_timeout, Duration::from_secs(60));
    for key in ["send_timeout", "idle_timeout"] {
        let yaml = format!("upstream:\n  url: http://127.0.0.1:1\nlimits:\n  {key}: 0s\n");
        let path = support::temp_file("outrigger.yaml", &yaml);
        let err = config::load(Some(&path), &Overrides::default()).expect_err("zero refused");
        let text = err.to_string();
        assert!(text.contains(&format!("limits.{key}")), "{text}");
        assert!(text.contains("outrigger.yaml"), "{text}");
    }
}
