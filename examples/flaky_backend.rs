//! A scriptable flaky backend for `bench/retry-harness.sh` (issue 14).
//!
//! Every request answers `200 ok`, except that a random `fail` percent answer `503` and a
//! random `slow` percent wait `slow_ms` first. The mode changes at run time through
//! `GET /_mode?fail=20&slow=0&slow_ms=300` (answered 204), and `GET /_count` tells how
//! many other requests arrived so far: the harness reads it before and after each phase
//! to count upstream requests per client request. Control requests are not counted.
//!
//! `cargo run --release --example flaky_backend -- 127.0.0.1:18181`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Mode {
    fail: AtomicU64,
    slow: AtomicU64,
    slow_ms: AtomicU64,
    count: AtomicU64,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

fn set_mode(mode: &Mode, query: &str) {
    for pair in query.split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match k {
            "fail" => mode.fail.store(v, Ordering::Relaxed),
            "slow" => mode.slow.store(v, Ordering::Relaxed),
            "slow_ms" => mode.slow_ms.store(v, Ordering::Relaxed),
            _ => {}
        }
    }
}

async fn serve(
    mode: Arc<Mode>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/_mode" => {
            set_mode(&mode, req.uri().query().unwrap_or(""));
            return Ok(reply(StatusCode::NO_CONTENT, ""));
        }
        "/_count" => {
            let n = mode.count.load(Ordering::Relaxed);
            return Ok(reply(StatusCode::OK, n.to_string()));
        }
        _ => {}
    }
    mode.count.fetch_add(1, Ordering::Relaxed);
    if fastrand::u64(0..100) < mode.slow.load(Ordering::Relaxed) {
        let ms = mode.slow_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fastrand::u64(0..100) < mode.fail.load(Ordering::Relaxed) {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    }
    Ok(reply(StatusCode::OK, "ok"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18181".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    let mode = Arc::new(Mode::default());
    mode.slow_ms.store(300, Ordering::Relaxed);
    loop {
        let (stream, _) = listener.accept().await?;
        let mode = Arc::clone(&mode);
        tokio::spawn(async move {
            let svc = service_fn(move |req| serve(Arc::clone(&mode), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
