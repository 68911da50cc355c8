//! Parking idle HTTP/1 connections (`server::accept`): once a keep-alive connection has had
//! no request for `PARK_AFTER`, hyper's state for it is let go and the socket waits bare.
//! What a client sees must not change: the connection keeps serving, a request begun or
//! pipelined before parking is answered after it, and response bytes a slow reader has
//! not taken yet are never lost. (What parking saves is measured by `bench/compare.sh`'s
//! idle-connection row and asserted loosely in `tests/memory.rs`.)

mod support;

use std::time::{Duration, Instant};

use outrigger::server::accept::PARK_AFTER;
use support::review_conn::{get_request, RawConn};
use support::{Action, Backend, Sidecar};

/// Long enough for a connection to be parked.
fn past_parking() -> Duration {
    PARK_AFTER * 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_serving_across_parking() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    for i in 0..3 {
        conn.send(&get_request("1.1", &format!("/get-{i}"), ""))
            .await;
        let (head, _) = conn.response().await.expect("an answer");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        tokio::time::sleep(past_parking()).await;
        let body = format!("body-{i}");
        let post = format!(
            "POST /post-{i} HTTP/1.1\r\nHost: test\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.send(post.as_bytes()).await;
        let (head, echoed) = conn.response().await.expect("an answer after parking");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(echoed, body);
        tokio::time::sleep(past_parking()).await;
    }
    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/get-0", "/post-0", "/get-1", "/post-1", "/get-2", "/post-2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_begun_before_parking_is_answered_after_it() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    conn.send(&get_request("1.1", "/first", "")).await;
    assert!(conn
        .response()
        .await
        .expect("first")
        .0
        .starts_with("http/1.1 200"));

    // Half a head, then a pause long enough to park, then the rest.
    conn.send(b"GET /split HTTP/1.1\r\nHo").await;
    tokio::time::sleep(past_parking()).await;
    conn.send(b"st: test\r\n\r\n").await;
    let (head, _) = conn.response().await.expect("the split request's answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // A whole request and half of the next in one write (pipelined), then the rest.
    let mut both = get_request("1.1", "/piped-1", "");
    both.extend_from_slice(b"GET /piped-2 HTTP/1.1\r\nHost: te");
    conn.send(&both).await;
    assert!(conn
        .response()
        .await
        .expect("piped-1")
        .0
        .starts_with("http/1.1 200"));
    tokio::time::sleep(past_parking()).await;
    conn.send(b"st\r\n\r\n").await;
    let (head, _) = conn.response().await.expect("piped-2");
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/first", "/split", "/piped-1", "/piped-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bytes_a_slow_reader_has_not_taken_survive_parking() {
    // A client with a small receive buffer that reads nothing for a while: the proxy takes
    // the whole upstream body, the kernel holds what fits, and hyper holds the rest, with
    // no request in progress. Several sizes, so that one of them leaves bytes in hyper
    // whatever the kernel's buffers are on this machine.
    let backend = Backend::start().await;
    // hyper's write queue holds up to `max_buf_size`, which follows this limit.
    let sidecar =
        Sidecar::in_front_of(&backend, "limits:\n  max_request_header_bytes: 4MiB\n").await;
    for len in [1usize << 20, 2 << 20, 4 << 20, 8 << 20] {
        backend.set_default(Action::Respond {
            status: 200,
            headers: vec![],
            body: vec![b'x'; len],
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(sidecar.addr).await.unwrap();
        let mut conn = RawConn::from_stream(stream);
        conn.send(&get_request("1.1", "/big", "")).await;
        tokio::time::sleep(past_parking() * 4).await;
        let (head, body) = conn.response().await.expect("the whole answer");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body.len(), len, "answer of {len} bytes");
        // And the connection still serves.
        tokio::time::sleep(past_parking()).await;
        conn.send(&get_request("1.1", "/after", "")).await;
        assert!(conn
            .response()
            .await
            .expect("after")
            .0
            .starts_with("http/1.1 200"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_when_the_drain_begins() {
    let backend = Backend::start().await;
    // The listener stays open for the drain delay; a parked connection leaves at once.
    let sidecar = Sidecar::in_front_of(&backend, "shutdown:\n  drain_delay: 20s\n").await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    conn.send(&get_request("1.1", "/", "")).await;
    assert!(conn
        .response()
        .await
        .expect("answer")
        .0
        .starts_with("http/1.1 200"));
    tokio::time::sleep(past_parking()).await;
    let shutdown = http::Request::post(format!("http://{}/shutdown", sidecar.admin))
        .body(Default::default())
        .unwrap();
    let (status, _, _) = support::send(shutdown).await;
    assert!(status.is_success(), "{status}");
    let asked = Instant::now();
    assert!(conn.closed().await, "the parked connection was closed");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}
