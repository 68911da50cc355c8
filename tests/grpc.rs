//! gRPC through the sidecar (SPEC §7.7).

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

/// gRPC servers refuse a call without `te: trailers`. `TE` is hop-by-hop, so the proxy
/// strips it, and then puts back that one value (and nothing else of `TE`) when the client
/// offered it, over HTTP/1.1 (where `Connection: te` names it) and HTTP/2 alike.
#[tokio::test]
async fn te_trailers_and_nothing_else_of_te_reaches_the_upstream() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    // HTTP/2 allows `trailers` alone in `TE`.
    for offered in [Some("trailers"), None] {
        let mut req = Request::post(sidecar.url("/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc");
        if let Some(te) = offered {
            req = req.header("te", te);
        }
        let resp = within(h2_client().request(req.body(Full::default()).unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // HTTP/1.1 may offer codings beside it.
    for offered in ["gzip;q=0.5, Trailers", "gzip"] {
        let request = format!("POST /h1 HTTP/1.1\r\nhost: x\r\nte: {offered}\r\nconnection: te, close\r\ncontent-length: 0\r\n\r\n");
        let answer = raw(sidecar.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seen = backend.received();
    let te: Vec<Vec<&str>> = seen.iter().map(|r| r.headers_named("te")).collect();
    assert_eq!(te, [vec!["trailers"], vec![], vec!["trailers"], vec![]]);
}
