//! The accept loop both listeners share: one task per connection, HTTP/1.1 and h2c on the
//! same port, every connection told to leave when its listener drains (`drain`).
//!
//! Connection-level limits live here, so a slow or hostile client can only ever hurt its
//! own connection: the header size limit (431) and a malformed request (hyper answers 400
//! and closes that connection) are hyper's; `send_timeout`, `idle_timeout` and
//! `header_read_timeout` are kept by the connection's watchdog: a client that stops
//! reading is cut off (its responses dropped, which frees their in-flight slots and
//! upstream connections), a keep-alive connection with no request is closed, and an
//! HTTP/1 head not complete in time (slowloris) is cut.
//!
//! **Parking.** An idle HTTP/1 keep-alive connection costs what hyper keeps for it: a read
//! buffer (8-16 KiB), a write buffer (8 KiB), the header map it reuses and its own state,
//! about 29 KiB of heap each, measured with DHAT. A sidecar holds thousands of such
//! connections for clients that send a request now and then. So once a connection has had
//! no request for [`PARK_AFTER`], the accept loop takes the socket back from hyper
//! (`into_parts`) and lets hyper's state go; the task then waits on the bare socket
//! (`readable`) and hands it to a new hyper connection when the next request arrives. What
//! hyper had read and not yet served (a request begun, or pipelined) goes first to the next
//! connection (`conn_io`). A connection is not parked while hyper still holds response
//! bytes the client has not taken, and once a connection was taken back with part of a
//! request read, it is not parked again before that request is answered (so a client
//! trickling its head restarts `header_read_timeout` at most once). HTTP/2 connections are
//! not parked.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::conn_io::ConnIo;
use super::drain::{told_to_leave, Drain};
use super::per_request::{PanicAnswer, PerRequest};
use super::watchdog::{Clock, Expiry, Parking, Timeouts, Watched};
use super::woken::Woken;
use crate::config::Limits;

/// How many header fields an HTTP/1.1 head may have, in requests and in upstream answers:
/// one per 32 bytes of `limits.max_request_header_bytes`, at least hyper's default of 100
/// and at most 1,024 (hyper parses into arrays of this many entries, 32 bytes each).
pub fn header_cap(limits: &Limits) -> usize {
    limits.header_cap()
}

/// How long an HTTP/1 connection goes without a request before hyper's state for it is let
/// go (see "Parking" above). Short, so that a burst of new connections that then sit idle
/// never holds much at once; a client that waits longer than this between requests pays
/// for a new hyper connection object (two buffers and a header map) with its next one.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How every connection of a listener is served: hyper's builders and the watchdog's limits.
pub struct Builder {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    send_timeout: Duration,
    idle_timeout: Duration,
    header_read_timeout: Duration,
}

/// An HTTP/1.1 + h2c connection builder with the configured limits.
pub fn builder(limits: &Limits) -> Builder {
    let mut http1 = http1::Builder::new();
    // `header_read_timeout` is the watchdog's (`Expiry::Head`): hyper's own costs every
    // request a boxed timer.
    http1
        .header_read_timeout(None)
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        .max_headers(header_cap(limits))
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // A silent HTTP/2 peer is noticed and dropped instead of held forever.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    Builder {
        http1,
        http2,
        send_timeout: limits.send_timeout,
        idle_timeout: limits.idle_timeout,
        header_read_timeout: limits.header_read_timeout,
    }
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
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Watched
        + Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static,
    P: PanicAnswer<Body = B>,
{
    let builder = Arc::new(builder);
    let Handler { make, on_panic } = handler;
    let on_panic = Arc::new(on_panic);
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
        tokio::spawn(conn.serve(make.clone(), Arc::clone(&on_panic), first_bytes));
    }
}

/// What serves the requests of a listener: `make` builds the `hyper::service::Service` for the
/// connection from a peer address, `on_panic` answers a request whose serving panicked.
pub struct Handler<H, P> {
    pub make: H,
    pub on_panic: P,
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
    async fn serve<H, S, B, P>(self, make: H, on_panic: Arc<P>, first_bytes: Duration)
    where
        H: Fn(SocketAddr) -> S + Clone + Send + Sync + 'static,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: Watched
            + Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 'static,
        P: PanicAnswer<Body = B>,
    {
        let Connection {
            stream,
            peer,
            builder,
            mut leave,
        } = self;
        // From here: `header_read_timeout` counts from the connection's start, not from its
        // first byte.
        let clock = Clock::new();
        let Some(protocol) = protocol_within(&stream, first_bytes).await else {
            debug!(peer = %peer, "connection closed: no request bytes in time");
            return;
        };
        let mut service = PerRequest::new(make(peer), on_panic, Arc::clone(&clock), leave.clone());
        let mut watch = Watch {
            clock: &clock,
            leave: &mut leave,
            leaving: false,
            builder: &builder,
            peer,
        };
        if protocol == Protocol::Http2 {
            let conn = builder
                .http2
                .serve_connection(TokioIo::new(stream), service);
            let _ = watch
                .run(Box::pin(conn), None, |c| c.graceful_shutdown())
                .await;
            return;
        }
        let mut io = ConnIo::new(stream, Arc::clone(&clock));
        let mut park = Parking {
            after: PARK_AFTER,
            held: None,
        };
        loop {
            let conn = builder
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let shut = |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
            let Some(conn) = watch.run(Box::pin(conn), Some(&mut park), shut).await else {
                return;
            };
            // Parked: what hyper held for this connection is freed here. Its read buffer
            // too: `read_buf` is a view of it, so what it holds is copied out.
            let Some(http1::Parts {
                io: parted,
                read_buf,
                service: parted_service,
                ..
            }) = Pin::into_inner(conn).into_parts()
            else {
                return;
            };
            io = parted.into_inner();
            service = parted_service;
            let unread = Bytes::copy_from_slice(&read_buf);
            drop(read_buf);
            if !unread.is_empty() {
                // Part of a request was read: serve on at once, and not park again before
                // something happens (an answer), lest a trickling client reset hyper's
                // `header_read_timeout` each time.
                io.set_unread(unread);
                park.held = Some(clock.last());
                continue;
            }
            if !watch.parked(&io).await {
                return;
            }
        }
    }
}

/// Which protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// One connection's watch: its drain signal, its clock and its timers.
struct Watch<'a> {
    clock: &'a Clock,
    leave: &'a mut watch::Receiver<bool>,
    /// Told to leave (or idle for `idle_timeout`): finishing, never parked.
    leaving: bool,
    builder: &'a Builder,
    peer: SocketAddr,
}

impl Watch<'_> {
    /// Serves `conn` until it ends (`None`) or, with `park`, until it may be parked
    /// (`Some`: the connection, to take apart). `shut` is its graceful shutdown.
    async fn run<C>(
        &mut self,
        mut conn: Pin<Box<C>>,
        mut park: Option<&mut Parking>,
        shut: impl Fn(Pin<&mut C>),
    ) -> Option<Pin<Box<C>>>
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        let result = loop {
            // Biased: the connection is polled before it can be told to leave, so one
            // accepted during the drain has read its first request (its bytes are already
            // here) and answers it before leaving; a graceful shutdown before hyper has
            // read the request would drop it unanswered.
            let limits = Timeouts {
                send: self.builder.send_timeout,
                idle: (!self.leaving).then_some(self.builder.idle_timeout),
                // HTTP/1 only (the one that parks); kept while leaving too, for a head
                // begun and stalled.
                head: park.is_some().then_some(self.builder.header_read_timeout),
                park: park.as_deref().copied().filter(|_| !self.leaving),
            };
            tokio::select! {
                biased;
                result = conn.as_mut() => break result,
                // Both in `Woken`: polled only when they woke, not each time hyper does.
                () = Woken::new(told_to_leave(self.leave)), if !self.leaving => {
                    // HTTP/1: `Connection: close` on the answer in progress, or closed now
                    // if idle. HTTP/2: GOAWAY, streams already opened still finish.
                    self.leaving = true;
                    shut(conn.as_mut());
                }
                expiry = Woken::new(self.clock.expired(limits)) => match expiry {
                    Expiry::Send => {
                        // Dropping the connection drops its responses: their in-flight
                        // slots and upstream connections are released.
                        debug!(peer = %self.peer, "connection cut: the client took no response bytes within send_timeout");
                        return None;
                    }
                    Expiry::Head => {
                        debug!(peer = %self.peer, "connection cut: no complete request head within header_read_timeout");
                        return None;
                    }
                    Expiry::Idle => {
                        debug!(peer = %self.peer, "connection closed: idle for idle_timeout");
                        self.leaving = true;
                        shut(conn.as_mut());
                    }
                    // hyper still holds bytes for a client that is not reading: keep it
                    // until an answer moves or the idle timeout closes it.
                    Expiry::Park if self.clock.is_write_blocked() => {
                        if let Some(park) = park.as_deref_mut() {
                            park.held = Some(self.clock.last());
                        }
                    }
                    Expiry::Park => return Some(conn),
                },
            }
        };
        if let Err(e) = result {
            debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
        None
    }

    /// Waits on a parked connection's bare socket: `true` once bytes (or the client's
    /// close) arrive for a new hyper connection to read, `false` to close it now (told to
    /// leave, idle for the shorter of `idle_timeout` and `header_read_timeout` as an
    /// unparked connection would be, or the socket failed).
    async fn parked(&mut self, io: &ConnIo) -> bool {
        let idle = self
            .builder
            .idle_timeout
            .min(self.builder.header_read_timeout);
        tokio::select! {
            // Biased: a request that arrived is served even when the drain began.
            biased;
            ready = io.stream().readable() => ready.is_ok(),
            () = told_to_leave(self.leave) => {
                debug!(peer = %self.peer, "parked connection closed: told to leave");
                false
            }
            _ = self.clock.expired(Timeouts { send: self.builder.send_timeout, idle: Some(idle), head: None, park: None }) => {
                debug!(peer = %self.peer, "parked connection closed: idle");
                false
            }
        }
    }
}

/// Waits until the client has sent enough bytes to tell HTTP/1 from the HTTP/2 preface:
/// which it is, or `None` for a client that closed or sent too little within `limit`.
///
/// hyper has no timeout for this and `header_read_timeout` starts only once HTTP/1 is
/// chosen, so without this a client that sends a few bytes and stops would hold its
/// connection forever.
///
/// A partial preface waits for the socket to become readable again, never on a timer:
/// a thousand clients that send `PRI * HTTP/2` and stop cost nothing until they send more.
/// One that sends part of it and then ends its side is closed at once.
async fn protocol_within(stream: &TcpStream, limit: Duration) -> Option<Protocol> {
    let wait = async {
        loop {
            let Ok(ready) = stream.ready(Interest::READABLE).await else {
                return None;
            };
            // The peek runs inside `try_io`, so readiness is cleared only if no byte came
            // since it was last reported: a partial preface reports `WouldBlock` and the
            // next `ready()` waits for new bytes.
            match stream.try_io(Interest::READABLE, || sniff(stream)) {
                Ok(known) => return known,
                // The client ended its side with part of the preface sent: the rest can
                // never come. (The end stays reported as readable, so waiting again would
                // return at once, forever, and hold this worker thread.)
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                    return None
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(limit, wait).await.ok().flatten()
}

/// Peeks without waiting: `Ok(Some(_))` once the protocol is known, `Ok(None)` on EOF,
/// `WouldBlock` while nothing or only part of the HTTP/2 preface has arrived.
fn sniff(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let mut read = ReadBuf::new(&mut buf);
    // Readiness was just reported, so this peeks at once; the no-op waker is never needed.
    match stream.poll_peek(&mut Context::from_waker(Waker::noop()), &mut read) {
        Poll::Ready(Ok(0)) => Ok(None),
        Poll::Ready(Ok(n)) if buf[..n] != PREFACE[..n] => Ok(Some(Protocol::Http1)),
        Poll::Ready(Ok(n)) if n == PREFACE.len() => Ok(Some(Protocol::Http2)),
        Poll::Ready(Ok(_)) | Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        Poll::Ready(Err(e)) => Err(e),
    }
}
