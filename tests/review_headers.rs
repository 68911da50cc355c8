//! Review defects in what the proxy forwards: cookie crumbs, trailers both ways, `Host`
//! against the request target, upgrade requests with bodies and `Upgrade: h2c`, and the
//! forwarding headers (`X-Forwarded-For` on a dual-stack listener, `Forwarded`, `Via`).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::review_headers::RawUpstream;
use support::*;

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
const RETRY_FAST: &str = "defaults:\n  retry: { attempts: 2, backoff: { base: 5ms, max: 10ms } }\n";

/// Raw request bytes to the proxy, read until it closes (every request says close).
async fn ask(sidecar: &Sidecar, request: &str) -> String {
    raw(sidecar.addr, request.as_bytes(), Duration::from_secs(10)).await
}

// Item 12 ----------------------------------------------------------------------------------

#[tokio::test]
async fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_line() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let req = Request::get(sidecar.url("/crumbs"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Full::default())
        .unwrap();
    let resp = within(h2_client().request(req)).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = &backend.received()[0];
    assert_eq!(seen.headers_named("cookie"), ["a=1; b=2; c=3"]);
}

// Item 14 ----------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_trailers_reach_an_http1_client_that_accepts_them() {
    let upstream = RawUpstream::start(vec![
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
         5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
    ])
    .await;
    let sidecar = Sidecar::start(&format!("upstream:\n  url: http://{}\n", upstream.addr)).await;
    let answer = ask(
        &sidecar,
        "GET /t HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\ntrailer: x-checksum\r\n"), "{answer}");
    assert!(
        answer.ends_with("5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn request_trailers_reach_the_upstream_streamed_and_buffered_on_every_attempt() {
    // POST streams once; PUT is kept for replay, answered 503 once and then retried.
    let upstream = RawUpstream::start(vec![OK, UNAVAILABLE, OK]).await;
    let yaml = format!("upstream:\n  url: http://{}\n{RETRY_FAST}", upstream.addr);
    let sidecar = Sidecar::start(&yaml).await;
    for method in ["POST", "PUT"] {
        let answer = ask(
            &sidecar,
            &format!(
                "{method} /up HTTP/1.1\r\nhost: x\r\ntrailer: x-checksum\r\n\
                 transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                 5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for request in &seen {
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("\r\ntrailer: x-checksum\r\n"), "{request}");
        assert!(lower.contains("hello"), "{request}");
        assert!(
            lower.ends_with("0\r\nx-checksum: abc123\r\n\r\n"),
            "trailers lost: {request}"
        );
    }
}

/// A client's trailers never carry what this hop sets in the head, nor hop-by-hop names:
/// an upstream reading trailers took `x-outrigger-attempt: 9` and `Connection` from the
/// client (an attack review, 2026-12-01). End-to-end trailers still pass.
#[tokio::test]
async fn request_trailers_lose_hop_by_hop_and_this_hop_s_own_names() {
    let upstream = RawUpstream::start(vec![OK, OK]).await;
    let yaml = format!("upstream:\n  url: http://{}\n", upstream.addr);
    let sidecar = Sidecar::start(&yaml).await;
    for method in ["POST", "PUT"] {
        let answer = ask(
            &sidecar,
            &format!(
                "{method} /up HTTP/1.1\r\nhost: x\r\n\
                 trailer: x-checksum, x-outrigger-attempt, x-forwarded-for, keep-alive\r\n\
                 transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                 5\r\nhello\r\n0\r\nx-outrigger-attempt: 9\r\nx-checksum: abc123\r\n\
                 x-forwarded-for: 6.6.6.6\r\nkeep-alive: 1\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.ends_with("0\r\nx-checksum: abc123\r\n\r\n"),
            "{request}"
        );
    }
}

// Item 15 ----------------------------------------------------------------------------------

#[tokio::test]
async fn the_request_targets_authority_beats_host() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let answer = ask(
        &sidecar,
        "GET http://other.example:9999/x HTTP/1.1\r\nhost: liar.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let req = Request::get(sidecar.url("/h2"))
        .header("host", "liar.example")
        .body(Full::default())
        .unwrap();
    let resp = within(h2_client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let seen = backend.received();
    assert_eq!(seen[0].target, "/x");
    assert_eq!(seen[0].header("host"), Some("other.example:9999"));
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some("other.example:9999")
    );
    let authority = sidecar.addr.to_string();
    assert_eq!(seen[1].header("host"), Some(authority.as_str()));
    assert_eq!(seen[1].header("x-forwarded-host"), Some(authority.as_str()));
}

#[tokio::test]
async fn repeated_or_malformed_host_is_answered_400() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let cases = [
        (
            "two hosts",
            "GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n",
        ),
        ("path in host", "GET / HTTP/1.1\r\nhost: a/b?c@d e\r\n"),
        (
            "userinfo in host",
            "GET / HTTP/1.1\r\nhost: user@a.example\r\n",
        ),
        (
            "upgrade with a bad host",
            "GET /ws HTTP/1.1\r\nhost: a/b\r\nconnection: upgrade\r\nupgrade: websocket\r\n",
        ),
    ];
    for (name, head) in cases {
        let answer = ask(&sidecar, &format!("{head}connection: close\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
    }
    assert_eq!(backend.count(), 0, "a refused request reached the upstream");
    let answer = ask(
        &sidecar,
        "GET / HTTP/1.1\r\nhost: [::1]:8080\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.received()[0].header("host"), Some("[::1]:8080"));
}

// Item 16 ----------------------------------------------------------------------------------

#[tokio::test]
async fn an_upgrade_request_with_a_body_forwards_the_body() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let req = Request::post(sidecar.url("/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello");
    let seen = &backend.received()[0];
    assert_eq!(seen.body, b"hello");
    assert_eq!(seen.header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn upgrade_h2c_is_no_upgrade_and_keeps_its_body() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503)]);
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, RETRY_FAST).await;
    // PUT may be replayed: the ordinary path retries it, an upgrade never would.
    let req = Request::put(sidecar.url("/h2c"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello");
    assert_eq!(headers["x-outrigger-attempts"], "2");
    for seen in backend.received() {
        assert_eq!(seen.body, b"hello");
        assert_eq!(seen.header("upgrade"), None);
        assert_eq!(seen.header("http2-settings"), None);
    }
}

#[tokio::test]
async fn curl_http2_post_over_cleartext_keeps_its_body() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is not installed: skipped");
        return;
    }
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let url = sidecar.url("/curl");
    // curl's own --max-time bounds it; `within` bounds the wait for it.
    let out = within(tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http2", "-X", "POST"])
            .args(["--data-binary", "hello", &url])
            .output()
    }))
    .await
    .expect("curl task")
    .expect("curl runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    let seen = &backend.received()[0];
    assert_eq!(seen.body, b"hello");
    assert_eq!(seen.header("upgrade"), None, "Upgrade: h2c was forwarded");
}

// Item 17 ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_dual_stack_listener_forwards_the_canonical_client_address() {
    let backend = Backend::start().await;
    // An IPv6 socket on the IPv4-mapped loopback: what `[::]` does for IPv4 clients,
    // without listening beyond loopback.
    let listener = tokio::net::TcpListener::bind("[::ffff:127.0.0.1]:0")
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let yaml = format!("upstream:\n  url: {}\n", backend.url());
    let _sidecar = Sidecar::start_on(listener, &yaml).await;
    let req = get_with(
        &format!("http://127.0.0.1:{port}/"),
        &[("forwarded", "for=192.0.2.1")],
    );
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = &backend.received()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen.header("forwarded"),
        Some(format!("for=192.0.2.1, for=127.0.0.1;proto=http;host=\"127.0.0.1:{port}\"").as_str())
    );
}

#[tokio::test]
async fn via_is_added_and_a_clients_forwarded_is_extended() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    get(&sidecar.url("/plain")).await;
    let req = get_with(
        &sidecar.url("/listed"),
        &[
            ("host", "shop.example"),
            ("via", "1.0 fred"),
            ("forwarded", "for=192.0.2.1;proto=https"),
        ],
    );
    send(req).await;
    let resp = within(h2_client().request(get_with(&sidecar.url("/h2"), &[])))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let seen = backend.received();
    assert_eq!(seen[0].header("via"), Some("1.1 outrigger"));
    assert_eq!(seen[0].header("forwarded"), None, "none is made up");
    assert_eq!(seen[1].headers_named("via"), ["1.0 fred, 1.1 outrigger"]);
    assert_eq!(
        seen[1].headers_named("forwarded"),
        ["for=192.0.2.1;proto=https, for=127.0.0.1;proto=http;host=\"shop.example\""]
    );
    assert_eq!(seen[2].header("via"), Some("2 outrigger"));
}

#[tokio::test]
async fn headers_named_in_connection_are_gone_before_they_are_extended_or_joined() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let reply = ask(
        &sidecar,
        "GET /hidden HTTP/1.1\r\nhost: shop.example\r\nforwarded: for=192.0.2.1\r\n\
         cookie: a=1\r\ncookie: b=2\r\nte: trailers\r\nconnection: forwarded, cookie, close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = &backend.received()[0];
    assert_eq!(seen.header("forwarded"), None, "no list made only by us");
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(
        seen.header("te"),
        Some("trailers"),
        "trailers still offered"
    );
    let reply = ask(
        &sidecar,
        "GET /kept HTTP/1.1\r\nhost: shop.example\r\nforwarded: for=192.0.2.1\r\n\
         cookie: a=1\r\ncookie: b=2\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = &backend.received()[1];
    assert_eq!(
        seen.headers_named("forwarded"),
        ["for=192.0.2.1, for=127.0.0.1;proto=http;host=\"shop.example\""]
    );
    assert_eq!(seen.headers_named("cookie"), ["a=1; b=2"]);
}

/// A `Connection` value holding a byte that is not visible ASCII (`é`, obs-text) still
/// names the header names beside it: read as a string, the whole value failed, and the
/// header it named went upstream (review of 2026-12-01).
#[tokio::test]
async fn a_header_named_beside_a_non_ascii_connection_token_is_still_removed() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let reply = ask(
        &sidecar,
        "GET /hidden HTTP/1.1\r\nhost: shop.example\r\nx-secret: 1\r\nx-kept: 2\r\n\
         connection: x-secret, \u{e9}, close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = &backend.received()[0];
    assert_eq!(seen.header("x-secret"), None);
    assert_eq!(seen.header("x-kept"), Some("2"));
    assert_eq!(seen.header("connection"), None);
}

/// Request targets in a form their method does not take, and an HTTP/1.1 request without
/// `Host`, are answered 400 and never forwarded (RFC 9112 §3.2; an attack review found
/// `GET *` forwarded as is, and `GET echo` forwarded as `GET /` with `Host: echo`).
#[tokio::test]
async fn target_forms_a_method_does_not_take_and_a_missing_host_are_refused() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    for request in [
        "GET * HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n",
        "GET echo HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n",
        "connect evil.example:443 HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nconnection: close\r\n\r\n",
    ] {
        let answer = ask(&sidecar, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    assert_eq!(backend.count(), 0, "none was forwarded");
    // The forms that are right still go through: OPTIONS *, an empty Host, HTTP/1.0.
    for request in [
        "OPTIONS * HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost:\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.0\r\n\r\n",
    ] {
        let answer = ask(&sidecar, request).await;
        assert!(answer.contains(" 200 "), "{request:?}: {answer}");
    }
    assert_eq!(backend.count(), 3);
}

/// `Connection` naming `Host` removes the client's line as hop-by-hop; with
/// `host_header: preserve` (the default) the upstream still gets the client's host, not
/// the upstream URL's and not none.
#[tokio::test]
async fn a_host_named_in_connection_is_still_the_client_s_host_upstream() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let answer = ask(
        &sidecar,
        "GET /h HTTP/1.1\r\nhost: shop.example\r\nconnection: host, close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &backend.received()[0];
    assert_eq!(seen.headers_named("host"), ["shop.example"]);
}

/// A request with no host of its own (HTTP/1.0 without `Host`), and every request with
/// `host_header: upstream`, reaches the upstream with exactly one `Host`: the upstream
/// URL's (`Head::from_client` sets it; the client no longer adds it).
#[tokio::test]
async fn without_a_client_host_the_upstream_gets_its_own_host_once() {
    let backend = Backend::start().await;
    let upstream_host = backend.addr.to_string();
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let answer = ask(&sidecar, "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert_eq!(
        backend.received()[0].headers_named("host"),
        [upstream_host.as_str()]
    );

    let sidecar = Sidecar::in_front_of(&backend, "  host_header: upstream\n").await;
    let answer = ask(
        &sidecar,
        "GET /new HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        backend.received()[1].headers_named("host"),
        [upstream_host.as_str()]
    );
}
