//! The edge (the service around each request of a connection): a panic while serving one request becomes that
//! request's `500` JSON answer, counted in `outrigger_panics_total`; the connection and
//! the other requests carry on. Driven through the real accept loop on loopback.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use outrigger::config::{self, Overrides};
use outrigger::edge::OnPanic;
use outrigger::metrics::Metrics;
use outrigger::proxy::body::ResponseBody;
use outrigger::server::accept::{self, Handler};
use outrigger::server::drain::Drain;
use support::*;
use tokio::net::TcpListener;

async fn answer(req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    if req.uri().path() == "/boom" {
        panic!("a handler bug");
    }
    Ok(Response::new(ResponseBody::full("fine")))
}

#[tokio::test]
async fn a_panicking_request_is_answered_500_and_the_connection_carries_on() {
    let config = config::from_text(
        "upstream:\n  url: http://127.0.0.1:1\n",
        None,
        &Overrides::default(),
    )
    .unwrap();
    let metrics = std::sync::Arc::new(Metrics::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Handler {
        make: |_peer| hyper::service::service_fn(answer),
        on_panic: OnPanic::new(&metrics, "proxy"),
    };
    let builder = accept::builder(&config.limits);
    let server = tokio::spawn(async move {
        let drain = Drain::default();
        accept::serve(
            listener,
            builder,
            Duration::from_secs(5),
            handler,
            &drain,
            std::future::pending(),
        )
        .await;
    });

    // Two requests on one keep-alive connection: the first panics, the second is served.
    let answers = raw(
        addr,
        b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    let (first, second) = answers
        .split_once("HTTP/1.1 200")
        .unwrap_or_else(|| panic!("no second answer on the connection: {answers}"));
    assert!(first.starts_with("HTTP/1.1 500"), "{answers}");
    assert!(
        first.contains("content-type: application/json"),
        "{answers}"
    );
    assert!(first.contains(r#"{"error":"internal error"}"#), "{answers}");
    assert!(second.ends_with("fine"), "{answers}");

    // Another connection is served as usual.
    let (status, _, body) = get(&format!("http://{addr}/other")).await;
    assert_eq!((status, body.as_str()), (http::StatusCode::OK, "fine"));
    let text = String::from_utf8(metrics.render()).unwrap();
    assert_eq!(metric(&text, "outrigger_panics_total", &[]), 1.0, "{text}");
    server.abort();
}
