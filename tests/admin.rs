//! The admin listener: health, liveness, readiness, metrics and the shutdown endpoint.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn health_reports_status_time_upstream_and_circuits() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let (status, headers, body) = get(&format!("http://{}/health", sidecar.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        body.starts_with(r#"{"status":"healthy","timestamp":""#),
        "{body}"
    );
    let ts = body.split('"').nth(7).unwrap();
    assert_eq!(ts.len(), 20, "RFC 3339 UTC second precision: {ts}");
    assert!(
        ts.ends_with('Z') && &ts[4..5] == "-" && &ts[10..11] == "T",
        "{ts}"
    );
    assert!(
        body.ends_with(r#""upstream":"unknown","circuits":{"default":"closed"}}"#),
        "{body}"
    );
}

#[tokio::test]
async fn live_and_ready_answer_200_while_serving() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    assert_eq!(
        get(&format!("http://{}/live", sidecar.admin)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("http://{}/ready", sidecar.admin)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("http://{}/nope", sidecar.admin)).await.0,
        StatusCode::NOT_FOUND
    );
    let post = Request::post(format!("http://{}/metrics", sidecar.admin))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(post).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_expose_every_family_of_this_stage() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503)]);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    get(&sidecar.url("/a")).await;
    let (status, headers, text) = get(&format!("http://{}/metrics", sidecar.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for family in [
        "outrigger_requests_total counter",
        "outrigger_request_duration_seconds histogram",
        "outrigger_upstream_attempts_total counter",
        "outrigger_upstream_attempt_duration_seconds histogram",
        "outrigger_retries_total counter",
        "outrigger_retried_requests_total counter",
        "outrigger_in_flight_requests gauge",
        "outrigger_shed_total counter",
        "outrigger_build_info gauge",
        "process_resident_memory_bytes gauge",
        "process_cpu_seconds_total counter",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "missing {family}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metric(&text, "outrigger_build_info", &[("version", version)]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[
                ("route", "default"),
                ("method", "GET"),
                ("code", "200"),
                ("outcome", "upstream")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "outrigger_upstream_attempts_total",
            &[("result", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "outrigger_upstream_attempts_total",
            &[("result", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "outrigger_upstream_attempt_duration_seconds_count",
            &[("route", "default")]
        ),
        2.0
    );
}

#[tokio::test]
async fn method_labels_stay_bounded() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    for m in ["BREW", "PROPFIND", "X-CUSTOM-1"] {
        let req = Request::builder()
            .method(m)
            .uri(sidecar.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(req).await;
    }
    let text = sidecar.metrics().await;
    assert_eq!(
        metric(&text, "outrigger_requests_total", &[("method", "other")]),
        3.0
    );
    assert!(!text.contains("BREW") && !text.contains("PROPFIND"));
}

#[tokio::test]
async fn post_shutdown_from_loopback_stops_the_app() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let get_shutdown = get(&format!("http://{}/shutdown", sidecar.admin)).await;
    assert_eq!(get_shutdown.0, StatusCode::METHOD_NOT_ALLOWED);
    assert!(sidecar.app.lifecycle.is_ready());
    let req = Request::post(format!("http://{}/shutdown", sidecar.admin))
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(!sidecar.app.lifecycle.is_ready());
    sidecar.stop().await;
}
