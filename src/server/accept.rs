//! The accept loop both listeners share: one task per connection, HTTP/1.1 and h2c on the
//! same port, every connection told to leave when its listener drains (`drain`).
//!
//! Connection-level limits live here, so a slow or hostile client can only ever hurt its
//! own connection: `header_read_timeout` (slowloris), the header size limit (431), and a malformed request (hyper answers 400 and closes that connection).
//! `send_timeout` and `idle_timeout` are kept by the connection's watchdog: a client that
//! stops reading is cut off (its responses dropped, which frees their in-flight slots and
//! upstream connections), and a keep-alive connection with no request is closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tracing::{debug, warn};

use super::drain::{told_to_leave, Drain};
use super::keep_alive;
use super::watchdog::{Clock, Expiry, Watched};
use crate::config::Limits;

/// How many header fields an HTTP/1.1 head may have, in requests and in upstream answers:
/// one per 32 bytes of `limits.max_request_header_bytes`, at least hyper's default of 100
/// and at most 1,024 (hyper parses into arrays of this many entries, 32 bytes each).
pub fn header_cap(limits: &Limits) -> usize {
    limits.header_cap()
}

/// How every connection of a listener is served: hyper's builder and the watchdog's limits.
pub struct Builder {
    http: auto::Builder<TokioExecutor>,
    send_timeout: Duration,
    idle_timeout: Duration,
}

/// An HTTP/1.1 + h2c connection builder with the configured limits.
pub fn builder(limits: &Limits) -> Builder {
    Builder {
        http: http_builder(limits),
        send_timeout: limits.send_timeout,
        idle_timeout: limits.idle_timeout,
    }
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        .max_headers(header_cap(limits))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // A silent HTTP/2 peer is noticed and dropped instead of held forever.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Accepts connections until `stop` resolves, serving each with `handler`.
///
/// Returns once the listener is closed; connections already accepted go on, each told to
/// leave once `drain` begins (which may be before `stop`).
pub async fn serve<H, S, B, P>(
    listener: TcpListener,
    builder: Builder,
    first_bytes: Duration,
    handler: Handler<H, P>,
    drain: &Drain,
    stop: impl Future<Output = ()>,
) where
    H: Fn(SocketAddr) -> S + Clone + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Watched + Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    P: ResponseForPanic<ResponseBody = B> + Send + Sync + 'static,
{
    let builder = Arc::new(builder);
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop, if !stopping => {
                // Serve what the kernel already queued before closing the listener:
                // closing would reset those connections although clients sent on them.
                stopping = true;
                continue;
            }
            () = std::future::ready(()), if stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            stream,
            peer,
            builder: Arc::clone(&builder),
            // Taken here, not in the task: the drain waits for this connection from now on.
            leave: drain.watch(),
        };
        tokio::spawn(conn.serve(handler.clone(), first_bytes));
    }
}

/// What serves the requests of a listener: `make` builds the `tower::Service` for the
/// connection from a peer address, `on_panic` answers a request whose serving panicked.
pub struct Handler<H, P> {
    pub make: H,
    pub on_panic: P,
}

impl<H: Clone, P: Clone> Clone for Handler<H, P> {
    fn clone(&self) -> Self {
        Handler {
            make: self.make.clone(),
            on_panic: self.on_panic.clone(),
        }
    }
}

/// One accepted connection, before it is served.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<Builder>,
    /// Says when to leave; held until the connection is closed.
    leave: watch::Receiver<bool>,
}

impl Connection {
    /// Serves requests until the client leaves or is told to.
    async fn serve<H, S, B, P>(self, handler: Handler<H, P>, first_bytes: Duration)
    where
        H: Fn(SocketAddr) -> S + Clone + Send + Sync + 'static,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Watched + Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
        P: ResponseForPanic<ResponseBody = B> + Send + Sync + 'static,
    {
        let Connection {
            stream,
            peer,
            builder,
            mut leave,
        } = self;
        if !protocol_known_within(&stream, first_bytes).await {
            debug!(peer = %peer, "connection closed: no request bytes in time");
            return;
        }
        let clock = Clock::new();
        let draining = leave.clone();
        let requests = Arc::clone(&clock);
        let inner = (handler.make)(peer);
        let service = tower::service_fn(move |req| {
            // Counted from here: a request in its handler is not idle.
            let active = requests.start();
            // Only an HTTP/1.0 keep-alive request pays for the clone (no allocation).
            let keep = keep_alive::http10_asked(&req).then(|| draining.clone());
            // Boxed: hyper keeps room for one request future in every connection, so an
            // inline future would cost its full size per idle keep-alive connection.
            let response = Box::pin(inner.clone().oneshot(req));
            async move {
                let Ok(mut response) = response.await;
                if keep.is_some_and(|draining| !*draining.borrow()) {
                    keep_alive::confirm(&mut response);
                }
                Ok::<_, Infallible>(response.map(|body| body.sending(active)))
            }
        });
        // Outermost, so a panic anywhere in serving one request (the handler or the
        // bookkeeping above) becomes that request's answer; the connection carries on.
        let service = ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(handler.on_panic.clone()))
            .service(service);
        let conn = builder.http.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        let mut leaving = false;
        let result = loop {
            // Biased: the connection is polled before it can be told to leave, so one
            // accepted during the drain has read its first request (its bytes are already
            // here) and answers it before leaving; a graceful shutdown while hyper-util
            // still sniffs the protocol would drop it unanswered.
            let idle = (!leaving).then_some(builder.idle_timeout);
            tokio::select! {
                biased;
                result = conn.as_mut() => break result,
                () = told_to_leave(&mut leave), if !leaving => {
                    // HTTP/1: `Connection: close` on the answer in progress, or closed now
                    // if idle. HTTP/2: GOAWAY, streams already opened still finish.
                    leaving = true;
                    conn.as_mut().graceful_shutdown();
                }
                expiry = clock.expired(builder.send_timeout, idle) => {
                    if expiry == Expiry::Send {
                        // Dropping the connection drops its responses: their in-flight
                        // slots and upstream connections are released.
                        debug!(peer = %peer, "connection cut: the client took no response bytes within send_timeout");
                        return;
                    }
                    debug!(peer = %peer, "connection closed: idle for idle_timeout");
                    leaving = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            debug!(peer = %peer, error = %e, "connection ended with an error");
        }
    }
}

/// Waits until the client has sent enough bytes to tell HTTP/1 from the HTTP/2 preface.
///
/// hyper-util's protocol sniffing has no timeout of its own and `header_read_timeout`
/// starts only once HTTP/1 is chosen, so without this a client that sends a few bytes and
/// stops would hold its connection forever.
///
/// A partial preface waits for the socket to become readable again, never on a timer:
/// a thousand clients that send `PRI * HTTP/2` and stop cost nothing until they send more.
async fn protocol_known_within(stream: &TcpStream, limit: Duration) -> bool {
    let wait = async {
        loop {
            if stream.readable().await.is_err() {
                return false;
            }
            // The peek runs inside `try_io`, so readiness is cleared only if no byte came
            // since it was last reported: a partial preface reports `WouldBlock` and the
            // next `readable()` waits for new bytes.
            match stream.try_io(Interest::READABLE, || sniff(stream)) {
                Ok(known) => return known,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(false)
}

/// Peeks without waiting: `Ok(true)` once the protocol is known, `Ok(false)` on EOF,
/// `WouldBlock` while nothing or only part of the HTTP/2 preface has arrived.
fn sniff(stream: &TcpStream) -> io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let mut read = ReadBuf::new(&mut buf);
    // Readiness was just reported, so this peeks at once; the no-op waker is never needed.
    match stream.poll_peek(&mut Context::from_waker(Waker::noop()), &mut read) {
        Poll::Ready(Ok(0)) => Ok(false),
        Poll::Ready(Ok(n)) if n >= PREFACE.len() || buf[..n] != PREFACE[..n] => Ok(true),
        Poll::Ready(Ok(_)) | Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        Poll::Ready(Err(e)) => Err(e),
    }
}
