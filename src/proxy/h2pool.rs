//! HTTP/2 connections to the upstream, as many as its stream limit asks for.
//!
//! Why not hyper-util's pooled client: it keeps one HTTP/2 connection per origin and
//! queues every request over the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` inside that
//! connection. Against an upstream that allows one stream per connection, 30 concurrent
//! requests ran one after the other, and the time they spent queued in the proxy was
//! charged to the upstream as timeouts, which opened the breaker on a healthy backend.
//! SPEC §7.8: more connections are opened when the stream limit is reached.
//!
//! hyper does not tell how many streams the peer allows, so each new connection reads it
//! from the server's first SETTINGS frame as the bytes pass by (`h2settings`), and is used only once that frame has arrived: TCP, TLS and the preface all
//! fall within `connect_timeout`. A later SETTINGS that lowers the limit is not seen;
//! hyper then queues the excess streams in the connection, as before.
//!
//! A stream is counted from dispatch until its response head (or failure); a response
//! body still streaming keeps its HTTP/2 stream open, so a request sent meanwhile on a
//! connection at its limit waits in that connection for the body to finish.
//!
//! Per request: one short mutex hold to pick a connection (hyper-util's pool takes one as
//! well), two atomic operations and a `SendRequest` clone; a connection is made only when
//! all are full.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::body::UpstreamBody;
use super::connect::{BoxError, Connector};
use super::h2settings::Sniffer;
use super::upstream::ClientError;

/// The HTTP/2 connections to one upstream.
pub struct H2Pool {
    connector: Connector,
    /// `upstream.url`: where to connect.
    origin: Uri,
    state: Mutex<State>,
    /// Wakes requests waiting for a connection being opened.
    opened: Notify,
    /// The stream limit the last new connection announced; 0 before the first.
    limit_seen: AtomicUsize,
    /// Idle connections kept (`upstream.pool_max_idle`).
    max_idle: usize,
    /// An idle connection older than this is closed (`upstream.pool_idle_timeout`).
    idle_timeout: Duration,
    connect_timeout: Duration,
    max_header_list: u32,
    /// The zero of the `idle_since` clocks.
    epoch: Instant,
}

/// The connections, and the requests opening or awaiting one.
#[derive(Default)]
struct State {
    conns: Vec<Arc<Conn>>,
    /// Connections being opened.
    connecting: usize,
    /// Requests waiting for a connection being opened to give them a stream.
    waiting: usize,
}

/// What a request without a free stream does.
enum Next {
    Go(Slot),
    /// Wait for a connection being opened: it will have room.
    Wait,
    Connect,
}

/// How many times a request waits for others' new connections before opening its own.
const MAX_WAITS: usize = 2;
/// The stream limit assumed before any server said one (RFC 9113 §6.5.2 recommends at
/// least 100): a burst at start-up waits for one connection, then opens what it needs.
const ASSUMED_LIMIT: usize = 100;

/// One HTTP/2 connection and its stream accounting.
struct Conn {
    send: SendRequest<UpstreamBody>,
    /// Streams we have dispatched and whose response head has not arrived.
    in_flight: AtomicUsize,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` from its preface (at least 1).
    max_streams: usize,
    /// Milliseconds after the pool's epoch when `in_flight` last fell to 0.
    idle_since: AtomicU64,
}

/// A stream slot on a connection, given back when dropped.
struct Slot {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.epoch.elapsed().as_millis() as u64;
            self.conn.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

impl H2Pool {
    pub fn new(
        connector: Connector,
        origin: Uri,
        limits: (usize, Duration, Duration),
        max_header_list: u32,
    ) -> H2Pool {
        let (max_idle, idle_timeout, connect_timeout) = limits;
        H2Pool {
            connector,
            origin,
            state: Mutex::new(State::default()),
            opened: Notify::new(),
            limit_seen: AtomicUsize::new(0),
            max_idle,
            idle_timeout,
            connect_timeout,
            max_header_list,
            epoch: Instant::now(),
        }
    }

    /// Sends a request on a connection with a free stream, opening one if none has.
    pub async fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ClientError> {
        let slot = self.slot().await?;
        *req.version_mut() = Version::HTTP_2;
        let mut send = slot.conn.send.clone();
        send.send_request(req).await.map_err(ClientError::Request)
    }

    /// A stream: on an open connection below its limit, else on a connection another
    /// request is opening (when it will have room), else on a new one. Each wait is
    /// bounded by `connect_timeout`.
    async fn slot(&self) -> Result<Slot, ClientError> {
        for _ in 0..MAX_WAITS {
            // Registered before looking, so an opening that ends meanwhile is not missed.
            let opened = self.opened.notified();
            match self.next() {
                Next::Go(slot) => return Ok(slot),
                Next::Connect => return self.connect_counted().await,
                Next::Wait => {
                    let _waiting = Counted::new(self, |s| &mut s.waiting);
                    let _ = tokio::time::timeout(self.connect_timeout, opened).await;
                }
            }
        }
        self.lock().connecting += 1;
        self.connect_counted().await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides under the lock; drops closed connections, those idle too long and idle
    /// ones beyond `max_idle`.
    fn next(&self) -> Next {
        let now = self.epoch.elapsed().as_millis() as u64;
        let idle_limit = self.idle_timeout.as_millis() as u64;
        let mut state = self.lock();
        let mut idle = 0;
        state.conns.retain(|c| {
            if c.send.is_closed() {
                return false;
            }
            if c.in_flight.load(Ordering::Acquire) > 0 {
                return true;
            }
            idle += 1;
            idle <= self.max_idle
                && now.saturating_sub(c.idle_since.load(Ordering::Relaxed)) < idle_limit
        });
        let free = state
            .conns
            .iter()
            .find(|c| c.in_flight.load(Ordering::Acquire) < c.max_streams);
        if let Some(conn) = free {
            conn.in_flight.fetch_add(1, Ordering::AcqRel);
            return Next::Go(Slot {
                conn: Arc::clone(conn),
                epoch: self.epoch,
            });
        }
        let limit = match self.limit_seen.load(Ordering::Relaxed) {
            0 => ASSUMED_LIMIT,
            seen => seen,
        };
        // Each connection being opened has room for its opener and `limit - 1` others.
        if state.waiting < state.connecting * (limit - 1) {
            state.waiting += 1;
            return Next::Wait;
        }
        state.connecting += 1;
        Next::Connect
    }

    /// `connect`, then tells the waiting requests (also when it failed or was dropped).
    async fn connect_counted(&self) -> Result<Slot, ClientError> {
        let _connecting = Counted::new(self, |s| &mut s.connecting);
        self.connect().await
    }

    /// Opens a connection and takes its first stream. Connect, handshake and the server's
    /// SETTINGS all within `connect_timeout`.
    async fn connect(&self) -> Result<Slot, ClientError> {
        use tower_service::Service;
        let started = Instant::now();
        let stream = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(ClientError::Connect)?;
        let (tx, rx) = oneshot::channel();
        let io = TokioIo::new(Sniffer::new(TokioIo::new(stream), tx));
        let (send, connection) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(self.max_header_list)
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        // Ends when every `SendRequest` is gone or the upstream closes it.
        tokio::spawn(connection);
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        let max_streams = match tokio::time::timeout(left, rx).await {
            Ok(Ok(n)) => n.max(1),
            Ok(Err(_)) => return Err(connect_error("the upstream closed before its SETTINGS")),
            Err(_) => return Err(connect_error("no HTTP/2 SETTINGS within connect_timeout")),
        };
        self.limit_seen.store(max_streams, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            send,
            in_flight: AtomicUsize::new(1),
            max_streams,
            idle_since: AtomicU64::new(0),
        });
        self.lock().conns.push(Arc::clone(&conn));
        Ok(Slot {
            conn,
            epoch: self.epoch,
        })
    }
}

/// A count in the pool's state (already raised by `next`), lowered when dropped: a
/// request cancelled while it connects or waits must not leave it raised. Lowering
/// `connecting` wakes the waiting requests.
struct Counted<'a> {
    pool: &'a H2Pool,
    count: fn(&mut State) -> &mut usize,
}

impl<'a> Counted<'a> {
    fn new(pool: &'a H2Pool, count: fn(&mut State) -> &mut usize) -> Counted<'a> {
        Counted { pool, count }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        let count = (self.count)(&mut state);
        *count = count.saturating_sub(1);
        drop(state);
        self.pool.opened.notify_waiters();
    }
}

fn connect_error(message: &'static str) -> ClientError {
    let error: BoxError = Box::new(io::Error::new(io::ErrorKind::TimedOut, message));
    ClientError::Connect(error)
}
