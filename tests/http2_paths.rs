//! Two paths of the request that only an HTTP/2 upstream takes together with another
//! feature, each built in its own box (issue 17): a hedge whose winner carries trailers
//! (the loser's stream is reset), and a streamed upload sent through `send_streaming`.
//! The backend is a real h2c server on loopback.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use support::*;
use tokio::net::TcpListener;

/// h2c backend: stream 1 never answers and records whether it was reset; later streams
/// read the body, answer 200 with `body-len:N` and `grpc-status: 0` trailers.
async fn h2_first_stalls() -> (String, Arc<AtomicUsize>, Arc<Mutex<Option<bool>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let streams = Arc::new(AtomicUsize::new(0));
    let reset = Arc::new(Mutex::new(None));
    let (s2, r2) = (Arc::clone(&streams), Arc::clone(&reset));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (streams, reset) = (Arc::clone(&s2), Arc::clone(&r2));
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let n = streams.fetch_add(1, Ordering::SeqCst);
                    let reset = Arc::clone(&reset);
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut len = 0usize;
                        while let Some(Ok(chunk)) = body.data().await {
                            len += chunk.len();
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        if n == 0 {
                            let was_reset = tokio::time::timeout(
                                Duration::from_secs(3),
                                std::future::poll_fn(|cx| respond.poll_reset(cx)),
                            )
                            .await
                            .is_ok();
                            *reset.lock().unwrap() = Some(was_reset);
                            return;
                        }
                        let resp = Response::builder().status(200).body(()).unwrap();
                        let mut stream = respond.send_response(resp, false).unwrap();
                        let _ = stream.send_data(Bytes::from(format!("body-len:{len}")), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = stream.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (url, streams, reset)
}

async fn collect_with_trailers(
    resp: Response<hyper::body::Incoming>,
) -> (StatusCode, http::HeaderMap, String, Option<http::HeaderMap>) {
    let (parts, body) = resp.into_parts();
    let collected = within(body.collect()).await.expect("body");
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
        trailers,
    )
}

#[tokio::test]
async fn a_hedge_over_http2_wins_with_its_trailers_and_the_loser_stream_is_reset() {
    let (url, streams, reset) = h2_first_stalls().await;
    let yaml = format!(
        "upstream:\n  url: {url}\n  http2: true\ndefaults:\n  hedge: {{ delay: 50ms, max_ratio: 1.0 }}\n"
    );
    let sidecar = Sidecar::start(&yaml).await;
    let req = Request::get(sidecar.url("/h"))
        .header("te", "trailers")
        .body(http_body_util::Full::<Bytes>::default())
        .unwrap();
    let resp = within(h2_client().request(req)).await.unwrap();
    let (status, headers, body, trailers) = collect_with_trailers(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "body-len:0");
    assert_eq!(headers["x-outrigger-attempts"], "2");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    eventually(|| reset.lock().unwrap().is_some()).await;
    assert_eq!(*reset.lock().unwrap(), Some(true), "loser's stream reset");
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_hedges_total", &[("result", "won")]),
        1.0
    );
}

#[tokio::test]
async fn a_streamed_upload_over_http2_gets_its_answer_and_trailers() {
    let (url, streams, _) = h2_first_stalls().await;
    // Stream 0 stalls: spend it on a throwaway GET with a short timeout first.
    let yaml = format!(
        "upstream:\n  url: {url}\n  http2: true\nlimits:\n  request_body_buffer: 1KiB\ndefaults:\n  timeout: 5s\n  retry: {{ attempts: 1, per_try_timeout: 300ms }}\n"
    );
    let sidecar = Sidecar::start(&yaml).await;
    let (status, _, _) = get(&sidecar.url("/burn")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // A 200 KB upload from an HTTP/2 client, in pieces and without a content-length: more
    // than `request_body_buffer`, so it is streamed to the upstream as it arrives.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..50)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; 4096]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<StreamBody<_>>();
    let req = Request::post(sidecar.url("/up"))
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = within(client.request(req)).await.unwrap();
    let (status, headers, body, trailers) = collect_with_trailers(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "body-len:204800");
    assert_eq!(headers["x-outrigger-attempts"], "1");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(streams.load(Ordering::SeqCst), 2);
}
