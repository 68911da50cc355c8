//! Privacy defects found by review: a copy filed under one client's key must never reach
//! another. Keys and `Vary` values are read from the head the upstream received.

mod support;

use support::{get_with, send, Action, Backend, Sidecar};

fn respond(body: &str, headers: &[(&str, &str)]) -> Action {
    Action::Respond {
        status: 200,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn a_key_header_named_in_connection_does_not_poison_that_keys_cache() {
    let backend = Backend::start().await;
    backend.script([respond("for nobody", &[]), respond("for acme", &[])]);
    let yaml = "defaults:\n  cache: { ttl: 60s }\n  stale_if_error: { key_headers: [x-tenant] }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let url = sidecar.url("/report");

    let hidden = [("x-tenant", "acme"), ("connection", "x-tenant")];
    let (_, _, body) = send(get_with(&url, &hidden)).await;
    assert_eq!(body, "for nobody");
    assert_eq!(
        backend.received()[0].header("x-tenant"),
        None,
        "the upstream never saw the tenant"
    );

    let (_, headers, body) = send(get_with(&url, &[("x-tenant", "acme")])).await;
    assert_eq!(body, "for acme", "acme got the answer meant for no tenant");
    assert!(headers.get("x-outrigger-cache").is_none());
    assert_eq!(backend.count(), 2);
}

#[tokio::test]
async fn vary_on_a_header_the_proxy_sets_compares_what_the_upstream_saw() {
    let backend = Backend::start().await;
    backend.set_default(respond(
        "private to 127.0.0.1",
        &[("vary", "x-forwarded-for")],
    ));
    let sidecar = Sidecar::in_front_of(&backend, "defaults:\n  cache: { ttl: 60s }\n").await;
    let url = sidecar.url("/me");

    assert_eq!(send(get_with(&url, &[])).await.2, "private to 127.0.0.1");
    assert_eq!(
        backend.received()[0].header("x-forwarded-for"),
        Some("127.0.0.1")
    );
    let (_, headers, _) = send(get_with(&url, &[])).await;
    assert_eq!(
        headers
            .get("x-outrigger-cache")
            .map(|v| v.to_str().unwrap()),
        Some("hit"),
        "the same client's repeat is served from the cache"
    );

    backend.set_default(respond("fresh", &[]));
    let spoofed = [("x-forwarded-for", "127.0.0.1")];
    let (_, headers, body) = send(get_with(&url, &spoofed)).await;
    assert_eq!(body, "fresh", "a client claiming the address got its copy");
    assert!(headers.get("x-outrigger-cache").is_none());
}

#[tokio::test]
async fn vary_matches_every_line_of_a_repeated_header() {
    let backend = Backend::start().await;
    backend.set_default(respond("acme only", &[("vary", "x-tenant")]));
    let sidecar = Sidecar::in_front_of(&backend, "defaults:\n  cache: { ttl: 60s }\n").await;
    let url = sidecar.url("/data");

    assert_eq!(
        send(get_with(&url, &[("x-tenant", "acme")])).await.2,
        "acme only"
    );
    backend.set_default(respond("two tenants", &[]));
    let both = [("x-tenant", "acme"), ("x-tenant", "globex")];
    let (_, headers, body) = send(get_with(&url, &both)).await;
    assert_eq!(body, "two tenants", "a second line was ignored");
    assert!(headers.get("x-outrigger-cache").is_none());
}

#[tokio::test]
async fn a_match_header_named_in_connection_does_not_pick_that_routes_cache() {
    let backend = Backend::start().await;
    backend.script([respond("for nobody", &[]), respond("for acme", &[])]);
    let yaml =
        "routes:\n  - name: acme\n    match: { path_prefix: /, headers: { x-tenant: acme } }\n    \
                cache: { ttl: 60s }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    let url = sidecar.url("/report");

    let hidden = [("x-tenant", "acme"), ("connection", "x-tenant")];
    assert_eq!(send(get_with(&url, &hidden)).await.2, "for nobody");

    let (_, headers, body) = send(get_with(&url, &[("x-tenant", "acme")])).await;
    assert_eq!(body, "for acme", "acme got the answer meant for no tenant");
    assert!(headers.get("x-outrigger-cache").is_none());
}
