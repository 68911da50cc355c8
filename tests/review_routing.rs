//! Review defects in routing and rate policy: a path spelled differently still takes its
//! route (and its rate limit) and reaches the upstream unchanged; a rate too small to
//! compute with is refused at load; an oversized `Retry-After` ends the retries.

mod support;

use http::StatusCode;
use support::process::run;
use support::*;

/// Sends `GET {target}` exactly as written (no client normalises it) and returns the status.
async fn status_for_raw_target(sidecar: &Sidecar, target: &str) -> u16 {
    let request = format!("GET {target} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    let answer = raw(sidecar.addr, request.as_bytes(), LIMIT).await;
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {answer:?}"))
}

/// Path parameters too (`;x`, and `..;` as servlet containers read it): an attack review
/// escaped a route's rate limit with `/strict;a/x`.
const SPELLINGS: [&str; 6] = [
    "/./quotes",
    "//quotes",
    "/%71uotes",
    "/x/../quotes",
    "/quotes;x",
    "/x/..;/quotes",
];

#[tokio::test]
async fn other_spellings_of_a_path_do_not_escape_its_rate_limit() {
    let backend = Backend::start().await;
    let yaml = "routes:\n  - name: quotes\n    match: { path_prefix: /quotes }\n    rate_limit: { rate: 1/m, burst: 1 }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    assert_eq!(status_for_raw_target(&sidecar, "/quotes").await, 200);
    for target in SPELLINGS {
        assert_eq!(
            status_for_raw_target(&sidecar, target).await,
            429,
            "{target} is /quotes and its token is spent"
        );
    }
    assert_eq!(
        backend.count(),
        1,
        "only the first request reached the upstream"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_rate_limited_total", &[("route", "quotes")]),
        6.0
    );
}

#[tokio::test]
async fn a_path_takes_its_route_by_its_normal_form_and_is_forwarded_as_written() {
    let backend = Backend::start().await;
    let yaml = "routes:\n  - name: quotes\n    match: { path: /quotes }\n  - name: home\n    match: { path_prefix: /~user }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    for target in SPELLINGS.into_iter().chain(["/%7euser/a", "/%2e/quotes/a"]) {
        assert_eq!(
            status_for_raw_target(&sidecar, target).await,
            200,
            "{target}"
        );
    }
    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        SPELLINGS
            .into_iter()
            .chain(["/%7euser/a", "/%2e/quotes/a"])
            .collect::<Vec<_>>(),
        "the upstream sees each path exactly as the client wrote it"
    );
    let m = sidecar.metrics().await;
    let requests = |route| metric(&m, "outrigger_requests_total", &[("route", route)]);
    assert_eq!(requests("quotes"), 6.0, "{m}");
    assert_eq!(requests("home"), 1.0);
    assert_eq!(
        requests("default"),
        1.0,
        "/quotes/a is not the exact path /quotes"
    );
}

#[test]
fn a_rate_too_small_to_compute_with_is_refused_at_load() {
    let path = temp_file(
        "tiny-rate.yaml",
        "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - name: quotes\n    rate_limit:\n      rate: 1e-20/s\n",
    );
    let out = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:6:7: routes[0].rate_limit.rate: `1e-20/s` is less than the smallest rate, 1/h",
        path.display()
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[tokio::test]
async fn an_oversized_retry_after_ends_the_retries() {
    let backend = Backend::start().await;
    backend.set_default(Action::Respond {
        status: 503,
        headers: vec![("retry-after".into(), "99999999999999999999".into())],
        body: b"maintenance".to_vec(),
    });
    let yaml = "defaults:\n  timeout: 10s\n  retry: { attempts: 3, backoff: { base: 5ms, max: 20ms, jitter: none } }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let (status, headers, body) = get(&sidecar.url("/ra-huge")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "maintenance")
    );
    assert_eq!(headers["retry-after"], "99999999999999999999");
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(backend.count(), 1, "not retried");
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
