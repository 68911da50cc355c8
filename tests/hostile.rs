//! Hostile peers on both sides: request smuggling attempts and broken clients, and
//! upstreams that misbehave. The proxy must answer each with the right status, never crash,
//! and keep serving everyone else.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

/// Sends raw bytes and returns the status line's code (0 when the connection just closed).
async fn status_of(sidecar: &Sidecar, bytes: &[u8]) -> u16 {
    let answer = raw(sidecar.addr, bytes, Duration::from_secs(2)).await;
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn smuggling_attempts_are_refused_or_normalised() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let cases: [(&str, &[u8]); 5] = [
        ("duplicate content-length", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 40\r\n\r\nabc"),
        ("negative content-length", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n"),
        ("invalid chunk size", b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\nhost : x\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let status = status_of(&sidecar, bytes).await;
        assert!(status == 400 || status == 0, "{name}: answered {status}");
    }
    assert_eq!(backend.count(), 0, "none of them reached the backend");

    // Content-Length beside Transfer-Encoding: chunked wins (RFC 9112 §6.3) and the length
    // is dropped, so the upstream reads exactly the body the proxy read; hyper then closes
    // the connection, so the bytes after the empty chunk are never read as a request.
    let both = b"POST /both HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    raw(sidecar.addr, both, Duration::from_secs(2)).await;
    let seen = backend.received();
    let post = seen
        .iter()
        .find(|r| r.target == "/both")
        .expect("the POST was forwarded");
    assert!(post.body.is_empty(), "{:?}", post.body);
    assert!(
        post.header("content-length").is_none_or(|v| v == "0"),
        "{:?}",
        post.headers
    );
    assert_eq!(
        seen.iter().filter(|r| r.target == "/next").count(),
        0,
        "not read after an ambiguous message"
    );
    assert_eq!(
        get(&sidecar.url("/after")).await.0,
        StatusCode::OK,
        "still serving"
    );
}

#[tokio::test]
async fn non_utf8_and_bare_lf_requests_do_not_hurt_others() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let status = status_of(&sidecar, b"GET /\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        status == 400 || status == 0,
        "non-UTF-8 target answered {status}"
    );
    let status = status_of(
        &sidecar,
        b"GET / HTTP/1.1\r\nhost: x\r\nx-v: \xff\xfe\r\n\r\n",
    )
    .await;
    assert_eq!(
        status, 200,
        "opaque header bytes (obs-text) are allowed and forwarded"
    );
    let _ = status_of(&sidecar, b"GET / HTTP/1.1\nhost: x\n\n").await;
    assert_eq!(get(&sidecar.url("/after")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_leaves_nothing_behind() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    for _ in 0..20 {
        raw(
            sidecar.addr,
            b"PUT /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\npartial",
            Duration::from_millis(1),
        )
        .await;
    }
    eventually(|| sidecar.app.metrics.in_flight.get() == 0).await;
    assert_eq!(get(&sidecar.url("/after")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn hostile_upstreams_never_leave_a_client_hanging() {
    let backend = Backend::start().await;
    let endless = format!(
        "HTTP/1.1 200 OK\r\n{}",
        "x-junk: 0123456789\r\n".repeat(20_000)
    );
    backend.on_path("/garbage", Action::Garbage);
    backend.on_path(
        "/short",
        Action::Truncated {
            promised: 100_000,
            sent: 10,
        },
    );
    backend.on_path("/reset", Action::Reset);
    backend.on_path("/hang", Action::Hang);
    let yaml = "defaults:\n  timeout: 1s\n  retry: { attempts: 1, per_try_timeout: 800ms }\n  circuit_breaker: { enabled: false }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    // An upstream that sends endless headers: hyper's client limit turns it into bad-response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless_addr = listener.local_addr().unwrap();
    let flood = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(endless.as_bytes()).await;
        }
    });
    for (path, expected) in [("/garbage", 502), ("/reset", 502), ("/hang", 504)] {
        let started = Instant::now();
        let (status, _, _) = get(&sidecar.url(path)).await;
        assert_eq!(status.as_u16(), expected, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    // A body that stops halfway: headers went out, so the client sees the break.
    let req = http::Request::get(sidecar.url("/short"))
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert!(within(http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .is_err());

    let flooded = Sidecar::start(&format!("upstream:\n  url: http://{endless_addr}\n{yaml}")).await;
    let (status, _, body) = get(&flooded.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    flood.abort();
    assert_eq!(
        get(&sidecar.url("/fine")).await.0,
        StatusCode::OK,
        "still serving"
    );
}

/// An HTTP/2 connection to the proxy, driven by hand with the `h2` crate.
async fn h2_connection(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

#[tokio::test]
async fn http2_abuse_hurts_only_the_abuser() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(200),
        Box::new(Action::Status(200)),
    ));
    let sidecar =
        Sidecar::in_front_of(&backend, "limits:\n  max_request_header_bytes: 16KiB\n").await;

    // Rapid reset: open streams and cancel them at once, many times.
    let mut send = h2_connection(sidecar.addr).await;
    for _ in 0..500 {
        let Ok(ready) = send.clone().ready().await else {
            break;
        };
        send = ready;
        let req = http::Request::get(format!("http://{}/reset", sidecar.addr))
            .body(())
            .unwrap();
        match send.send_request(req, true) {
            Ok((resp, _)) => drop(resp),
            Err(_) => break,
        }
    }
    // Stream flood: more concurrent streams than the listener allows.
    let mut flood = h2_connection(sidecar.addr).await;
    let mut pending = Vec::new();
    for _ in 0..400 {
        let Ok(ready) = flood.clone().ready().await else {
            break;
        };
        flood = ready;
        let req = http::Request::get(format!("http://{}/flood", sidecar.addr))
            .body(())
            .unwrap();
        match flood.send_request(req, true) {
            Ok((resp, _)) => pending.push(resp),
            Err(_) => break,
        }
        if pending.len() >= 300 {
            break;
        }
    }
    // Oversized header block on its own stream.
    let mut big = h2_connection(sidecar.addr).await;
    let req = http::Request::get(format!("http://{}/big", sidecar.addr))
        .header("x-big", "a".repeat(20_000))
        .body(())
        .unwrap();
    if let Ok(ready) = big.clone().ready().await {
        big = ready;
        if let Ok((resp, _)) = big.send_request(req, true) {
            let answer = within(resp).await;
            assert!(
                answer
                    .as_ref()
                    .map_or(true, |r| r.status() != StatusCode::OK),
                "{answer:?}"
            );
        }
    }
    // Everyone else is still served, promptly.
    let started = Instant::now();
    assert_eq!(get(&sidecar.url("/innocent")).await.0, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        backend.received().iter().all(|r| r.target != "/big"),
        "the oversized block was not forwarded"
    );
    drop(pending);
}
