//! State shared by replicas through Redis (SPEC §7.4), with a real `redis-server` and real
//! outrigger instances: a fleet-wide rate limit, stale copies another replica stored, the
//! privacy rules, and Redis hung (`SIGSTOP`), killed and restarted under traffic.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::process::{self, free_port, wait_ready, Process};
use support::redis_server::Redis;
use support::{get, get_with, metric, send, within, Action, Backend, Sidecar};
use tokio::time::Instant;

fn ok(body: &str) -> Action {
    Action::Respond {
        status: 200,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

/// A GET with the Host a load balancer would pass to every replica alike (the store key
/// holds the client's Host, and each test replica listens on its own port).
async fn fetch(url: &str, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap, String) {
    let mut all = vec![("host", "api.example")];
    all.extend_from_slice(headers);
    send(get_with(url, &all)).await
}

fn shared_block(redis: &Redis, timeout: &str) -> String {
    format!(
        "shared:\n  redis: {}\n  namespace: t{}\n  timeout: {timeout}\n",
        redis.url(),
        free_port()
    )
}

/// Waits until a sidecar says the shared store is in use.
async fn until_up(sidecar: &Sidecar) {
    within(async {
        loop {
            let m = sidecar.metrics().await;
            if metric(&m, "outrigger_shared_store_up", &[]) == 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn up(sidecar: &Sidecar) -> f64 {
    metric(&sidecar.metrics().await, "outrigger_shared_store_up", &[])
}

/// Sends GETs to each sidecar from `per` clients for `run`; returns (admitted, refused,
/// other) and the time from the first request sent to the last answer.
async fn drive(sidecars: &[&Sidecar], per: usize, run: Duration) -> ([usize; 3], Duration) {
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for sidecar in sidecars {
        for _ in 0..per {
            let url = sidecar.url("/q");
            let counts = Arc::clone(&counts);
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < run {
                    let (status, _, _) = get(&url).await;
                    let slot = match status.as_u16() {
                        200 => 0,
                        429 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
    }
    for task in tasks {
        within(task).await.expect("client task");
    }
    let elapsed = start.elapsed();
    let c = counts.iter().map(|c| c.load(Ordering::Relaxed));
    let c: Vec<usize> = c.collect();
    ([c[0], c[1], c[2]], elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_rate_limit() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let yaml = format!(
        "{}defaults:\n  retry: {{ attempts: 1 }}\n  rate_limit: {{ rate: 20/s, burst: 10, scope: shared }}\n",
        shared_block(&redis, "200ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    let b = Sidecar::in_front_of(&backend, &yaml).await;
    let c = Sidecar::in_front_of(&backend, &yaml).await;
    for s in [&a, &b, &c] {
        until_up(s).await;
    }
    let ([admitted, refused, other], elapsed) =
        drive(&[&a, &b, &c], 3, Duration::from_secs(3)).await;
    // rate 20/s, burst 10: batch_size = 1 token, so three replicas may hold 3 unspent.
    let bound = 20.0 * elapsed.as_secs_f64() + 10.0 + 3.0;
    assert_eq!(other, 0, "no request failed");
    assert!(refused > 0, "the limit was reached");
    assert_eq!(
        admitted,
        backend.count(),
        "every admitted request reached the backend"
    );
    assert!(
        admitted as f64 <= bound,
        "admitted {admitted} > bound {bound:.1} over {elapsed:?}"
    );
    assert!(
        admitted as f64 >= 0.8 * (bound - 3.0),
        "admitted {admitted}, far below {bound:.1} over {elapsed:?}"
    );
    let m = a.metrics().await;
    assert_eq!(metric(&m, "outrigger_shared_store_errors_total", &[]), 0.0);
    assert!(
        metric(
            &m,
            "outrigger_shared_store_duration_seconds_count",
            &[("op", "reserve")]
        ) > 0.0
    );
    let buckets = redis.keys("t*:rl:*").await;
    assert_eq!(buckets.len(), 1, "one bucket for the route: {buckets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_keys_are_hashed_before_they_reach_redis() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let yaml = format!(
        "{}defaults:\n  rate_limit: {{ rate: 100/s, burst: 10, key: 'header:x-api-key', scope: shared }}\n",
        shared_block(&redis, "200ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    for key in ["sekrit-one", "sekrit-two"] {
        let (status, _, _) = send(get_with(&a.url("/k"), &[("x-api-key", key)])).await;
        assert_eq!(status, 200);
    }
    let keys = redis.keys("*").await;
    assert_eq!(
        keys.iter().filter(|k| k.contains(":rl:")).count(),
        2,
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| !k.contains("sekrit")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_never_saw_a_response_serves_the_shared_stale_copy() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}defaults:\n  retry: {{ attempts: 1 }}\n  circuit_breaker: {{ enabled: false }}\n  stale_if_error: {{ max_age: 10m, scope: shared }}\n",
        shared_block(&redis, "200ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    let b = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    until_up(&b).await;
    backend.set_default(ok("v1"));
    let (status, _, body) = fetch(&a.url("/item"), &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "v1"));
    within(async {
        while redis.keys("t*:rs:*").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stored = redis.keys("t*:rs:*").await;
    assert!(stored.iter().all(|k| !k.contains("item")), "{stored:?}");

    backend.set_default(Action::Status(503));
    let (status, headers, body) = fetch(&b.url("/item"), &[]).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "v1"),
        "B never saw it"
    );
    assert!(headers.contains_key("x-outrigger-stale"));
    let (status, _, _) = fetch(&b.url("/other"), &[]).await;
    assert_eq!(status, 503, "nothing stored for another path");

    // A replica started after the copy was stored serves it too.
    let c = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&c).await;
    let (status, headers, body) = fetch(&c.url("/item"), &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "v1"));
    assert!(headers.contains_key("x-outrigger-stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_cache_answers_for_the_other_replica() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(ok("fresh"));
    let yaml = format!(
        "{}defaults:\n  cache: {{ ttl: 30s, scope: shared }}\n",
        shared_block(&redis, "200ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    let b = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    until_up(&b).await;
    assert_eq!(fetch(&a.url("/c"), &[]).await.2, "fresh");
    within(async {
        while redis.keys("t*:rs:*").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (status, headers, body) = fetch(&b.url("/c"), &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "fresh"));
    assert_eq!(headers["x-outrigger-cache"], "hit");
    assert_eq!(backend.count(), 1, "B answered from the copy A stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_answers_are_never_shared() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}defaults:\n  retry: {{ attempts: 1 }}\n  circuit_breaker: {{ enabled: false }}\n  stale_if_error: {{ max_age: 10m, scope: shared }}\n\
routes:\n  - name: keyed\n    match: {{ path_prefix: /keyed }}\n    stale_if_error: {{ max_age: 10m, key_headers: [authorization], scope: shared }}\n",
        shared_block(&redis, "200ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    let b = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    until_up(&b).await;
    backend.set_default(ok("alice's data"));
    let alice = [("authorization", "Bearer alice")];
    assert_eq!(fetch(&a.url("/me"), &alice).await.0, 200);
    assert_eq!(fetch(&a.url("/me"), &[("cookie", "s=alice")]).await.0, 200);
    backend.set_default(Action::Respond {
        status: 200,
        headers: vec![("cache-control".into(), "private".into())],
        body: b"private".to_vec(),
    });
    assert_eq!(fetch(&a.url("/private"), &[]).await.0, 200);
    // Keyed by its Authorization value: shared, but only with the same value.
    backend.set_default(ok("alice's keyed data"));
    assert_eq!(fetch(&a.url("/keyed"), &alice).await.0, 200);
    within(async {
        while redis.keys("t*:rs:*").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Give any (wrong) write of the earlier answers the time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.keys("t*:rs:*").await.len(), 1, "only the keyed copy");

    backend.set_default(Action::Status(503));
    for (path, headers) in [
        ("/me", &alice[..]),
        ("/me", &[("authorization", "Bearer mallory")][..]),
        ("/me", &[("cookie", "s=alice")][..]),
        ("/me", &[][..]),
        ("/private", &[][..]),
        ("/keyed", &[("authorization", "Bearer mallory")][..]),
        ("/keyed", &[][..]),
    ] {
        let (status, _, body) = fetch(&b.url(path), headers).await;
        assert_eq!(status, 503, "{path} {headers:?} got {body}");
    }
    let (status, _, body) = fetch(&b.url("/keyed"), &alice).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "alice's keyed data")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_costs_a_request_at_most_the_timeout() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let yaml = format!(
        "{}defaults:\n  rate_limit: {{ rate: 1000/s, burst: 1000, scope: shared }}\n  stale_if_error: {{ max_age: 10m, scope: shared }}\n  cache: {{ ttl: 1s, scope: shared }}\n",
        shared_block(&redis, "50ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    assert_eq!(get(&a.url("/warm")).await.0, 200);

    redis.freeze();
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        let (status, _, _) = get(&a.url(&format!("/n{i}"))).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "request {i} while Redis is hung");
    }
    // A request may meet two Redis operations (cache look-up, token refill), each bounded
    // by the 50 ms timeout; the slack is for a loaded debug build.
    assert!(
        slowest < Duration::from_millis(100 + 150),
        "slowest request took {slowest:?}"
    );
    let m = a.metrics().await;
    assert_eq!(metric(&m, "outrigger_shared_store_up", &[]), 0.0);
    assert!(
        metric(&m, "outrigger_shared_store_errors_total", &[]) >= 3.0,
        "{m}"
    );

    redis.thaw();
    let thawed = Instant::now();
    until_up(&a).await;
    assert!(
        thawed.elapsed() < Duration::from_secs(5),
        "{:?}",
        thawed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_mid_traffic() {
    let mut redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let yaml = format!(
        "{}defaults:\n  rate_limit: {{ rate: 2000/s, burst: 2000, scope: shared }}\n  stale_if_error: {{ max_age: 10m, scope: shared }}\n",
        shared_block(&redis, "50ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    let traffic = {
        let url = a.url("/t");
        tokio::spawn(async move {
            let mut failed = 0;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(6) {
                if get(&url).await.0 != 200 {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let a_ref = &a;
    within(async {
        while up(a_ref).await != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    let restarted = Instant::now();
    until_up(&a).await;
    let back = restarted.elapsed();
    assert!(back < Duration::from_secs(5), "shared again after {back:?}");
    within(async {
        while redis.keys("t*:rl:*").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let failed = within(traffic).await.expect("traffic task");
    assert_eq!(failed, 0, "no request failed because of Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_logged_counted_and_never_shown() {
    let redis = Redis::with_password("right-pass-7").await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let config = support::temp_file(
        "o.yaml",
        &format!(
            "upstream:\n  url: {}\nshared:\n  redis: redis://:wrong-pass-9@127.0.0.1:{}/0\n  timeout: 50ms\n\
defaults:\n  rate_limit: {{ rate: 100/s, scope: shared }}\n  stale_if_error: {{ max_age: 1m, scope: shared }}\n",
            backend.url(),
            redis.port
        ),
    );
    let config = config.to_str().expect("utf-8 path");
    let (listen, admin) = (free_port(), free_port());
    let listen_addr = format!("127.0.0.1:{listen}");
    let admin_addr = format!("127.0.0.1:{admin}");
    let log = support::temp_file("out.log", "");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args([
            "--config",
            config,
            "--listen",
            &listen_addr,
            "--admin-listen",
            &admin_addr,
        ])
        .env_remove("OUTRIGGER_REDIS_URL")
        .stdout(log_file.try_clone().expect("clone"))
        .stderr(log_file)
        .spawn()
        .expect("spawn outrigger");
    let admin_sock = admin_addr.parse().expect("addr");
    wait_ready(admin_sock).await;
    for _ in 0..5 {
        assert_eq!(get(&format!("http://{listen_addr}/p")).await.0, 200);
    }
    let metrics_url = format!("http://{admin_addr}/metrics");
    within(async {
        loop {
            let m = get(&metrics_url).await.2;
            if metric(
                &m,
                "outrigger_shared_store_errors_total",
                &[("op", "connect")],
            ) >= 1.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let m = get(&metrics_url).await.2;
    assert_eq!(metric(&m, "outrigger_shared_store_up", &[]), 0.0);
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("cannot connect to the shared store"),
        "{logged}"
    );
    assert!(
        logged.contains("shared.namespace is the default"),
        "no namespace in the file: the collision hazard is logged: {logged}"
    );
    for text in [&logged, &m] {
        assert!(!text.contains("wrong-pass-9"), "password shown: {text}");
    }

    // `outrigger check`: the password is not in its output, from the file or from
    // OUTRIGGER_REDIS_URL, valid or not.
    let out = process::run(&["check", "--config", config], &[]);
    assert!(out.status.success());
    let env_url = format!("redis://:env-pass-3@127.0.0.1:{}/0", redis.port);
    let out_env = process::run(
        &["check", "--config", config],
        &[("OUTRIGGER_REDIS_URL", &env_url)],
    );
    assert!(out_env.status.success());
    let bad = process::run(
        &["check", "--config", config],
        &[("OUTRIGGER_REDIS_URL", "http://:env-pass-3@h")],
    );
    assert_eq!(bad.status.code(), Some(1));
    let bad_err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(bad_err.contains("OUTRIGGER_REDIS_URL"), "{bad_err}");
    for o in [&out, &out_env, &bad] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains("pass-"), "password shown: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outrigger_redis_url_overrides_the_file() {
    let redis = Redis::with_password("env-only-5").await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let dead = free_port();
    let config = support::temp_file(
        "o.yaml",
        &format!(
            "upstream:\n  url: {}\nshared:\n  redis: redis://127.0.0.1:{dead}/0\n\
defaults:\n  rate_limit: {{ rate: 100/s, scope: shared }}\n",
            backend.url()
        ),
    );
    let (listen, admin) = (free_port(), free_port());
    let (listen, admin) = (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{admin}"));
    let _child = Process::spawn(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ],
        &[("OUTRIGGER_REDIS_URL", &redis.url())],
    );
    wait_ready(admin.parse().expect("addr")).await;
    let metrics_url = format!("http://{admin}/metrics");
    within(async {
        while metric(&get(&metrics_url).await.2, "outrigger_shared_store_up", &[]) != 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(get(&format!("http://{listen}/x")).await.0, 200);
    assert!(!redis.keys("outrigger:rl:*").await.is_empty());
}

#[test]
fn scope_shared_without_redis_is_a_config_error_naming_the_field() {
    let config = support::temp_file(
        "o.yaml",
        "upstream:\n  url: http://127.0.0.1:9\nroutes:\n  - name: a\n    match: { path_prefix: /a }\n  - name: quotes\n    match: { path_prefix: /q }\n    cache: { ttl: 1s, scope: shared }\n",
    );
    let out = process::run(&["check", "--config", config.to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("o.yaml"), "{err}");
    assert!(err.contains("routes[1].cache.scope"), "{err}");
    assert!(err.contains("shared.redis"), "{err}");
    let bad_scope = support::temp_file(
        "o.yaml",
        "upstream:\n  url: http://127.0.0.1:9\ndefaults:\n  rate_limit: { rate: 1/s, scope: global }\n",
    );
    let out = process::run(
        &["check", "--config", bad_scope.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scope") && err.contains(":4:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_each_replica_limits_to_its_share() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(ok("q"));
    let shared = shared_block(&redis, "50ms");
    let namespace = shared
        .lines()
        .find_map(|l| l.trim().strip_prefix("namespace: "))
        .expect("namespace")
        .to_owned();
    let yaml = format!(
        "{shared}defaults:\n  retry: {{ attempts: 1 }}\n  rate_limit: {{ rate: 40/s, burst: 4, scope: shared }}\n"
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    let b = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    until_up(&b).await;
    let replicas = format!("{namespace}:replicas");
    within(async {
        while redis.query(&["ZCARD", &replicas]).await.ok() != Some(redis::Value::Int(2)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Both replicas have read the count of 2 at their next announcement.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    redis.freeze();
    let before = backend.count();
    let ([admitted, refused, other], elapsed) = drive(&[&a], 4, Duration::from_secs(2)).await;
    assert_eq!(other, 0);
    assert!(refused > 0);
    assert_eq!(backend.count() - before, admitted);
    // A's share: 20/s and a burst of 2, plus what it had reserved before the freeze.
    let share = 20.0 * elapsed.as_secs_f64() + 2.0;
    assert!(
        (admitted as f64) <= share + 2.0,
        "admitted {admitted}, share {share:.1} over {elapsed:?}"
    );
    assert!(
        (admitted as f64) >= 0.7 * share,
        "admitted {admitted}, share {share:.1}"
    );
    assert_eq!(up(&a).await, 0.0);
}

/// The raw bytes Redis holds under `key`, read with a plain client.
async fn raw_value(redis: &Redis, key: &str) -> Vec<u8> {
    match redis.query(&["GET", key]).await.expect("GET") {
        redis::Value::BulkString(bytes) => bytes,
        other => panic!("GET {key} answered {other:?}"),
    }
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vary_values_reach_redis_only_as_digests() {
    const TENANT: &str = "tenant-acme-5f0c2e";
    const TOKEN: &str = "Bearer alice-token-9c1e77";
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}defaults:\n  retry: {{ attempts: 1 }}\n  circuit_breaker: {{ enabled: false }}\n  stale_if_error: {{ max_age: 10m, scope: shared }}\n\
routes:\n  - name: keyed\n    match: {{ path_prefix: /keyed }}\n    stale_if_error: {{ max_age: 10m, key_headers: [authorization], scope: shared }}\n",
        shared_block(&redis, "200ms")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    let b = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    until_up(&b).await;
    let varying = |vary: &str, body: &str| Action::Respond {
        status: 200,
        headers: vec![("vary".into(), vary.into())],
        body: body.as_bytes().to_vec(),
    };
    backend.set_default(varying("x-tenant", "acme's data"));
    let acme = [("x-tenant", TENANT)];
    assert_eq!(fetch(&a.url("/t"), &acme).await.0, 200);
    backend.set_default(varying("Authorization, X-Tenant", "alice's data"));
    let alice = [("authorization", TOKEN), ("x-tenant", TENANT)];
    assert_eq!(fetch(&a.url("/keyed"), &alice).await.0, 200);
    within(async {
        while redis.keys("t*:rs:*").await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // What a reader of Redis sees: the copies and the names they vary on, never the values.
    for key in redis.keys("t*:rs:*").await {
        let bytes = raw_value(&redis, &key).await;
        assert!(holds(&bytes, "'s data"), "{key} holds the copy");
        assert!(holds(&bytes, "x-tenant"), "{key} names what it varies on");
        for secret in [TENANT, "acme-5f0c2e", "alice-token-9c1e77"] {
            assert!(
                !holds(&bytes, secret),
                "{key} holds `{secret}`: {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    // B (which never saw the answers) serves them to the same values only.
    backend.set_default(Action::Status(503));
    let other_tenant = [("x-tenant", "tenant-evil")];
    for (path, headers) in [
        ("/t", &other_tenant[..]),
        ("/t", &[][..]),
        ("/t", &[("x-tenant", TENANT), ("x-tenant", TENANT)][..]),
        (
            "/keyed",
            &[("authorization", "Bearer mallory"), ("x-tenant", TENANT)][..],
        ),
        (
            "/keyed",
            &[("authorization", TOKEN), ("x-tenant", "tenant-evil")][..],
        ),
        ("/keyed", &[("authorization", TOKEN)][..]),
    ] {
        let (status, _, body) = fetch(&b.url(path), headers).await;
        assert_eq!(status, 503, "{path} {headers:?} got {body}");
    }
    for (path, headers, want) in [
        ("/t", &acme[..], "acme's data"),
        ("/keyed", &alice[..], "alice's data"),
    ] {
        let (status, headers, body) = fetch(&b.url(path), headers).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, want));
        assert!(headers.contains_key("x-outrigger-stale"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_write_queue_is_bounded_in_bytes() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.set_default(Action::Respond {
        status: 200,
        headers: vec![],
        body: vec![b'x'; 900_000],
    });
    // A long timeout: with Redis hung, the writer sits on its first write while the
    // answers keep coming, and the link stays up (no 3 errors yet) for the whole burst.
    let yaml = format!(
        "{}defaults:\n  stale_if_error: {{ max_age: 10m, scope: shared }}\n",
        shared_block(&redis, "5s")
    );
    let a = Sidecar::in_front_of(&backend, &yaml).await;
    until_up(&a).await;
    redis.freeze();
    let started = Instant::now();
    for i in 0..40 {
        let (status, _, body) = get(&a.url(&format!("/big{i}"))).await;
        assert_eq!((status.as_u16(), body.len()), (200, 900_000));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = a.metrics().await;
    let burst = started.elapsed();
    redis.thaw();
    assert_eq!(
        metric(&m, "outrigger_shared_store_up", &[]),
        1.0,
        "the link stayed up during the burst ({burst:?}), so every copy was queued or dropped"
    );
    // 16 MiB hold 18 copies of 900 kB (one of them the write in progress); the rest drop.
    let dropped = metric(
        &m,
        "outrigger_shared_store_errors_total",
        &[("op", "queue-full")],
    );
    assert!(
        (40.0 - 19.0..=40.0 - 17.0).contains(&dropped),
        "dropped {dropped} of 40 copies of 900 kB"
    );
}
