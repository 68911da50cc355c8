//! Fairness defects found by review: what one client does (upload slowly, stream a body,
//! go away) must not be charged to the upstream or make other clients wait.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{get, metric, within, Action, Backend, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a POST head announcing `length` bytes, then `chunks` with `gap` between them, and
/// returns the whole answer (the request asks for the connection to close).
async fn post_slowly(addr: SocketAddr, length: usize, chunks: &[&[u8]], gap: Duration) -> String {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for chunk in chunks {
        tokio::time::sleep(gap).await;
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = within(stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET of `url` running on its own task.
fn spawn_get(url: &str) -> tokio::task::JoinHandle<(http::StatusCode, http::HeaderMap, String)> {
    let url = url.to_owned();
    tokio::spawn(async move { get(&url).await })
}

#[tokio::test]
async fn stalled_uploads_are_the_clients_failure_and_never_open_the_breaker() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let yaml = "defaults:\n  timeout: 1500ms\n  retry: { per_try_timeout: 300ms }\n  \
                circuit_breaker: { min_requests: 4, failure_ratio: 0.5 }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;

    // Eight clients announce 10 bytes, send 5, and stall.
    let stalled: Vec<_> = (0..8)
        .map(|_| {
            let addr = sidecar.addr;
            tokio::spawn(async move {
                post_slowly(addr, 10, &[b"hello"], Duration::from_millis(10)).await
            })
        })
        .collect();
    for client in stalled {
        let answer = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"reason\":\"client-body\""), "{answer}");
    }

    let metrics = sidecar.metrics().await;
    let timeouts = metric(
        &metrics,
        "outrigger_upstream_attempts_total",
        &[("result", "timeout")],
    );
    assert_eq!(
        timeouts, 0.0,
        "a stalled upload counted as an upstream timeout"
    );
    let (status, _, body) = get(&sidecar.url("/healthy")).await;
    assert_eq!(
        status, 200,
        "the breaker opened on a healthy upstream: {body}"
    );
}

#[tokio::test]
async fn an_upload_longer_than_per_try_timeout_reaches_the_upstream_whole() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let yaml = "defaults:\n  timeout: 5s\n  retry: { per_try_timeout: 300ms }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;

    // Ten bytes, one every 100 ms: the upload alone outlasts the per-try timeout threefold.
    let bytes: Vec<&[u8]> = b"0123456789".chunks(1).collect();
    let answer = post_slowly(sidecar.addr, 10, &bytes, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("0123456789"), "{answer}");
    assert_eq!(backend.received()[0].body, b"0123456789");
}

/// A client that trickles a streamed upload (a byte every 300 ms, never a whole `timeout`
/// apart) is cut with 408 once its own time passes the route's timeout, for sending under
/// the least rate: it held its in-flight slot and an upstream connection for as long as it
/// trickled (an attack review, 2026-12-01: 120 bytes/s held all 1,024 slots).
#[tokio::test]
async fn a_trickled_upload_is_cut_once_its_time_passes_the_route_timeout() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let yaml = "defaults:\n  timeout: 1s\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;

    // 1 MB announced (streamed: over the body buffer), 40 bytes sent over 12 s.
    let mut stream = within(TcpStream::connect(sidecar.addr))
        .await
        .expect("connect");
    let head = "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut reading, mut writing) = stream.into_split();
    let started = std::time::Instant::now();
    let trickling = tokio::spawn(async move {
        for _ in 0..40 {
            if writing.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = vec![0; 1024];
    let n = within(reading.read(&mut answer)).await.expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"reason\":\"client-body\""), "{answer}");
    // Cut while it still trickled, not after its last byte and a whole timeout; and about
    // when its time passed the 1 s timeout, not at the upstream side's next look (the
    // per-try timeout, 3 s).
    let took = started.elapsed();
    assert!(!trickling.is_finished(), "answered only after {took:?}");
    assert!(took < Duration::from_millis(2500), "cut after {took:?}");
    trickling.abort();
}

#[tokio::test]
async fn followers_are_released_from_a_leaders_slow_body() {
    let backend = Backend::start().await;
    // The leader's answer streams for 4 s, longer than the route's 3 s timeout.
    backend.script([Action::Slow {
        chunks: 8,
        interval: Duration::from_millis(500),
    }]);
    backend.set_default(Action::Status(200));
    let yaml = "defaults:\n  timeout: 3s\n  cache: { ttl: 60s }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let url = sidecar.url("/feed");

    let leader = spawn_get(&url);
    support::eventually(|| backend.count() == 1).await;
    let followers: Vec<_> = (0..3).map(|_| spawn_get(&url)).collect();
    for follower in followers {
        let (status, headers, body) = follower.await.unwrap();
        assert_eq!(status, 200, "a follower waited out its deadline: {body}");
        assert_eq!(body, "ok", "fetched for itself");
        assert_eq!(headers["x-outrigger-attempts"], "1");
    }
    assert_eq!(backend.count(), 4);
    leader.abort();
}

/// A GET that trickles a body never leads a flight: the upload is its client's pace, and
/// as leader it held every other client of the URL until their deadlines, then 504 (an
/// attack review of the release binary, 2026-12-01).
#[tokio::test]
async fn a_get_trickling_its_body_does_not_hold_the_other_clients_of_its_url() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(200));
    let sidecar = Sidecar::in_front_of(
        &backend,
        "defaults:\n  timeout: 3s\n  cache: { ttl: 60s }\n",
    )
    .await;
    let url = sidecar.url("/hot");

    // The same host as the others' client sends: one key. 100 bytes of 1 MB (streamed,
    // being over the body buffer) every 300 ms: above the least upload rate, so its upload
    // is never cut while the others wait.
    let mut trickler = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let head = format!(
        "GET /hot HTTP/1.1\r\nhost: {}\r\ncontent-length: 1000000\r\n\r\n",
        sidecar.addr
    );
    trickler.write_all(head.as_bytes()).await.unwrap();
    let trickling = tokio::spawn(async move {
        for _ in 0..20 {
            if trickler.write_all(&[b'x'; 100]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Held behind it, they got 504 at their 3 s deadline.
    let others: Vec<_> = (0..3).map(|_| spawn_get(&url)).collect();
    for other in others {
        let (status, _, body) = other.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    }
    trickling.abort();
}

#[tokio::test]
async fn a_cancelled_leader_hands_the_flight_to_one_follower() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(400),
        Box::new(Action::Status(200)),
    ));
    let sidecar = Sidecar::in_front_of(&backend, "defaults:\n  cache: { ttl: 60s }\n").await;
    let url = sidecar.url("/item");

    let mut leader = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    // The same host as the followers' client sends: one key, one flight.
    let request = format!("GET /item HTTP/1.1\r\nhost: {}\r\n\r\n", sidecar.addr);
    leader.write_all(request.as_bytes()).await.unwrap();
    support::eventually(|| backend.count() == 1).await;
    let followers: Vec<_> = (0..5).map(|_| spawn_get(&url)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(leader);
    for follower in followers {
        let (status, _, body) = follower.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    }
    assert_eq!(
        backend.count(),
        2,
        "the followers went upstream at once instead of one taking over"
    );
}
