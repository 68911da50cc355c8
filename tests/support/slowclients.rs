//! Helpers for the slow-peer tests: an upstream whose one path never stops sending (and
//! notes when the proxy hangs up on it), a request body sent at a set pace, and an HTTP/2
//! client that never opens its receive window.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use super::within;

/// An HTTP/1.1 upstream: `GET /big` answers a 1 GiB body written as fast as the proxy
/// takes it; any other request gets `200 ok`.
pub struct EndlessUpstream {
    pub addr: SocketAddr,
    /// `/big` connections whose writes failed: the proxy let go of them.
    pub released: Arc<AtomicUsize>,
    /// `/big` answers begun.
    pub started: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EndlessUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndlessUpstream {
    pub async fn start() -> EndlessUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let released = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let (r, s) = (Arc::clone(&released), Arc::clone(&started));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&r), Arc::clone(&s)));
            }
        });
        EndlessUpstream {
            addr,
            released,
            started,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(stream: TcpStream, released: Arc<AtomicUsize>, started: Arc<AtomicUsize>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first).await.unwrap_or(0) == 0 {
            return;
        }
        let mut line = String::new();
        while reader.read_line(&mut line).await.unwrap_or(0) > 2 {
            line.clear();
        }
        let stream = reader.get_mut();
        if !first.starts_with("GET /big ") {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        started.fetch_add(1, Ordering::SeqCst);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n";
        let chunk = vec![b'x'; 64 << 10];
        let mut result = stream.write_all(head).await;
        while result.is_ok() {
            result = stream.write_all(&chunk).await;
        }
        released.fetch_add(1, Ordering::SeqCst);
        return;
    }
}

/// A request body of `total` bytes sent in `chunk`-byte pieces, one every `interval`;
/// after `stall_after` bytes (if any) it sends nothing more.
pub struct Paced {
    left: u64,
    total: u64,
    chunk: Bytes,
    interval: Duration,
    stall_after: Option<u64>,
    sleep: Pin<Box<Sleep>>,
}

impl Paced {
    pub fn new(total: u64, chunk: usize, interval: Duration, stall_after: Option<u64>) -> Paced {
        Paced {
            left: total,
            total,
            chunk: Bytes::from(vec![b'u'; chunk]),
            interval,
            stall_after,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let sent = self.total - self.left;
        if self.stall_after.is_some_and(|s| sent >= s) {
            return Poll::Pending;
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + self.interval;
        self.sleep.as_mut().reset(next);
        let n = (self.chunk.len() as u64).min(self.left) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// POSTs `body` to `url` over one new connection (HTTP/1.1, or HTTP/2 with prior
/// knowledge); the status, or `None` if the exchange failed. Bounded by `limit`.
pub async fn post(
    addr: SocketAddr,
    http2: bool,
    path: &str,
    body: Paced,
    limit: Duration,
) -> Option<StatusCode> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let req = Request::post(format!("http://{addr}{path}"))
            .body(body)
            .expect("request");
        let resp = if http2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            send.send_request(req).await.ok()?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .ok()?;
            tokio::spawn(conn);
            send.send_request(req).await.ok()?
        };
        Some(resp.status())
    };
    tokio::time::timeout(limit, exchange)
        .await
        .expect("upload timed out")
}

/// An HTTP/2 connection whose receive windows stay 0: response heads arrive, body bytes
/// never do. PINGs are still answered (the connection task runs).
pub async fn h2_zero_window(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = within(TcpStream::connect(addr)).await.expect("connect");
    let (send, conn) = within(
        h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp),
    )
    .await
    .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}
