//! A bare h2c server that answers every call trailers-only `grpc-status: 0` after a delay,
//! and records each request's headers. Unlike tonic's server it ignores `grpc-timeout`, so a
//! test can tell the proxy's deadline from the server's.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The server and the request headers it saw.
pub struct RawServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
}

/// Starts the server: every call answered after `delay`.
pub async fn slow_h2c(delay: Duration) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                record.lock().unwrap().push(req.headers().clone());
                async move {
                    tokio::time::sleep(delay).await;
                    let resp = Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    RawServer { addr, seen }
}
