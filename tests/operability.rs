//! Operating outrigger: metrics that follow reloads (no series for a health check or a
//! route that is gone, no stale breaker writing the gauge, reload counters from the start)
//! and `outrigger probe`, the health check for images without curl.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::opsrust::{has_series, reload};
use support::*;

#[tokio::test]
async fn reload_counters_are_exported_at_zero_from_the_start() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let m = sidecar.metrics().await;
    for result in ["success", "failure"] {
        let labels = [("result", result)];
        assert!(
            has_series(&m, "outrigger_config_reloads_total", &labels),
            "{result} missing:\n{m}"
        );
        assert_eq!(metric(&m, "outrigger_config_reloads_total", &labels), 0.0);
    }
}

#[tokio::test]
async fn upstream_up_goes_when_a_reload_removes_the_health_check() {
    let backend = Backend::start().await;
    backend.on_path("/healthz", Action::Status(503));
    let base = format!("upstream:\n  url: {}\n", backend.url());
    let check = "  health_check: { path: /healthz, interval: 30ms, unhealthy_threshold: 1 }\n";
    let sidecar = Sidecar::start(&format!("{base}{check}")).await;
    let admin = sidecar.admin;
    within(async {
        while !has_series(&sidecar.metrics().await, "outrigger_upstream_up", &[]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        metric(&sidecar.metrics().await, "outrigger_upstream_up", &[]),
        0.0
    );

    reload(&sidecar, &base);
    // Absent at once and for good: a probe that was in flight must not bring it back.
    for _ in 0..10 {
        let m = sidecar.metrics().await;
        assert!(!has_series(&m, "outrigger_upstream_up", &[]), "{m}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (status, _, body) = get(&format!("http://{admin}/health")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn breaker_yaml(backend: &Backend, route: &str, open_duration: &str) -> String {
    format!(
        "upstream:\n  url: {}\nroutes:\n  - name: {route}\n    match: {{ path_prefix: /f }}\n    retry: {{ attempts: 1 }}\n    circuit_breaker: {{ min_requests: 2, failure_ratio: 0.5, open_duration: {open_duration} }}\n",
        backend.url()
    )
}

#[tokio::test]
async fn a_breaker_replaced_by_a_reload_does_not_write_the_gauge() {
    let backend = Backend::start().await;
    let slow_failure = Action::Delay(Duration::from_millis(400), Box::new(Action::Status(503)));
    backend.set_default(slow_failure);
    let sidecar = Sidecar::start(&breaker_yaml(&backend, "fails", "30s")).await;
    let url = sidecar.url("/f");
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.0 })
        })
        .collect();
    eventually(|| backend.count() == 2).await;
    // A new breaker policy: the two requests in flight still report to the old breaker.
    reload(&sidecar, &breaker_yaml(&backend, "fails", "20s"));
    for task in in_flight {
        assert_eq!(within(task).await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_circuit_state", &[("route", "fails")]),
        0.0,
        "the live breaker is closed:\n{m}"
    );
    let (_, _, health) = get(&format!("http://{}/health", sidecar.admin)).await;
    assert!(health.contains(r#""fails":"closed""#), "{health}");
}

#[tokio::test]
async fn series_of_a_renamed_route_go_after_a_reload() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let sidecar = Sidecar::start(&breaker_yaml(&backend, "fails", "30s")).await;
    for _ in 0..2 {
        assert_eq!(
            get(&sidecar.url("/f")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_circuit_state", &[("route", "fails")]),
        2.0
    );

    reload(&sidecar, &breaker_yaml(&backend, "renamed", "30s"));
    let m = sidecar.metrics().await;
    assert!(
        !has_series(&m, "outrigger_circuit_state", &[("route", "fails")]),
        "{m}"
    );
    assert!(has_series(
        &m,
        "outrigger_circuit_state",
        &[("route", "renamed")]
    ));
}

/// Runs `outrigger probe ARGS` (the real binary) off the runtime; (exit code, stderr).
async fn probe(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = ["probe"]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    let out = within(tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        process::run(&args, &[])
    }))
    .await
    .expect("probe ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_0_when_ready_and_1_while_draining() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "shutdown: { drain_delay: 5s }\n").await;
    let ready = format!("http://{}/ready", sidecar.admin);
    assert_eq!(probe(&[&ready]).await, (Some(0), String::new()));

    sidecar.app.lifecycle.begin_shutdown();
    let (code, stderr) = probe(&[&ready]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("probe: ") && stderr.contains("503"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Still serving meanwhile: /live answers, so the probe of /live still passes.
    let live = format!("http://{}/live", sidecar.admin);
    assert_eq!(probe(&[&live]).await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_1_when_nothing_listens_or_nothing_answers() {
    let port = process::free_port();
    let (code, stderr) = probe(&[&format!("http://127.0.0.1:{port}/ready")]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // Accepts and never answers: the probe gives up after --timeout, not after minutes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ready", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let (code, stderr) = probe(&["--timeout", "300ms", &url]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no answer within 300ms"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();

    let (code, _) = probe(&["https://127.0.0.1:1/ready"]).await;
    assert_eq!(
        code,
        Some(2),
        "a URL that cannot be probed is a usage error"
    );
}

/// The route and limits of the shipped ConfigMap (deploy/kubernetes/common/configmap.yaml)
/// as the issue found them: a 64 MiB stale store and the default limits.
const SHIPPED: &str = "upstream: { url: 'http://127.0.0.1:3000' }\nroutes:\n  - name: api\n    match: { path_prefix: /api }\n    stale_if_error: { max_age: 5m }\n";

#[test]
fn check_warns_when_the_bounds_exceed_the_memory_limit() {
    let path = temp_file("outrigger.yaml", SHIPPED);
    let path = path.to_str().unwrap();
    let out = process::run(&["check", "--config", path, "--memory-limit", "128Mi"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {stderr}"
    );
    assert!(stderr.starts_with("warning: memory:"), "{stderr}");
    assert!(
        stderr.contains("the limit is 128 MiB (--memory-limit)"),
        "{stderr}"
    );

    // Sized together (README, Memory): no warning.
    let sized = format!(
        "{}      max_bytes: 8MiB\nlimits: {{ max_concurrent_requests: 64 }}\n",
        SHIPPED.replace("{ max_age: 5m }", "\n      max_age: 5m")
    );
    let path = temp_file("outrigger.yaml", &sized);
    let out = process::run(
        &[
            "check",
            "--config",
            path.to_str().unwrap(),
            "--memory-limit",
            "128Mi",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn check_refuses_a_memory_limit_that_is_not_a_size() {
    let path = temp_file("outrigger.yaml", SHIPPED);
    let out = process::run(
        &[
            "check",
            "--config",
            path.to_str().unwrap(),
            "--memory-limit",
            "lots",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "a usage error");
}
