//! A backend with a real capacity, for the concurrency limit (issue 15): it serves `slots`
//! requests at a time, each taking `service`, lets at most `2 × slots` wait, and answers
//! 503 at once to a request that finds that many waiting. Paths under `/4xx` answer 404 at
//! once (a client's fault, whatever the load).

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub struct Capacity {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: JoinHandle<()>,
}

pub struct Shared {
    slots: Semaphore,
    max_waiting: usize,
    waiting: AtomicUsize,
    service: Duration,
    /// Requests received, and how many of them were turned away with 503.
    pub received: AtomicUsize,
    pub refused: AtomicUsize,
    /// The most requests ever being served or waiting at once.
    pub peak: AtomicUsize,
}

impl Capacity {
    pub async fn start(slots: usize, service: Duration) -> Capacity {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            slots: Semaphore::new(slots),
            max_waiting: 2 * slots,
            waiting: AtomicUsize::new(0),
            service,
            received: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let handler = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = Arc::clone(&s);
                        async move { Ok::<_, Infallible>(s.handle(req.uri().path()).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        Capacity { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Capacity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    async fn handle(&self, path: &str) -> Response<Full<Bytes>> {
        self.received.fetch_add(1, Ordering::Relaxed);
        if path.starts_with("/4xx") {
            return answer(StatusCode::NOT_FOUND);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return answer(StatusCode::SERVICE_UNAVAILABLE);
        }
        let busy = self.max_waiting / 2 - self.slots.available_permits();
        self.peak.fetch_max(waiting + 1 + busy, Ordering::Relaxed);
        let permit = self.slots.acquire().await.unwrap();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        tokio::time::sleep(self.service).await;
        drop(permit);
        answer(StatusCode::OK)
    }
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("status {status}\n"))));
    *resp.status_mut() = status;
    resp
}
