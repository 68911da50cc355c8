//! The retry engine: who is retried, when, how long, with what body, within what budget.

mod support;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::backend::Received;
use support::*;

/// Fast, deterministic backoff for tests.
const QUICK: &str = "defaults:\n  retry:\n    backoff: { base: 5ms, max: 20ms, jitter: none }\n";

fn attempt_numbers(backend: &Backend) -> Vec<String> {
    backend
        .received()
        .iter()
        .map(|r| r.header("x-outrigger-attempt").unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test]
async fn get_that_fails_twice_then_succeeds() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503), Action::Status(502)]);
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;

    let (status, headers, body) = get(&sidecar.url("/flaky")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(headers["x-outrigger-attempts"], "3");
    assert_eq!(attempt_numbers(&backend), ["1", "2", "3"]);

    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_retries_total", &[("reason", "status-503")]),
        1.0
    );
    assert_eq!(
        metric(&m, "outrigger_retries_total", &[("reason", "status-502")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_retried_requests_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_requests_total",
            &[("outcome", "upstream"), ("code", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn exhausted_retries_hand_over_the_last_upstream_answer() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;

    let (status, headers, body) = get(&sidecar.url("/down")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "status 503")
    );
    assert_eq!(headers["x-outrigger-attempts"], "3");
    assert_eq!(backend.count(), 3);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_retried_requests_total",
            &[("result", "failure")]
        ),
        1.0
    );
}

#[tokio::test]
async fn post_is_never_retried_on_an_upstream_error() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;

    let req = Request::post(sidecar.url("/pay"))
        .body(Full::new(Bytes::from_static(b"charge 10")))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(backend.count(), 1);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_retries_skipped_total",
            &[("reason", "method")]
        ),
        1.0
    );
}

#[tokio::test]
async fn post_is_never_retried_after_a_reset_or_timeout() {
    let backend = Backend::start().await;
    backend.script([
        Action::Reset,
        Action::Delay(Duration::from_secs(2), Box::new(Action::Status(200))),
    ]);
    let yaml =
        "defaults:\n  retry: { per_try_timeout: 200ms, backoff: { base: 5ms, max: 20ms } }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    for expected in [StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT] {
        let req = Request::post(sidecar.url("/pay"))
            .body(Full::new(Bytes::from_static(b"charge")))
            .unwrap();
        let (status, headers, _) = send(req).await;
        assert_eq!(status, expected);
        assert_eq!(headers["x-outrigger-attempts"], "1");
    }
    assert_eq!(
        backend.count(),
        2,
        "each POST reached the backend exactly once"
    );
}

#[tokio::test]
async fn post_is_retried_after_a_connect_failure_with_its_body() {
    let port = support::process::free_port();
    let yaml = format!(
        "upstream:\n  url: http://127.0.0.1:{port}\ndefaults:\n  retry:\n    backoff: {{ base: 700ms, max: 700ms, jitter: none }}\n"
    );
    let sidecar = Sidecar::start(&yaml).await;
    let req = Request::post(sidecar.url("/pay"))
        .body(Full::new(Bytes::from_static(b"charge 42")))
        .unwrap();
    let request = tokio::spawn(send(req));

    // Once the first attempt has failed to connect, bring the backend up.
    within(async {
        loop {
            let m = sidecar.metrics().await;
            if metric(
                &m,
                "outrigger_upstream_attempts_total",
                &[("result", "connect-failure")],
            ) >= 1.0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let backend = Backend::start_on(port).await;

    let (status, headers, _) = within(request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");
    let seen = backend.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"charge 42");
    assert_eq!(seen[0].header("x-outrigger-attempt"), Some("2"));
}

#[tokio::test]
async fn post_with_idempotency_key_is_retried_with_the_same_body() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503)]);
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let req = Request::post(sidecar.url("/pay"))
        .header("idempotency-key", "order-77")
        .body(Full::new(Bytes::from_static(b"charge 77")))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");
    let seen = backend.received();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.body == b"charge 77" && r.header("idempotency-key") == Some("order-77")));
}

/// Every attempt sends its own copy of the rewritten head. Upstreams must not be able to
/// tell attempts apart: every field, repeated names and their order included, except the
/// attempt's number.
#[tokio::test]
async fn every_attempt_sends_the_same_header_fields_in_the_same_order() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503), Action::Status(502)]);
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let req = get_with(
        &sidecar.url("/same"),
        &[
            ("accept", "text/html"),
            ("x-tenant", "blue"),
            ("accept", "application/json;q=0.9"),
            ("authorization", "Bearer abc"),
            ("x-empty", ""),
            // A tab inside a value, and bytes from 0x80 (obs-text, RFC 9110 §5.5).
            ("x-odd", "caf\u{e9}\tau lait"),
            ("x-tenant", "green"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ],
    );
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "3");
    let seen = backend.received();
    assert_eq!(seen.len(), 3);
    let fields = |r: &Received| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("x-outrigger-attempt"))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    let first = fields(&seen[0]);
    assert_eq!(
        seen[0].headers_named("x-tenant"),
        ["blue", "green"],
        "{first:?}"
    );
    assert_eq!(seen[0].headers_named("accept").len(), 2, "{first:?}");
    assert_eq!(seen[0].headers_named("x-odd"), ["caf\u{e9}\tau lait"]);
    for r in &seen[1..] {
        assert_eq!(fields(r), first);
    }
}

#[tokio::test]
async fn put_body_is_replayed_byte_for_byte() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503), Action::Reset]);
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let payload: Vec<u8> = (0..60_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let req = Request::put(sidecar.url("/doc"))
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "3");
    let seen = backend.received();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.body.len(), payload.len());
        assert!(
            r.body == payload,
            "attempt {:?} body differs",
            r.header("x-outrigger-attempt")
        );
    }
}

#[tokio::test]
async fn oversized_body_is_sent_once_intact_and_the_skip_is_counted() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = format!("{QUICK}limits:\n  request_body_buffer: 1KiB\n");
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    let payload = vec![7u8; 5000];
    let req = Request::put(sidecar.url("/big"))
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(backend.received()[0].body, payload);

    // A chunked body that grows past the limit while arriving: same rule.
    let chunk = "a".repeat(700);
    let raw_req = format!(
        "PUT /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(sidecar.addr, raw_req.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-outrigger-attempts: 1"), "{answer}");
    let seen = backend.received();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, chunk.repeat(3).as_bytes());

    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_retries_skipped_total",
            &[("reason", "body-too-large")]
        ),
        2.0
    );
}

#[tokio::test]
async fn small_chunked_body_is_buffered_and_replayed() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503)]);
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let raw_req = "PUT /small HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let answer = raw(sidecar.addr, raw_req.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backend.received();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.body == b"hello world"));
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_the_next_attempt() {
    let backend = Backend::start().await;
    backend.script([Action::Delay(
        Duration::from_secs(3),
        Box::new(Action::Status(200)),
    )]);
    let yaml =
        "defaults:\n  retry: { per_try_timeout: 200ms, backoff: { base: 5ms, max: 20ms } }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let started = Instant::now();
    let (status, headers, _) = get(&sidecar.url("/slow-once")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_retries_total", &[("reason", "timeout")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_upstream_attempts_total",
            &[("result", "timeout")]
        ),
        1.0
    );
}

/// The per-try timer is reused from one attempt to the next (`proxy::try_timer`): after
/// many quick answers have each moved a reused timer's deadline later, a slow one must
/// still time out at its own `per_try_timeout`.
#[tokio::test]
async fn per_try_timeout_fires_after_many_quick_answers_reused_its_timer() {
    let backend = Backend::start().await;
    let mut script: Vec<Action> = (0..20).map(|_| Action::Status(200)).collect();
    script.push(Action::Delay(
        Duration::from_secs(3),
        Box::new(Action::Status(200)),
    ));
    backend.script(script);
    let yaml =
        "defaults:\n  retry: { per_try_timeout: 300ms, backoff: { base: 5ms, max: 20ms } }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    for _ in 0..20 {
        let (status, headers, _) = get(&sidecar.url("/quick")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-outrigger-attempts"], "1");
    }
    let started = Instant::now();
    let (status, headers, _) = get(&sidecar.url("/slow-once")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_upstream_attempts_total",
            &[("result", "timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_overall_deadline_bounds_all_attempts() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_secs(5),
        Box::new(Action::Status(200)),
    ));
    let yaml = "defaults:\n  timeout: 500ms\n  retry: { attempts: 5, per_try_timeout: 300ms, backoff: { base: 5ms, max: 20ms } }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let started = Instant::now();
    let (status, headers, body) = get(&sidecar.url("/never")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains(r#""reason":"timeout""#));
    assert_eq!(
        headers["x-outrigger-attempts"], "2",
        "300ms + 200ms left of the 500ms deadline"
    );
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 503,
        headers: vec![("retry-after".into(), "1".into())],
        body: b"busy".to_vec(),
    }]);
    let yaml = "defaults:\n  retry:\n    backoff: { base: 5ms, max: 2s, jitter: none }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let started = Instant::now();
    let (status, _, _) = get(&sidecar.url("/ra")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.count(), 2);
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let backend = Backend::start().await;
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    backend.script([Action::Respond {
        status: 429,
        headers: vec![("retry-after".into(), when)],
        body: b"slow down".to_vec(),
    }]);
    let yaml =
        "defaults:\n  retry:\n    when: [429]\n    backoff: { base: 5ms, max: 3s, jitter: none }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let started = Instant::now();
    let (status, _, _) = get(&sidecar.url("/ra-date")).await;
    assert_eq!(status, StatusCode::OK);
    // HTTP-dates have whole seconds: the wait is between 1 and 2 seconds.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_ends_retries_at_once() {
    // QUICK caps backoff at 20ms; 120 s fits neither that nor the 10 s deadline.
    let backend = Backend::start().await;
    backend.set_default(Action::Respond {
        status: 503,
        headers: vec![("retry-after".into(), "120".into())],
        body: b"maintenance".to_vec(),
    });
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let started = Instant::now();
    let (status, headers, body) = get(&sidecar.url("/ra-long")).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "maintenance")
    );
    assert_eq!(headers["retry-after"], "120");
    assert_eq!(headers["x-outrigger-attempts"], "1");
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_retries_skipped_total",
            &[("reason", "deadline")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_body_that_breaks_midway_aborts_the_client_and_is_not_retried() {
    let backend = Backend::start().await;
    backend.script([Action::Truncated {
        promised: 1000,
        sent: 10,
    }]);
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let req = Request::get(sidecar.url("/broken"))
        .body(Full::default())
        .unwrap();
    let resp = within(client().request(req)).await.expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = within(resp.into_body().collect()).await;
    assert!(
        body.is_err(),
        "the client must see the break, not a short body"
    );
    assert_eq!(backend.count(), 1);
}

async fn outage_attempts(budget: &str, requests: usize) -> usize {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = format!(
        "defaults:\n  retry:\n    attempts: 3\n    backoff: {{ base: 1ms, max: 2ms, jitter: none }}\n    budget: {budget}\n  circuit_breaker: {{ enabled: false }}\n"
    );
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    for _ in 0..requests {
        assert_eq!(
            get(&sidecar.url("/outage")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    backend.count()
}

#[tokio::test]
async fn the_budget_caps_retries_during_a_full_outage() {
    // The static rule of SPEC §2 (adaptive is the default since §7.1).
    let with_budget =
        outage_attempts("{ ratio: 0.2, min_per_second: 0, adaptive: false }", 200).await;
    let without = outage_attempts("{ ratio: 1000, min_per_second: 0, adaptive: false }", 200).await;
    assert_eq!(
        without, 600,
        "no effective budget: every request tried 3 times"
    );
    assert!(
        with_budget <= 240,
        "{with_budget} attempts for 200 requests"
    );
    assert!(
        with_budget >= 200 + 38,
        "the budget still allows its 20%: {with_budget}"
    );
}

#[tokio::test]
async fn twenty_percent_random_failures_still_give_98_percent_success() {
    let backend = Backend::start().await;
    let mut rng = fastrand::Rng::with_seed(7);
    backend.script((0..2000).map(|_| {
        if rng.u8(0..100) < 20 {
            Action::Status(503)
        } else {
            Action::Status(200)
        }
    }));
    let sidecar = Sidecar::in_front_of(&backend, QUICK).await;
    let mut ok = 0;
    for i in 0..400 {
        if get(&sidecar.url(&format!("/item/{i}"))).await.0 == StatusCode::OK {
            ok += 1;
        }
    }
    assert!(ok >= 392, "{ok}/400 succeeded");
}

#[tokio::test]
async fn the_budget_holds_while_the_backend_flaps() {
    let backend = Backend::start().await;
    // Up for 40 answers, down for 40, over and over.
    backend.script((0..4000).map(|i| {
        if (i / 40) % 2 == 0 {
            Action::Status(200)
        } else {
            Action::Status(503)
        }
    }));
    let yaml = "defaults:\n  retry:\n    attempts: 3\n    backoff: { base: 1ms, max: 2ms, jitter: none }\n    budget: { ratio: 0.2, min_per_second: 0, adaptive: false }\n  circuit_breaker: { enabled: false }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    for i in 0..600 {
        get(&sidecar.url(&format!("/flap/{i}"))).await;
    }
    let m = sidecar.metrics().await;
    let requests = metric(&m, "outrigger_requests_total", &[]);
    let attempts = metric(&m, "outrigger_upstream_attempts_total", &[]);
    assert_eq!(requests, 600.0);
    assert!(
        attempts <= 1.2 * requests + 1.0,
        "{attempts} attempts for {requests} requests"
    );
    assert!(
        metric(
            &m,
            "outrigger_retries_skipped_total",
            &[("reason", "budget")]
        ) > 0.0
    );
}
