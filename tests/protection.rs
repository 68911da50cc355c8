//! Backend protection: rate limits, the fresh micro-cache, request coalescing.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn over_the_limit_requests_never_reach_the_backend() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(
        &backend,
        "defaults:\n  rate_limit: { rate: 1/m, burst: 3 }\n",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, headers, body) = get(&sidecar.url("/r")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(body.contains(r#""reason":"rate-limited""#), "{body}");
            let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&wait), "a token every 60 s: {wait}");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(backend.count(), 3);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_rate_limited_total", &[("route", "default")]),
        3.0
    );
}

#[tokio::test]
async fn rate_limit_keys_are_isolated_and_a_fallback_can_answer() {
    let backend = Backend::start().await;
    let yaml = "defaults:\n  rate_limit: { rate: 1/m, burst: 1, key: \"header:x-api-key\" }\n  fallback: { status: 503, body: slow down, when: [rate-limited] }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let as_key = |k: &'static str| get_with(&sidecar.url("/k"), &[("x-api-key", k)]);
    assert_eq!(send(as_key("a")).await.0, StatusCode::OK);
    let (status, headers, body) = send(as_key("a")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "slow down")
    );
    assert_eq!(headers["x-outrigger-fallback"], "rate-limited");
    assert_eq!(
        send(as_key("b")).await.0,
        StatusCode::OK,
        "key b has its own bucket"
    );
    assert_eq!(backend.count(), 2);
}

#[tokio::test]
async fn retries_draw_from_the_same_bucket() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = "defaults:\n  rate_limit: { rate: 1/m, burst: 3 }\n  retry: { attempts: 5, backoff: { base: 1ms, max: 2ms } }\n  circuit_breaker: { enabled: false }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (status, headers, _) = get(&sidecar.url("/x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers["x-outrigger-attempts"], "3",
        "three tokens: one try, two retries"
    );
    assert_eq!(
        get(&sidecar.url("/x")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        backend.count(),
        3,
        "the backend never saw more than the limit"
    );
}

const CACHE: &str = "defaults:\n  cache: { ttl: 5s }\n";

#[tokio::test]
async fn cache_hits_spare_the_backend() {
    let backend = Backend::start().await;
    backend.script([Action::Respond {
        status: 200,
        headers: vec![("etag".into(), "\"v1\"".into())],
        body: b"hot".to_vec(),
    }]);
    let sidecar = Sidecar::in_front_of(&backend, CACHE).await;
    let (_, first, _) = get(&sidecar.url("/hot?x=1")).await;
    assert!(first.get("x-outrigger-cache").is_none());
    for _ in 0..5 {
        let (status, headers, body) = get(&sidecar.url("/hot?x=1")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hot"));
        assert_eq!(headers["x-outrigger-cache"], "hit");
        assert_eq!(headers["age"], "0");
        assert_eq!(headers["etag"], "\"v1\"");
        assert_eq!(headers["x-outrigger-attempts"], "0");
    }
    get(&sidecar.url("/hot?x=2")).await;
    assert_eq!(backend.count(), 2, "one per distinct path and query");
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_cache_requests_total", &[("result", "hit")]),
        5.0
    );
    assert_eq!(
        metric(&m, "outrigger_cache_requests_total", &[("result", "miss")]),
        2.0
    );
    assert_eq!(
        metric(&m, "outrigger_requests_total", &[("outcome", "cache")]),
        5.0
    );
}

#[tokio::test]
async fn cache_entries_expire_and_upstream_max_age_wins() {
    let backend = Backend::start().await;
    backend.on_path(
        "/short",
        Action::Respond {
            status: 200,
            headers: vec![("cache-control".into(), "max-age=1".into())],
            body: b"s".to_vec(),
        },
    );
    let sidecar = Sidecar::in_front_of(&backend, "defaults:\n  cache: { ttl: 300ms }\n").await;
    get(&sidecar.url("/ttl")).await;
    assert_eq!(
        get(&sidecar.url("/ttl")).await.1["x-outrigger-cache"],
        "hit"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        get(&sidecar.url("/ttl"))
            .await
            .1
            .get("x-outrigger-cache")
            .is_none(),
        "expired after ttl"
    );
    assert_eq!(backend.count(), 2);

    let long = Sidecar::in_front_of(&backend, "defaults:\n  cache: { ttl: 60s }\n").await;
    get(&long.url("/short")).await;
    assert_eq!(get(&long.url("/short")).await.1["x-outrigger-cache"], "hit");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        get(&long.url("/short"))
            .await
            .1
            .get("x-outrigger-cache")
            .is_none(),
        "max-age=1 beat ttl 60s"
    );
}

#[tokio::test]
async fn responses_and_requests_that_must_not_be_cached() {
    let backend = Backend::start().await;
    let marked = [
        ("cache-control", "no-store"),
        ("cache-control", "private"),
        ("cache-control", "no-cache"),
        ("vary", "*"),
        ("set-cookie", "session=1"),
    ];
    for (i, (name, value)) in marked.iter().enumerate() {
        backend.on_path(
            &format!("/m{i}"),
            Action::Respond {
                status: 200,
                headers: vec![((*name).into(), (*value).into())],
                body: b"x".to_vec(),
            },
        );
    }
    let sidecar = Sidecar::in_front_of(&backend, CACHE).await;
    for (i, mark) in marked.iter().enumerate() {
        for _ in 0..2 {
            let (_, headers, _) = get(&sidecar.url(&format!("/m{i}"))).await;
            assert!(
                headers.get("x-outrigger-cache").is_none(),
                "{mark:?} was cached"
            );
        }
    }
    for private in [("authorization", "Bearer a"), ("cookie", "s=a")] {
        for _ in 0..2 {
            let (_, headers, _) = send(get_with(&sidecar.url("/private"), &[private])).await;
            assert!(headers.get("x-outrigger-cache").is_none(), "{private:?}");
        }
    }
    let post = Request::post(sidecar.url("/p"))
        .body(Full::default())
        .unwrap();
    send(post).await;
    let post = Request::post(sidecar.url("/p"))
        .body(Full::default())
        .unwrap();
    assert!(send(post).await.1.get("x-outrigger-cache").is_none());
    assert_eq!(
        backend.count(),
        6,
        "private, cookie and POST requests all reached the backend"
    );
}

#[tokio::test]
async fn no_user_ever_gets_another_users_cached_response() {
    let backend = Backend::start().await;
    backend.set_default(Action::Respond {
        status: 200,
        headers: vec![("vary".into(), "x-user".into())],
        body: b"PRIVATE A".to_vec(),
    });
    let yaml =
        "defaults:\n  cache: { ttl: 60s }\n  stale_if_error: { key_headers: [authorization] }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let a: &[(&str, &str)] = &[
        ("authorization", "Bearer a"),
        ("x-user", "a"),
        ("host", "a.example"),
    ];
    assert_eq!(send(get_with(&sidecar.url("/me"), a)).await.2, "PRIVATE A");
    let (_, headers, body) = send(get_with(&sidecar.url("/me"), a)).await;
    assert_eq!(
        (
            body.as_str(),
            headers["x-outrigger-cache"].to_str().unwrap()
        ),
        ("PRIVATE A", "hit")
    );
    backend.set_default(Action::Respond {
        status: 200,
        headers: vec![],
        body: b"someone else".to_vec(),
    });
    let others: [&[(&str, &str)]; 6] = [
        &[],
        &[
            ("authorization", "Bearer b"),
            ("x-user", "a"),
            ("host", "a.example"),
        ],
        &[("x-user", "a"), ("host", "a.example")],
        &[
            ("authorization", "Bearer a"),
            ("x-user", "b"),
            ("host", "a.example"),
        ],
        &[
            ("authorization", "Bearer a"),
            ("x-user", "a"),
            ("host", "b.example"),
        ],
        &[
            ("authorization", "Bearer a"),
            ("x-user", "a"),
            ("host", "a.example"),
            ("cookie", "s=b"),
        ],
    ];
    for who in others {
        let (_, headers, body) = send(get_with(&sidecar.url("/me"), who)).await;
        assert_ne!(body, "PRIVATE A", "{who:?} got A's copy");
        assert!(headers.get("x-outrigger-cache").is_none(), "{who:?}");
    }
}

async fn concurrent_gets(sidecar: &Sidecar, path: &str, n: usize) -> Vec<(StatusCode, String)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = sidecar.url(path);
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = get(&url).await;
            (status, body)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(within(t).await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_hundred_concurrent_misses_reach_the_backend_once() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(300),
        Box::new(Action::Respond {
            status: 200,
            headers: vec![],
            body: b"cold value".to_vec(),
        }),
    ));
    let sidecar = Sidecar::in_front_of(
        &backend,
        "limits:\n  max_concurrent_requests: 4096\ndefaults:\n  cache: { ttl: 5s }\n",
    )
    .await;
    let results = concurrent_gets(&sidecar, "/cold", 100).await;
    assert!(
        results
            .iter()
            .all(|(s, b)| *s == StatusCode::OK && b == "cold value"),
        "{results:?}"
    );
    assert_eq!(backend.count(), 1);
    let m = sidecar.metrics().await;
    let coalesced = metric(
        &m,
        "outrigger_cache_requests_total",
        &[("result", "coalesced")],
    );
    let hits = metric(&m, "outrigger_cache_requests_total", &[("result", "hit")]);
    assert_eq!(
        coalesced + hits,
        99.0,
        "coalesced {coalesced}, late hits {hits}"
    );
    assert!(coalesced >= 50.0, "most waited for the leader: {coalesced}");
}

#[tokio::test]
async fn responses_that_may_not_be_cached_are_not_shared() {
    let backend = Backend::start().await;
    backend.script((0..20).map(|i| {
        Action::Delay(
            Duration::from_millis(100),
            Box::new(Action::Respond {
                status: 200,
                headers: vec![("cache-control".into(), "private".into())],
                body: format!("user-{i}").into_bytes(),
            }),
        )
    }));
    let sidecar = Sidecar::in_front_of(&backend, CACHE).await;
    let results = concurrent_gets(&sidecar, "/mine", 20).await;
    let mut bodies: Vec<&str> = results.iter().map(|(_, b)| b.as_str()).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        20,
        "every request got its own answer: {results:?}"
    );
    assert_eq!(backend.count(), 20);
}

/// A GET with a body is neither answered from a copy nor stored: the key is the head's,
/// and the body may ask something else (a search sent as a GET with a body). Stored, one
/// client's answer went to the next client with another body (a review, 2026-12-01).
#[tokio::test]
async fn a_get_with_a_body_is_neither_served_from_nor_kept_in_the_cache() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, CACHE).await;
    let search = |body: &'static str| {
        Request::get(sidecar.url("/search"))
            .body(Full::from(body))
            .unwrap()
    };
    assert_eq!(send(search("alice's query")).await.2, "alice's query");
    let (_, headers, body) = send(search("bob's query")).await;
    assert_eq!(body, "bob's query", "another client's answer");
    assert!(headers.get("x-outrigger-cache").is_none());
    // A GET without a body is not answered from either.
    let (_, headers, _) = send(get_with(&sidecar.url("/search"), &[])).await;
    assert!(headers.get("x-outrigger-cache").is_none(), "{headers:?}");
    assert_eq!(backend.count(), 3);
}

#[tokio::test]
async fn a_failed_leader_does_not_become_n_failures() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(200),
        Box::new(Action::Status(503)),
    ));
    let yaml = "defaults:\n  retry: { attempts: 1 }\n  cache: { ttl: 5s }\n  fallback: { body: catalog unavailable }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let results = concurrent_gets(&sidecar, "/catalog", 30).await;
    assert!(
        results
            .iter()
            .all(|(s, b)| *s == StatusCode::OK && b == "catalog unavailable"),
        "{results:?}"
    );
    assert_eq!(
        backend.count(),
        1,
        "the followers got the fallback without asking again"
    );
}

/// A leader refused by its own rate limit does not refuse its followers, who each have a
/// token: one of them leads instead (an attack review, 2026-12-01: a client with a spent
/// key led a flight and every follower got the rate-limited fallback). The fault delay
/// holds the leader before it takes its token, so the followers join meanwhile.
#[tokio::test]
async fn a_leader_over_its_own_rate_limit_hands_the_flight_on() {
    let backend = Backend::start().await;
    let yaml = "defaults:\n  cache: { ttl: 5s }\n  \
                rate_limit: { rate: 1/m, burst: 1, key: \"header:x-api-key\" }\n  \
                fault: { delay: { percent: 100, duration: 300ms } }\n  \
                fallback: { body: slow down, when: [rate-limited] }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let as_key = |path: &str, k: &'static str| get_with(&sidecar.url(path), &[("x-api-key", k)]);
    // The leader's key spends its one token on another URL.
    assert_eq!(send(as_key("/spent", "leader")).await.2, "ok");
    let leader = tokio::spawn(send(as_key("/feed", "leader")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|k| tokio::spawn(send(as_key("/feed", k))))
        .collect();
    assert_eq!(leader.await.unwrap().2, "slow down", "its own limit");
    for follower in followers {
        let (status, _, body) = follower.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    }
    assert_eq!(
        backend.count(),
        2,
        "/spent, then /feed once for the followers"
    );
}

/// With the route's one bucket (`key: route`) the leader's refusal is the followers' too:
/// they get it at once, rather than each leading in turn to be refused (a review: N
/// followers took N rounds, each with the fault's delay).
#[tokio::test]
async fn a_leader_over_the_route_s_rate_limit_answers_its_followers_with_it() {
    let backend = Backend::start().await;
    let yaml = "defaults:\n  cache: { ttl: 5s }\n  \
                rate_limit: { rate: 1/m, burst: 1 }\n  \
                fault: { delay: { percent: 100, duration: 300ms } }\n  \
                fallback: { body: slow down, when: [rate-limited] }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    assert_eq!(send(get_with(&sidecar.url("/spent"), &[])).await.2, "ok");
    let leader = tokio::spawn(send(get_with(&sidecar.url("/feed"), &[])));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(get_with(&sidecar.url("/feed"), &[]))))
        .collect();
    assert_eq!(leader.await.unwrap().2, "slow down");
    for follower in followers {
        assert_eq!(follower.await.unwrap().2, "slow down");
    }
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_faults_injected_total", &[("kind", "delay")]),
        2.0,
        "/spent and the one leader: no follower led in turn"
    );
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn waiters_past_their_deadline_time_out_without_asking_the_backend() {
    let backend = Backend::start().await;
    // Headers at once, then a body that takes 1.2 s: longer than the 500 ms route timeout.
    backend.set_default(Action::Slow {
        chunks: 4,
        interval: Duration::from_millis(300),
    });
    let yaml = "defaults:\n  timeout: 500ms\n  retry: { attempts: 1, per_try_timeout: 400ms }\n  cache: { ttl: 5s }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let results = concurrent_gets(&sidecar, "/slow-body", 5).await;
    let timed_out = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::GATEWAY_TIMEOUT)
        .count();
    assert_eq!(timed_out, 4, "the waiters: {results:?}");
    assert_eq!(backend.count(), 1, "no doomed attempts");
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_upstream_attempts_total",
            &[("result", "timeout")]
        ),
        0.0
    );
}
