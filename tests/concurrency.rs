//! The adaptive concurrency limit (SPEC §7.3, issue 15), through the real server in front of
//! real backends: a capacity-limited one, and the scriptable one for exact cases.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::capacity::Capacity;
use support::*;

const NO_BREAKER: &str = "  circuit_breaker: { enabled: false }\n";

fn limit(text: &str, route: &str) -> f64 {
    metric(text, "outrigger_concurrency_limit", &[("route", route)])
}

/// `clients` closed-loop clients on `path` for `run`, pausing `pause` after each answer:
/// (successes, overloaded answers, other statuses).
async fn drive(
    sidecar: &Sidecar,
    path: &str,
    clients: usize,
    run: Duration,
    pause: Duration,
) -> (usize, usize, Vec<u16>) {
    let stop = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = sidecar.url(path);
        tasks.push(tokio::spawn(async move {
            let mut out = (0, 0, Vec::new());
            while Instant::now() < stop {
                let (status, _, body) = get(&url).await;
                match status {
                    StatusCode::OK => out.0 += 1,
                    StatusCode::SERVICE_UNAVAILABLE
                        if body.contains(r#""reason":"overloaded""#) =>
                    {
                        out.1 += 1
                    }
                    other => out.2.push(other.as_u16()),
                }
                tokio::time::sleep(pause).await;
            }
            out
        }));
    }
    let mut total = (0, 0, Vec::new());
    for t in tasks {
        let (ok, shed, other) = t.await.unwrap();
        total.0 += ok;
        total.1 += shed;
        total.2.extend(other);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_settles_near_capacity_and_the_rest_is_shed_as_overloaded() {
    // 4 slots of 50 ms: 80 answers/s at most; more than 8 waiting are refused with 503.
    let backend = Capacity::start(4, Duration::from_millis(50)).await;
    let yaml = format!(
        "upstream:\n  url: {}\ndefaults:\n{NO_BREAKER}  concurrency: {{ initial: 4, min: 1, max: 100 }}\n",
        backend.url()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let run = Duration::from_secs(4);
    let (ok, shed, other) = drive(&sidecar, "/work", 32, run, Duration::from_millis(20)).await;
    let text = sidecar.metrics().await;
    let settled = limit(&text, "default");
    let rejected = metric(
        &text,
        "outrigger_concurrency_rejected_total",
        &[("route", "default")],
    );
    let received = backend.shared.received.load(Ordering::Relaxed);
    let refused = backend.shared.refused.load(Ordering::Relaxed);
    eprintln!("ok={ok} shed={shed} other={other:?} limit={settled} rejected={rejected} backend received={received} refused={refused}");
    // Near the capacity of 4: above it only by the queueing the latency rule tolerates
    // (1.5 × the unloaded latency: 6), well below where the backend starts refusing (4
    // served + 8 waiting). A route that starts far above its capacity may never see its
    // unloaded latency and then settles just under that point, where drops hold it.
    assert!((2.0..=11.0).contains(&settled), "limit {settled}");
    assert!(
        shed > 0 && rejected as usize >= shed,
        "shed {shed}, rejected {rejected}"
    );
    assert!(
        other.iter().all(|s| *s == 503),
        "only upstream 503s besides: {other:?}"
    );
    // The backend was hardly ever overrun; without the limit 32 clients would overrun it
    // all the time.
    // Throughput is the benchmark's business (bench/concurrency.sh), not a timed test's.
    assert!(refused * 10 <= received, "refused {refused} of {received}");
    // The route keeps serving: at least 30% of what the backend can answer in the run
    // (4 slots of 50 ms for 4 s: 320). Not a ratio to `shed`: shed answers are instant,
    // so their count grows with how fast the clients' machine is.
    assert!(ok * 10 >= 320 * 3, "{ok} answers");
    assert!(
        received < ok + shed + other.len(),
        "fewer upstream requests ({received}) than client requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_do_not_shrink_it_and_min_and_max_hold() {
    let backend = Backend::start().await;
    backend.on_path("/fail", Action::Status(503));
    backend.on_path("/missing", Action::Status(404));
    let yaml = format!(
        "upstream:\n  url: {}\ndefaults:\n{NO_BREAKER}  retry: {{ attempts: 1 }}\nroutes:\n  - {{ name: missing, match: {{ path: /missing }}, concurrency: {{ initial: 10, min: 3, max: 10 }} }}\n  - {{ name: fail, match: {{ path: /fail }}, concurrency: {{ initial: 10, min: 3, max: 10 }} }}\n  - {{ name: ok, match: {{ path: /ok }}, concurrency: {{ initial: 2, min: 1, max: 5, queue_timeout: 5s }} }}\n",
        backend.url()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let burst = |path: &'static str| {
        let url = sidecar.url(path);
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        for _ in 0..25 {
                            get(&url).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // 200 answers of 404, 8 at a time: the limit does not move.
    burst("/missing").await;
    // The same count of 503s, each attempt sent after the last cut: down to min, no lower.
    burst("/fail").await;
    // Fast 200s, 8 clients: up to max, no higher, polled while they run.
    let mut peak = 0.0f64;
    let mut peak_in_flight = 0.0f64;
    let load = burst("/ok");
    tokio::pin!(load);
    loop {
        tokio::select! {
            () = &mut load => break,
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                let text = sidecar.metrics().await;
                peak = peak.max(limit(&text, "ok"));
                peak_in_flight = peak_in_flight.max(metric(&text, "outrigger_upstream_in_flight", &[("route", "ok")]));
            }
        }
    }
    let text = sidecar.metrics().await;
    assert_eq!(limit(&text, "missing"), 10.0, "client faults left it alone");
    assert_eq!(limit(&text, "fail"), 3.0, "503s took it down to min");
    assert_eq!(peak, 5.0, "grew to max and never above");
    assert!(peak_in_flight <= 5.0, "in flight {peak_in_flight}");
}

#[tokio::test]
async fn a_request_waits_up_to_queue_timeout_and_then_gets_the_fallback() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(300),
        Box::new(Action::Status(200)),
    ));
    let yaml = format!(
        "upstream:\n  url: {}\ndefaults:\n{NO_BREAKER}routes:\n  - {{ name: queue, match: {{ path: /queue }}, concurrency: {{ initial: 1, min: 1, max: 1, queue_timeout: 5s }} }}\n  - name: shed\n    match: {{ path: /shed }}\n    concurrency: {{ initial: 1, min: 1, max: 1 }}\n    fallback: {{ status: 200, body: canned, when: [overloaded] }}\n",
        backend.url()
    );
    let sidecar = Arc::new(Sidecar::start(&yaml).await);
    let three = |path: &'static str| {
        let sidecar = Arc::clone(&sidecar);
        async move {
            let tasks: Vec<_> = (0..3)
                .map(|_| {
                    let url = sidecar.url(path);
                    tokio::spawn(async move { get(&url).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                let (status, headers, body) = t.await.unwrap();
                let fallback = headers.get("x-outrigger-fallback").cloned();
                out.push((status.as_u16(), fallback, body));
            }
            out
        }
    };
    // One slot, a queue: all three are served, one after another.
    let started = Instant::now();
    let queued = three("/queue").await;
    assert!(queued.iter().all(|(s, _, _)| *s == 200), "{queued:?}");
    assert!(started.elapsed() >= Duration::from_millis(850));
    // One slot, no queue: two are shed, as `overloaded`, and get the fallback.
    let shed = three("/shed").await;
    let canned: Vec<_> = shed.iter().filter(|(_, f, _)| f.is_some()).collect();
    assert_eq!(canned.len(), 2, "{shed:?}");
    assert!(canned
        .iter()
        .all(|(s, f, b)| *s == 200 && f.as_ref().unwrap() == "overloaded" && b == "canned"));
    let text = sidecar.metrics().await;
    let rejected = |route| {
        metric(
            &text,
            "outrigger_concurrency_rejected_total",
            &[("route", route)],
        )
    };
    assert_eq!((rejected("queue"), rejected("shed")), (0.0, 2.0));
}

#[tokio::test]
async fn a_retry_needs_a_free_slot() {
    let backend = Backend::start().await;
    backend.on_path(
        "/slow",
        Action::Delay(Duration::from_secs(2), Box::new(Action::Status(200))),
    );
    backend.script([Action::Status(503), Action::Status(200)]);
    let yaml = format!(
        "upstream:\n  url: {}\ndefaults:\n{NO_BREAKER}  retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 1ms }} }}\n  concurrency: {{ initial: 2, min: 1, max: 2 }}\n",
        backend.url()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let url = sidecar.url("/slow");
    let slow = tokio::spawn(async move { get(&url).await });
    within(async {
        while metric(
            &sidecar.metrics().await,
            "outrigger_upstream_in_flight",
            &[("route", "default")],
        ) < 1.0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The 503 cuts the limit to 1, which `/slow` holds: the retry is skipped, and the
    // upstream's own 503 is the answer.
    let (status, headers, _) = get(&sidecar.url("/r")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-outrigger-attempts"], "1");
    let text = sidecar.metrics().await;
    let skipped = metric(
        &text,
        "outrigger_retries_skipped_total",
        &[("route", "default"), ("reason", "budget")],
    );
    assert_eq!(skipped, 1.0);
    assert_eq!(slow.await.unwrap().0, 200);
}

#[tokio::test]
async fn a_reload_keeps_the_learned_limit_unless_its_block_changed() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let base = format!(
        "upstream:\n  url: {}\ndefaults:\n{NO_BREAKER}  retry: {{ attempts: 1 }}\n  concurrency: {{ initial: 20, min: 2, max: 50 }}\n",
        backend.url()
    );
    let sidecar = Sidecar::start(&base).await;
    for _ in 0..3 {
        get(&sidecar.url("/r")).await;
    }
    // 20 × 0.9 × 0.9 × 0.9 = 14.58
    assert_eq!(limit(&sidecar.metrics().await, "default"), 14.0);
    support::opsrust::reload(&sidecar, &format!("{base}  timeout: 7s\n"));
    assert_eq!(
        limit(&sidecar.metrics().await, "default"),
        14.0,
        "an unrelated key changed: the learned limit stays"
    );
    get(&sidecar.url("/r")).await;
    assert_eq!(limit(&sidecar.metrics().await, "default"), 13.0);
    let changed = base.replace("max: 50", "max: 40");
    support::opsrust::reload(&sidecar, &changed);
    assert_eq!(
        limit(&sidecar.metrics().await, "default"),
        20.0,
        "new bounds start fresh"
    );
    let off = base.replace("  concurrency: { initial: 20, min: 2, max: 50 }\n", "");
    support::opsrust::reload(&sidecar, &off);
    let text = sidecar.metrics().await;
    assert!(!support::opsrust::has_series(
        &text,
        "outrigger_concurrency_limit",
        &[("route", "default")]
    ));
}
