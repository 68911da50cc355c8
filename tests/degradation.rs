//! Graceful degradation: fallbacks, stale copies (and who may never see them), the circuit
//! breaker, the active health check and shedding with a fallback.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const FALLBACK: &str = "    fallback:\n      status: 200\n      headers: { content-type: application/json }\n      body: '{\"items\": []}'\n";

fn dead_upstream() -> String {
    format!("http://127.0.0.1:{}", support::process::free_port())
}

#[tokio::test]
async fn fallback_on_a_stopped_backend() {
    let yaml = format!(
        "upstream:\n  url: {}\nroutes:\n  - name: items\n    match: {{ path_prefix: /items }}\n    retry: {{ attempts: 1 }}\n{FALLBACK}",
        dead_upstream()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let (status, headers, body) = get(&sidecar.url("/items/1")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"items": []}"#)
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-outrigger-fallback"], "connect-failure");
    let (status, headers, _) = get(&sidecar.url("/other")).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "routes without a fallback keep the proxy error"
    );
    assert!(headers.get("x-outrigger-fallback").is_none());
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_fallbacks_total",
            &[("route", "items"), ("reason", "connect-failure")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "outrigger_requests_total",
            &[("route", "items"), ("outcome", "fallback")]
        ),
        1.0
    );
}

#[tokio::test]
async fn fallback_on_timeout_and_on_503_after_retries() {
    let backend = Backend::start().await;
    backend.on_path(
        "/slow",
        Action::Delay(Duration::from_secs(3), Box::new(Action::Status(200))),
    );
    backend.set_default(Action::Status(503));
    let yaml = format!(
        "defaults:\n  retry: {{ per_try_timeout: 150ms, backoff: {{ base: 5ms, max: 10ms }} }}\n{}",
        FALLBACK.replace("    ", "  ")
    );
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    let (status, headers, _) = get(&sidecar.url("/slow")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-outrigger-fallback"], "timeout");
    let (status, headers, body) = get(&sidecar.url("/down")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"items": []}"#)
    );
    assert_eq!(headers["x-outrigger-fallback"], "status-503");
    assert_eq!(headers["x-outrigger-attempts"], "3");
    assert_eq!(backend.count(), 3, "retried first, then the fallback");
}

#[tokio::test]
async fn fallback_when_list_is_respected_and_body_file_is_served() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(500));
    let dir = temp_file("fallback.html", "<p>back soon</p>");
    let yaml = format!(
        "upstream:\n  url: {}\nroutes:\n  - name: page\n    match: {{ path: /page }}\n    fallback: {{ status: 503, body_file: {}, when: [500] }}\n  - name: other\n    fallback: {{ body: x, when: [502] }}\n",
        backend.url(),
        dir.display()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let (status, headers, body) = get(&sidecar.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "<p>back soon</p>")
    );
    assert_eq!(headers["x-outrigger-fallback"], "status-500");
    let (status, headers, body) = get(&sidecar.url("/x")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "status 500")
    );
    assert!(
        headers.get("x-outrigger-fallback").is_none(),
        "500 is not in that route's list"
    );
}

const STALE: &str = "defaults:\n  retry: { attempts: 1 }\n  stale_if_error: { max_age: 5m }\n";

#[tokio::test]
async fn stale_copy_is_served_when_the_backend_fails_and_preferred_to_a_fallback() {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 200,
        headers: vec![("etag".into(), "v1".into())],
        body: b"catalog v1".to_vec(),
    }]);
    let yaml = format!("{STALE}  fallback: {{ body: canned }}\n");
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    let (status, _, body) = get(&sidecar.url("/catalog?page=1")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "catalog v1"));

    backend.set_default(Action::Reset);
    let (status, headers, body) = get(&sidecar.url("/catalog?page=1")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "catalog v1"));
    assert_eq!(headers["x-outrigger-stale"], "0");
    assert_eq!(headers["age"], "0");
    assert_eq!(headers["etag"], "v1");
    assert!(headers.get("x-outrigger-fallback").is_none());

    let (_, headers, body) = get(&sidecar.url("/catalog?page=2")).await;
    assert_eq!(body, "canned", "another query has no stale copy: fallback");
    assert_eq!(headers["x-outrigger-fallback"], "reset");

    let head = Request::head(sidecar.url("/catalog?page=1"))
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(head).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(headers["x-outrigger-stale"], "0");

    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_stale_responses_total",
            &[("route", "default")]
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "outrigger_requests_total", &[("outcome", "stale")]),
        2.0
    );
}

#[tokio::test]
async fn stale_copy_is_not_served_past_max_age() {
    let backend = Backend::start().await;
    backend.script([Action::Status(200)]);
    let sidecar = Sidecar::in_front_of(
        &backend,
        "defaults:\n  retry: { attempts: 1 }\n  stale_if_error: { max_age: 200ms }\n",
    )
    .await;
    assert_eq!(get(&sidecar.url("/p")).await.0, StatusCode::OK);
    backend.set_default(Action::Status(503));
    assert_eq!(get(&sidecar.url("/p")).await.1["x-outrigger-stale"], "0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, headers, _) = get(&sidecar.url("/p")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get("x-outrigger-stale").is_none());
}

/// Primes the store as user A, then fails the backend and asks as everyone else.
async fn leak_attempt(
    key_headers: &str,
    a: &[(&str, &str)],
    others: &[&[(&str, &str)]],
    response_headers: Vec<(String, String)>,
) -> Vec<String> {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 200,
        headers: response_headers,
        body: b"SECRET OF USER A".to_vec(),
    }]);
    let yaml = format!("defaults:\n  retry: {{ attempts: 1 }}\n  stale_if_error: {{ max_age: 5m, key_headers: {key_headers} }}\n");
    let sidecar = Sidecar::in_front_of(&backend, &yaml).await;
    let (_, _, body) = send(get_with(&sidecar.url("/me"), a)).await;
    assert_eq!(body, "SECRET OF USER A");
    backend.set_default(Action::Status(503));
    let mut bodies = Vec::new();
    for who in others {
        bodies.push(send(get_with(&sidecar.url("/me"), who)).await.2);
    }
    bodies
}

#[tokio::test]
async fn user_b_never_receives_user_a_stored_response() {
    let a_auth: &[(&str, &str)] = &[("authorization", "Bearer user-a")];
    let b_auth: &[(&str, &str)] = &[("authorization", "Bearer user-b")];
    let a_cookie: &[(&str, &str)] = &[("cookie", "session=a")];
    let b_cookie: &[(&str, &str)] = &[("cookie", "session=b")];
    let nobody: &[(&str, &str)] = &[];
    let leaked = |bodies: Vec<String>| bodies.iter().any(|b| b.contains("SECRET"));

    // Authorization / Cookie not in key_headers: never stored, so nobody gets it.
    assert!(!leaked(
        leak_attempt("[]", a_auth, &[nobody, b_auth, a_auth, b_cookie], vec![]).await
    ));
    assert!(!leaked(
        leak_attempt(
            "[]",
            a_cookie,
            &[nobody, b_cookie, a_cookie, a_auth],
            vec![]
        )
        .await
    ));
    // Keyed on Authorization: only A gets A's copy back.
    let bodies = leak_attempt(
        "[authorization]",
        a_auth,
        &[nobody, b_auth, b_cookie, a_auth],
        vec![],
    )
    .await;
    assert!(!leaked(bodies[..3].to_vec()), "{bodies:?}");
    assert!(bodies[3].contains("SECRET"), "A gets its own stale copy");
    // Keyed on Authorization but A also sends a Cookie that is not keyed: not stored.
    let a_both: &[(&str, &str)] = &[("authorization", "Bearer user-a"), ("cookie", "session=a")];
    assert!(!leaked(
        leak_attempt("[authorization]", a_both, &[a_auth, nobody], vec![]).await
    ));
    // Anonymous request, but the response is marked private, no-store, or sets a cookie.
    for (name, value) in [
        ("cache-control", "private"),
        ("cache-control", "no-store"),
        ("set-cookie", "session=a"),
    ] {
        let bodies = leak_attempt(
            "[]",
            nobody,
            &[nobody, b_auth],
            vec![(name.into(), value.into())],
        )
        .await;
        assert!(!leaked(bodies), "{name}: {value}");
    }
    // Vary on a header the route does not key on: the copy only matches the same value.
    let a_user: &[(&str, &str)] = &[("x-user", "a")];
    let b_user: &[(&str, &str)] = &[("x-user", "b")];
    let bodies = leak_attempt(
        "[]",
        a_user,
        &[b_user, nobody, a_user],
        vec![("vary".into(), "x-user".into())],
    )
    .await;
    assert!(!leaked(bodies[..2].to_vec()), "{bodies:?}");
    assert!(bodies[2].contains("SECRET"));
}

#[tokio::test]
async fn stale_store_evicts_least_recently_used() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(
        &backend,
        "defaults:\n  retry: { attempts: 1 }\n  stale_if_error: { max_entries: 2 }\n",
    )
    .await;
    for p in ["/1", "/2", "/3"] {
        assert_eq!(get(&sidecar.url(p)).await.0, StatusCode::OK);
    }
    backend.set_default(Action::Status(503));
    assert_eq!(
        get(&sidecar.url("/1")).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "evicted"
    );
    assert_eq!(get(&sidecar.url("/2")).await.1["x-outrigger-stale"], "0");
    assert_eq!(get(&sidecar.url("/3")).await.1["x-outrigger-stale"], "0");
}

#[tokio::test]
async fn large_or_broken_bodies_are_not_stored() {
    let backend = Backend::start().await;
    backend.script([
        Action::Respond {
            status: 200,
            headers: vec![],
            body: vec![b'x'; 1_100_000],
        },
        Action::Slow {
            chunks: 3,
            interval: Duration::from_millis(5),
        },
    ]);
    let sidecar = Sidecar::in_front_of(&backend, STALE).await;
    assert_eq!(get(&sidecar.url("/big")).await.2.len(), 1_100_000);
    assert_eq!(
        get(&sidecar.url("/chunked")).await.2,
        "chunk 0\nchunk 1\nchunk 2\n"
    );
    backend.set_default(Action::Status(503));
    assert_eq!(
        get(&sidecar.url("/big")).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "over 1 MiB"
    );
    let (_, headers, body) = get(&sidecar.url("/chunked")).await;
    assert_eq!(
        headers["x-outrigger-stale"], "0",
        "a chunked body that completed is kept"
    );
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
}

const BREAKER: &str = "defaults:\n  retry: { attempts: 1 }\n  circuit_breaker: { min_requests: 5, failure_ratio: 0.5, open_duration: 400ms }\n";

#[tokio::test]
async fn breaker_opens_answers_fast_then_probes_and_closes() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::in_front_of(&backend, BREAKER).await;
    for _ in 0..5 {
        assert_eq!(
            get(&sidecar.url("/x")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(backend.count(), 5);

    // Open: the backend sees nothing more, clients get a fast 503 circuit-open.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, headers, body) = get(&sidecar.url("/x")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""reason":"circuit-open""#), "{body}");
        assert_eq!(headers["x-outrigger-attempts"], "0");
    }
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(backend.count(), 5, "request count stopped growing");
    let (_, _, health) = get(&format!("http://{}/health", sidecar.admin)).await;
    assert!(
        health.contains(r#""status":"degraded""#) && health.contains(r#""default":"open""#),
        "{health}"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_circuit_state", &[("route", "default")]),
        2.0
    );

    // After open_duration one probe goes through; it succeeds, the circuit closes.
    backend.set_default(Action::Status(200));
    tokio::time::sleep(Duration::from_millis(450)).await;
    // A scrape alone sees open_duration run out: an idle route does not read "open" forever.
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_circuit_state", &[("route", "default")]),
        1.0
    );
    assert_eq!(get(&sidecar.url("/x")).await.0, StatusCode::OK);
    assert_eq!(get(&sidecar.url("/x")).await.0, StatusCode::OK);
    assert_eq!(backend.count(), 7);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_circuit_state", &[("route", "default")]),
        0.0
    );
    for to in ["open", "half-open", "closed"] {
        assert_eq!(
            metric(
                &m,
                "outrigger_circuit_transitions_total",
                &[("route", "default"), ("to", to)]
            ),
            1.0,
            "{to}"
        );
    }
}

#[tokio::test]
async fn open_breaker_skips_retries_and_serves_the_fallback() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = "defaults:\n  retry: { backoff: { base: 5ms, max: 10ms } }\n  circuit_breaker: { min_requests: 2, failure_ratio: 0.5, open_duration: 10s }\n  fallback: { body: later }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (_, headers, _) = get(&sidecar.url("/a")).await;
    assert_eq!(
        headers["x-outrigger-attempts"], "2",
        "opened after the second attempt"
    );
    assert_eq!(headers["x-outrigger-fallback"], "status-503");
    let (_, headers, body) = get(&sidecar.url("/a")).await;
    assert_eq!(
        (
            body.as_str(),
            headers["x-outrigger-fallback"].to_str().unwrap()
        ),
        ("later", "circuit-open")
    );
    assert_eq!(backend.count(), 2);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_retries_skipped_total",
            &[("reason", "circuit-open")]
        ),
        1.0
    );
}

#[tokio::test]
async fn failed_probe_reopens_the_circuit() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::in_front_of(&backend, BREAKER).await;
    for _ in 0..5 {
        get(&sidecar.url("/x")).await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        get(&sidecar.url("/x")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(backend.count(), 6, "one probe");
    let (_, _, body) = get(&sidecar.url("/x")).await;
    assert!(body.contains("circuit-open"), "{body}");
    assert_eq!(backend.count(), 6);
}

#[tokio::test]
async fn health_check_turns_unhealthy_fails_fast_and_recovers() {
    let backend = Backend::start().await;
    backend.on_path("/healthz", Action::Status(200));
    let yaml = "  health_check: { path: /healthz, interval: 50ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2, affects_readiness: true }\ndefaults:\n  fallback: { body: offline }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let health_url = format!("http://{}/health", sidecar.admin);
    let ready_url = format!("http://{}/ready", sidecar.admin);
    let wait_for = |needle: &'static str| {
        let url = health_url.clone();
        async move {
            within(async {
                loop {
                    let (_, _, body) = get(&url).await;
                    if body.contains(needle) {
                        return body;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
        }
    };
    wait_for(r#""upstream":"reachable""#).await;
    assert_eq!(
        metric(&sidecar.metrics().await, "outrigger_upstream_up", &[]),
        1.0
    );

    backend.on_path("/healthz", Action::Status(503));
    let body = wait_for(r#""status":"unhealthy""#).await;
    assert!(
        body.contains(r#""error":"health check answered 503""#),
        "{body}"
    );
    assert_eq!(get(&health_url).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&ready_url).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        metric(&sidecar.metrics().await, "outrigger_upstream_up", &[]),
        0.0
    );
    let (status, headers, body) = get(&sidecar.url("/work")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "offline"));
    assert_eq!(headers["x-outrigger-fallback"], "circuit-open");
    assert_eq!(backend.count(), 0, "no request waited on the down upstream");

    backend.on_path("/healthz", Action::Status(200));
    wait_for(r#""upstream":"reachable""#).await;
    assert_eq!(get(&ready_url).await.0, StatusCode::OK);
    assert_eq!(get(&sidecar.url("/work")).await.2, "ok");
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn shed_requests_get_the_fallback() {
    let backend = Backend::start().await;
    backend.script([Action::Delay(
        Duration::from_millis(600),
        Box::new(Action::Status(200)),
    )]);
    let yaml = "limits:\n  max_concurrent_requests: 1\ndefaults:\n  fallback: { status: 503, body: busy, when: [overloaded] }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let slow_url = sidecar.url("/slow");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    eventually(|| backend.count() == 1).await;
    let (status, headers, body) = get(&sidecar.url("/shed")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    );
    assert_eq!(headers["x-outrigger-fallback"], "overloaded");
    assert_eq!(within(slow).await.unwrap().0, StatusCode::OK);
    assert_eq!(
        metric(
            &sidecar.metrics().await,
            "outrigger_fallbacks_total",
            &[("reason", "overloaded")]
        ),
        1.0
    );
}

#[tokio::test]
async fn stale_copies_are_never_shared_across_hosts() {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 200,
        headers: vec![],
        body: b"tenant A account".to_vec(),
    }]);
    let sidecar = Sidecar::in_front_of(&backend, STALE).await;
    let as_host = |host: &'static str| get_with(&sidecar.url("/account"), &[("host", host)]);
    assert_eq!(send(as_host("a.example")).await.2, "tenant A account");
    backend.set_default(Action::Status(503));
    assert_eq!(
        send(as_host("b.example")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(send(as_host("a.example")).await.2, "tenant A account");
}

#[tokio::test]
async fn a_down_probe_does_not_block_routes_without_stale_or_fallback() {
    let backend = Backend::start().await;
    backend.on_path("/healthz", Action::Status(500));
    let yaml = "  health_check: { path: /healthz, interval: 20ms, unhealthy_threshold: 1 }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let health_url = format!("http://{}/health", sidecar.admin);
    within(async {
        while get(&health_url).await.0 != StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(get(&sidecar.url("/still-works")).await.2, "ok");
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn aborted_client_uploads_do_not_open_the_breaker() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, BREAKER).await;
    for _ in 0..8 {
        // Promise 1000 bytes, send 10, hang up.
        raw(
            sidecar.addr,
            b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789",
            Duration::from_millis(1),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = get(&sidecar.url("/after")).await;
    assert_eq!(status, StatusCode::OK);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_circuit_state", &[("route", "default")]),
        0.0
    );
    assert_eq!(
        metric(&m, "outrigger_circuit_transitions_total", &[("to", "open")]),
        0.0
    );
}
