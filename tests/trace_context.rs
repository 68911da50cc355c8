//! W3C trace context (SPEC §7.5): `traceparent` and `tracestate` reach the upstream on
//! every attempt, tracing configured or not.

mod support;

use support::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

#[tokio::test]
async fn trace_context_reaches_the_upstream_on_every_attempt_with_tracing_off() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503)]);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let req = get_with(
        &sidecar.url("/a"),
        &[("traceparent", PARENT), ("tracestate", STATE)],
    );
    let (status, headers, _) = send(req).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(headers["x-outrigger-attempts"], "2");
    let seen = backend.received();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.header("traceparent"), Some(PARENT));
        assert_eq!(r.header("tracestate"), Some(STATE));
    }
}
