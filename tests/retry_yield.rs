//! SPEC §7.1 through the real server: the adaptive retry budget masks random failures,
//! shrinks to probes in an outage and opens up again when the backend recovers. The
//! figures are the SPEC table's, asserted loosely; `bench/retry-harness.sh` measures them
//! exactly at a fixed request rate.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::*;

/// Product defaults (adaptive budget, default backoff) with the breaker off, as SPEC §7.1
/// measures them.
const DEFAULTS_BREAKER_OFF: &str = "defaults:\n  circuit_breaker: { enabled: false }\n";

/// Sends `n` GETs, `concurrency` at a time; returns how many got 200.
async fn drive(sidecar: &Sidecar, n: usize, concurrency: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, ok, url) = (Arc::clone(&next), Arc::clone(&ok), sidecar.url("/item"));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                if get(&url).await.0 == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        within(t).await.expect("driver task");
    }
    ok.load(Ordering::Relaxed)
}

fn flaky(backend: &Backend, n: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    backend.script((0..n).map(|_| {
        if rng.u8(0..100) < 20 {
            Action::Status(503)
        } else {
            Action::Status(200)
        }
    }));
}

#[tokio::test]
async fn twenty_percent_random_503_is_masked_at_little_extra_load() {
    let backend = Backend::start().await;
    flaky(&backend, 4000, 11);
    let sidecar = Sidecar::in_front_of(&backend, DEFAULTS_BREAKER_OFF).await;
    let ok = drive(&sidecar, 1000, 20).await;
    let upstream = backend.count() as f64 / 1000.0;
    assert!(ok >= 980, "{ok}/1000 succeeded");
    assert!(
        upstream <= 1.3,
        "{upstream} upstream requests per client request"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "outrigger_retries_skipped_total",
            &[("reason", "budget")]
        ),
        0.0,
        "under random flakiness every retry attempts allows goes through"
    );
    let y = metric(&m, "outrigger_retry_yield", &[("route", "default")]);
    assert!((0.6..=0.95).contains(&y), "retry yield {y}");
}

#[tokio::test]
async fn a_full_outage_costs_at_most_five_percent_more_load() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::in_front_of(&backend, DEFAULTS_BREAKER_OFF).await;
    let ok = drive(&sidecar, 600, 10).await;
    assert_eq!(ok, 0);
    let upstream = backend.count() as f64 / 600.0;
    assert!(
        upstream <= 1.05,
        "{upstream} upstream requests per client request, warm-up included"
    );
    let m = sidecar.metrics().await;
    assert!(
        metric(&m, "outrigger_retries_total", &[]) >= 1.0,
        "a trickle of probes keeps measuring"
    );
    let y = metric(&m, "outrigger_retry_yield", &[("route", "default")]);
    assert!(y < 0.2, "retry yield {y} in an outage");
}

#[tokio::test]
async fn retries_come_back_when_the_backend_recovers() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::in_front_of(&backend, DEFAULTS_BREAKER_OFF).await;
    let outage = paced(&sidecar, 200, Duration::from_millis(1500)).await;
    assert!(outage.iter().all(|(_, ok)| !ok));
    let during = backend.count() as f64 / outage.len() as f64;
    assert!(
        during <= 1.05,
        "{during} upstream per client request in the outage"
    );
    // Flaky again (20% random 503): the outage's failures are still in the window, but the
    // probes that succeed open the budget up.
    backend.set_default(Action::Status(200));
    flaky(&backend, 8000, 3);
    // SPEC §7.1: back within one window (10 s). The yield climbs as probes (one a second)
    // and then the retries they let through succeed; 4 s was seen to be too short for that
    // on a loaded machine (379/401 in seconds 2-4), so the check is seconds 6-8.
    let recovery = paced(&sidecar, 200, Duration::from_secs(8)).await;
    let late: Vec<bool> = recovery
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(6))
        .map(|(_, ok)| *ok)
        .collect();
    let ok = late.iter().filter(|ok| **ok).count();
    assert!(
        ok as f64 >= 0.97 * late.len() as f64,
        "{ok}/{} in the last 2 s of 8 after the outage",
        late.len()
    );
}

/// Sends GETs at `rate` per second for `span` (open loop: one every 1/rate, whether or not
/// earlier ones answered); returns when each was sent and whether it got 200.
async fn paced(sidecar: &Sidecar, rate: u32, span: Duration) -> Vec<(Duration, bool)> {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sent = Vec::new();
    while start.elapsed() < span {
        tick.tick().await;
        let (url, at) = (sidecar.url("/item"), start.elapsed());
        sent.push(tokio::spawn(async move {
            (at, get(&url).await.0 == StatusCode::OK)
        }));
    }
    let mut out = Vec::new();
    for s in sent {
        out.push(within(s).await.expect("request task"));
    }
    out
}

#[tokio::test]
async fn adaptive_false_keeps_the_static_twenty_percent() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = "defaults:\n  retry: { budget: { min_per_second: 0, adaptive: false } }\n  circuit_breaker: { enabled: false }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    drive(&sidecar, 400, 10).await;
    let upstream = backend.count() as f64 / 400.0;
    assert!(
        (1.15..=1.2).contains(&upstream),
        "{upstream}: ratio 0.2 of first attempts"
    );
    let m = sidecar.metrics().await;
    assert!(
        !m.contains("outrigger_retry_yield{"),
        "no yield for a static budget"
    );
}
