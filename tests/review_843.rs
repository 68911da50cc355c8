//! Review of commit 843e6b6 (request path performance): the request id settled by
//! `edge::request_id`, the hop-by-hop stripping by `match`, attempt 1's header in the head,
//! `set_forwarded`/`add_via` by entry, and the sliding window's new `advance`. Real sockets
//! on loopback; the window is driven with explicit instants.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use outrigger::resilience::window::Window;
use support::backend::Received;
use support::*;
use tokio::time::Instant;

/// The values of header `name` in a raw HTTP/1 response head (name case-insensitive).
fn response_headers(answer: &str, name: &str) -> Vec<String> {
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn is_new_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sends `extra` header lines on a GET and returns (answer, what the backend saw last).
async fn ask_with(sidecar: &Sidecar, backend: &Backend, extra: &str) -> (String, Received) {
    let before = backend.count();
    let request = format!("GET /id HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n");
    let answer = raw(sidecar.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backend.received();
    assert_eq!(seen.len(), before + 1);
    (answer, seen[before].clone())
}

#[tokio::test]
async fn request_ids_spec_does_not_keep_are_replaced_both_ways() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let long = "a".repeat(129);
    let bad = [
        "x-request-id: \r\n".to_owned(),
        format!("x-request-id: {long}\r\n"),
        "x-request-id: has space\r\n".to_owned(),
        "x-request-id: tab\there\r\n".to_owned(),
        // The first line decides: an insane first line is replaced, whatever follows.
        "x-request-id: has space\r\nx-request-id: sane-second\r\n".to_owned(),
    ];
    for extra in &bad {
        let (answer, seen) = ask_with(&sidecar, &backend, extra).await;
        let back = response_headers(&answer, "x-request-id");
        assert_eq!(back.len(), 1, "{extra:?}: {answer}");
        assert!(is_new_id(&back[0]), "{extra:?} echoed as {:?}", back[0]);
        assert_eq!(
            seen.headers_named("x-request-id"),
            [back[0].as_str()],
            "{extra:?}"
        );
    }
    // Kept: 128 visible characters; of two lines, the first (and only it goes on).
    let kept = "b".repeat(128);
    let (answer, seen) = ask_with(&sidecar, &backend, &format!("x-request-id: {kept}\r\n")).await;
    assert_eq!(response_headers(&answer, "x-request-id"), [kept.as_str()]);
    assert_eq!(seen.headers_named("x-request-id"), [kept.as_str()]);
    let two = "x-request-id: first\r\nx-request-id: second\r\n";
    let (answer, seen) = ask_with(&sidecar, &backend, two).await;
    assert_eq!(response_headers(&answer, "x-request-id"), ["first"]);
    assert_eq!(seen.headers_named("x-request-id"), ["first"]);
    // Each request without one gets its own.
    let (a, _) = ask_with(&sidecar, &backend, "").await;
    let (b, _) = ask_with(&sidecar, &backend, "").await;
    assert_ne!(
        response_headers(&a, "x-request-id"),
        response_headers(&b, "x-request-id")
    );
}

#[tokio::test]
async fn hop_by_hop_headers_spelled_any_way_are_not_forwarded() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let extra = "Connection: X-Foo\r\n\
                 connection: keep-alive, X-BAR ,x-outrigger-attempt\r\n\
                 x-foo: 1\r\n\
                 X-Bar: 2\r\n\
                 Keep-Alive: timeout=5\r\n\
                 Proxy-Connection: keep-alive\r\n\
                 TE: gzip, trailers\r\n\
                 Upgrade: websocket\r\n\
                 x-outrigger-attempt: 9\r\n\
                 x-outrigger-attempt: 8\r\n\
                 x-keep: yes\r\n";
    let (_, seen) = ask_with(&sidecar, &backend, extra).await;
    for gone in [
        "connection",
        "x-foo",
        "x-bar",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(seen.header(gone).is_none(), "{gone} forwarded: {seen:?}");
    }
    assert_eq!(seen.headers_named("te"), ["trailers"]);
    assert_eq!(seen.headers_named("x-outrigger-attempt"), ["1"]);
    assert_eq!(seen.header("x-keep"), Some("yes"));
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_response_and_its_own_ids_do_not_reach_the_client() {
    let backend = Backend::start().await;
    let headers = [
        ("Connection", "X-Secret"),
        ("x-secret", "s"),
        ("connection", "KEEP-ALIVE"),
        ("Keep-Alive", "timeout=1"),
        ("Proxy-Connection", "keep-alive"),
        ("x-request-id", "upstream-id"),
        ("x-outrigger-attempts", "7"),
    ];
    backend.set_default(Action::Respond {
        status: 200,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: b"ok".to_vec(),
    });
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let (answer, _) = ask_with(&sidecar, &backend, "x-request-id: mine\r\n").await;
    for gone in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(
            response_headers(&answer, gone).is_empty(),
            "{gone}: {answer}"
        );
    }
    assert_eq!(response_headers(&answer, "x-request-id"), ["mine"]);
    assert_eq!(response_headers(&answer, "x-outrigger-attempts"), ["1"]);
}

const FAST: &str = "defaults:\n  retry: { attempts: 3, backoff: { base: 5ms, max: 10ms } }\n";

fn attempts_seen(backend: &Backend) -> Vec<Vec<String>> {
    backend
        .received()
        .iter()
        .map(|r| {
            r.headers_named("x-outrigger-attempt")
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn each_retry_carries_its_own_attempt_number_and_the_request_id() {
    let backend = Backend::start().await;
    backend.script([
        Action::Status(503),
        Action::Status(503),
        Action::Status(200),
    ]);
    let sidecar = Sidecar::in_front_of(&backend, FAST).await;
    let req = Request::get(sidecar.url("/r"))
        .header("x-outrigger-attempt", "5")
        .header("x-outrigger-attempt", "6")
        .header("x-request-id", "retry-me")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "3");
    assert_eq!(headers["x-request-id"], "retry-me");
    assert_eq!(attempts_seen(&backend), [["1"], ["2"], ["3"]]);
    for r in backend.received() {
        assert_eq!(r.headers_named("x-request-id"), ["retry-me"]);
    }
    // The next request starts again at 1 (the head is per request).
    let (_, headers, _) = get(&sidecar.url("/r2")).await;
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(attempts_seen(&backend)[3], ["1"]);
}

#[tokio::test]
async fn a_retry_after_a_hedge_is_attempt_three() {
    let backend = Backend::start().await;
    backend.script([
        // Attempt 1: slow, so the hedge starts; both fail with a retryable status.
        Action::Delay(Duration::from_millis(300), Box::new(Action::Status(503))),
        Action::Status(503),
        Action::Status(200),
    ]);
    let yaml = format!("{FAST}  hedge: {{ delay: 40ms, max_ratio: 1.0 }}\n");
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    let (status, headers, _) = get(&sidecar.url("/h")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "3");
    let mut seen = attempts_seen(&backend);
    seen.sort();
    assert_eq!(seen, [["1"], ["2"], ["3"]]);
}

#[tokio::test]
async fn a_cached_answer_carries_each_clients_own_request_id() {
    let backend = Backend::start().await;
    // An upstream that echoes the id it was sent: the stored copy holds alice's.
    backend.set_default(Action::Respond {
        status: 200,
        headers: vec![("x-request-id".into(), "alice-id".into())],
        body: b"shared".to_vec(),
    });
    let sidecar = Sidecar::in_front_of(&backend, "defaults:\n  cache: { ttl: 5s }\n").await;
    let ask = |id: &'static str| {
        Request::get(sidecar.url("/c"))
            .header("x-request-id", id)
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let (_, alice, _) = send(ask("alice-id")).await;
    assert_eq!(alice["x-request-id"], "alice-id");
    let (_, bob, _) = send(ask("bob-id")).await;
    assert_eq!(bob["x-outrigger-cache"], "hit");
    assert_eq!(bob.get_all("x-request-id").iter().count(), 1);
    assert_eq!(bob["x-request-id"], "bob-id");
    let (_, carol, _) = get(&sidecar.url("/c")).await;
    assert!(is_new_id(carol["x-request-id"].to_str().unwrap()));
    assert_eq!(backend.count(), 1);
}

/// SPEC §3: an id that is not 1-128 visible characters is replaced, and the request travels
/// under the new one; `Proxy::handle` says routes match on what the upstream will receive.
/// Before 843e6b6 the insane id was gone (and the new id in place) when the route was
/// chosen; now the route is chosen on the client's insane value, which the upstream never sees.
#[tokio::test]
async fn a_replaced_request_id_does_not_pick_a_route() {
    let backend = Backend::start().await;
    let yaml = "routes:
  - name: by-id
    match: { headers: { x-request-id: has space } }
    fault: { abort: { percent: 100, status: 418 } }
";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let request =
        "GET /r HTTP/1.1\r\nhost: x\r\nx-request-id: has space\r\nconnection: close\r\n\r\n";
    let answer = raw(sidecar.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let id = response_headers(&answer, "x-request-id");
    assert!(is_new_id(&id[0]), "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "route `by-id` matched a request id that was replaced: {answer}"
    );
    assert_eq!(backend.count(), 1);
}

// The sliding window ------------------------------------------------------------------------

const SPAN: Duration = Duration::from_secs(10);
const B: Duration = Duration::from_secs(1);

#[test]
fn the_window_counts_an_event_for_nine_to_ten_buckets_at_every_boundary() {
    let t0 = Instant::now();
    let ns = Duration::from_nanos(1);
    for (later, counted) in [
        (Duration::ZERO, 1),
        (B - ns, 1),
        (B, 1),
        (B * 9, 1),
        (B * 10 - ns, 1),
        (B * 10, 0),
        (B * 10 + B / 2, 0),
        (B * 11, 0),
        (B * 25, 0),
    ] {
        let mut w = Window::new(SPAN, t0);
        w.add(t0, 1, 2);
        assert_eq!(w.sums(t0 + later), (counted, 2 * counted), "{later:?}");
        // And the window keeps counting after the jump.
        w.add(t0 + later, 10, 20);
        assert_eq!(
            w.sums(t0 + later),
            (counted + 10, 2 * counted + 20),
            "{later:?}"
        );
    }
}

/// For any sequence of gaps (bounded, deterministic pseudo-random), every event younger
/// than nine buckets is counted and none ten buckets or older.
#[test]
fn the_window_never_counts_old_events_nor_forgets_young_ones() {
    let t0 = Instant::now();
    let mut w = Window::new(SPAN, t0);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut now = t0;
    let mut events: Vec<Instant> = Vec::new();
    for step in 0..5_000 {
        // Mostly small gaps; some of whole buckets, of 10-12 buckets, of anything up to 12.
        let gap = match next() % 10 {
            0 => B * (next() % 13) as u32,
            1 => B * 10 + Duration::from_millis(next() % 2_000),
            2 => Duration::from_millis(next() % 12_000),
            _ => Duration::from_millis(next() % 700),
        };
        now += gap;
        if next() % 3 != 0 {
            w.add(now, 1, 0);
            events.push(now);
        }
        let (sum, _) = w.sums(now);
        let young = events.iter().filter(|&&t| now - t < B * 9).count() as u64;
        let within = events.iter().filter(|&&t| now - t < B * 10).count() as u64;
        assert!(
            young <= sum && sum <= within,
            "step {step}: sum {sum}, young {young}, within {within}"
        );
        events.retain(|&t| now - t < B * 10);
    }
}
