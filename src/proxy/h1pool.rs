//! HTTP/1.1 connections to the upstream: a stack of idle ones, each a hyper connection
//! handle (`SendRequest`) whose connection runs in a task of its own.
//!
//! Why not hyper-util's pooled client, which the first edition used: it serves any number
//! of origins. For each request it cloned the connector and the URI, hashed the pool key,
//! raced a `Checkout` against a lazy connect in a `Select`, stored the connection's details
//! in the response, and moved those large futures from one state to the next: about 6,000
//! instructions and 27 `memcpy` calls per request (callgrind, `docs/benchmarks.md`). We
//! have one upstream, so a mutex around a `Vec` does the same job.
//!
//! The rules are hyper-util's:
//! - Last in, first out: the connection used last is the least likely to have been closed
//!   by the upstream's idle timer.
//! - A connection goes back once hyper says it can take the next request: at once when the
//!   response body came with its head (the usual small answer), else from a task that waits
//!   for it. After a `101` the connection belongs to the tunnel and never goes back.
//! - A request that finds no idle connection starts a new one, and takes whichever comes
//!   first: that one, or an idle one given back meanwhile (the new one then goes on the
//!   stack when made). Without this race a request that finds every connection busy
//!   waits for a whole connect, and fails if the upstream, at its connection limit,
//!   accepts none, while a busy connection would have served it a moment later.
//! - A request that fails on a reused connection before any of it was written (the
//!   upstream closed the connection while it was idle) is sent on another one, whatever its
//!   method: nothing reached the upstream. On a new connection such a failure is the
//!   attempt's.
//! - At most `pool_max_idle` idle connections (a connection coming back to a full stack is
//!   closed), and none older than `pool_idle_timeout`: checked when one is taken, so a
//!   request never goes out on an expired one, and by a sweep while any are idle, so they
//!   are closed when traffic stops.
//!
//! Per request: two short mutex holds (take, give back), two clock reads, no allocation.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use tokio::sync::Notify;
use tracing::debug;

use super::body::UpstreamBody;
use super::connect::Connector;
use super::upstream::ClientError;

/// The HTTP/1.1 connections to one upstream.
pub struct H1Pool {
    connector: Connector,
    /// `upstream.url`: where to connect.
    origin: Uri,
    /// Most header lines a response may have.
    max_headers: usize,
    shelf: Arc<Shelf>,
}

/// The idle connections, shared with the tasks that wait to give one back.
struct Shelf {
    state: Mutex<State>,
    /// `upstream.pool_max_idle`.
    max_idle: usize,
    /// `upstream.pool_idle_timeout`.
    idle_timeout: Duration,
    /// Wakes a request waiting for a connection to be given back.
    returned: Notify,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    idle: Vec<Idle>,
    /// Whether a sweep task is running.
    sweeping: bool,
}

struct Idle {
    send: SendRequest<UpstreamBody>,
    since: Instant,
}

type Sender = SendRequest<UpstreamBody>;

impl H1Pool {
    /// `limits` are `pool_max_idle` and `pool_idle_timeout`.
    pub fn new(
        connector: Connector,
        origin: Uri,
        limits: (usize, Duration),
        max_headers: usize,
    ) -> H1Pool {
        let (max_idle, idle_timeout) = limits;
        H1Pool {
            connector,
            origin,
            max_headers,
            shelf: Arc::new(Shelf {
                state: Mutex::new(State::default()),
                max_idle,
                idle_timeout,
                returned: Notify::new(),
            }),
        }
    }

    /// Sends a request (its URI in origin form, `Host` set) on an idle connection, else on
    /// a new one, and waits for the response head.
    pub async fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ClientError> {
        loop {
            let (mut send, reused) = match self.shelf.take() {
                Some(send) => (send, true),
                // Boxed: a connect and handshake are large, and rare.
                None => Box::pin(self.connect_or_wait()).await?,
            };
            match send.try_send_request(req).await {
                Ok(response) => {
                    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                        Shelf::give_back(&self.shelf, send);
                    }
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the upstream had closed this idle connection.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(ClientError::Request(e.into_error())),
                },
            }
        }
    }

    /// A new connection, or an idle one given back while it is being made, whichever
    /// comes first; `true` with one given back (reused). A new connection made too late
    /// is given back in its turn.
    async fn connect_or_wait(&self) -> Result<(Sender, bool), ClientError> {
        let mut connecting = Box::pin(connect(
            self.connector.clone(),
            self.origin.clone(),
            self.max_headers,
        ));
        if self.shelf.max_idle == 0 {
            // Nothing is ever given back.
            return Ok((connecting.await?, false));
        }
        tokio::select! {
            biased;
            connected = &mut connecting => Ok((connected?, false)),
            send = self.shelf.given_back() => {
                let shelf = Arc::clone(&self.shelf);
                tokio::spawn(async move {
                    if let Ok(send) = connecting.await {
                        Shelf::give_back(&shelf, send);
                    }
                });
                Ok((send, true))
            }
        }
    }
}

/// A new connection (TCP, TLS for `https://`, within `connect_timeout`). Owns what it
/// uses, so that one a request no longer needs can be finished in a task of its own.
async fn connect(
    mut connector: Connector,
    origin: Uri,
    max_headers: usize,
) -> Result<Sender, ClientError> {
    use tower_service::Service;
    let stream = connector.call(origin).await.map_err(ClientError::Connect)?;
    let (send, connection) = Builder::new()
        .max_headers(max_headers)
        .handshake(stream)
        .await
        .map_err(|e| ClientError::Connect(Box::new(e)))?;
    // Ends when the last `SendRequest` is gone, the upstream closes, or a `101` hands
    // the stream to the tunnel.
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(send)
}

impl Shelf {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently idle connection that can take a request. Closed ones met on the
    /// way are dropped, and an expired one means all below it expired too.
    fn take(&self) -> Option<Sender> {
        let mut state = self.lock();
        while let Some(idle) = state.idle.pop() {
            if idle.since.elapsed() >= self.idle_timeout {
                let expired = std::mem::take(&mut state.idle);
                drop(state);
                drop(expired);
                return None;
            }
            if idle.send.is_ready() {
                return Some(idle.send);
            }
        }
        None
    }

    /// The next idle connection given back. Registered before the stack is looked at, so
    /// that one given back in between is not missed.
    async fn given_back(&self) -> Sender {
        loop {
            let notified = self.returned.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(send) = self.take() {
                return send;
            }
            notified.await;
        }
    }

    /// Puts `send` back once it can take the next request.
    fn give_back(shelf: &Arc<Shelf>, mut send: Sender) {
        if send.is_ready() {
            shelf.put(send);
        } else if !send.is_closed() {
            // The response body is still arriving on this connection.
            let shelf = Arc::clone(shelf);
            tokio::spawn(async move {
                if send.ready().await.is_ok() {
                    shelf.put(send);
                }
            });
        }
    }

    fn put(self: &Arc<Shelf>, send: Sender) {
        let mut state = self.lock();
        if state.idle.len() >= self.max_idle {
            return;
        }
        state.idle.push(Idle {
            send,
            since: Instant::now(),
        });
        if !state.sweeping {
            state.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
        drop(state);
        // No lock, no allocation: with no request waiting, it leaves a permit that the
        // next waiter uses to look at the stack once more.
        self.returned.notify_one();
    }
}

/// Closes expired and closed idle connections every half `pool_idle_timeout`, until none
/// is idle (the next one given back starts another sweep) or the pool is gone.
async fn sweep(shelf: Weak<Shelf>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(shelf) = shelf.upgrade() else {
            return;
        };
        let mut state = shelf.lock();
        let (kept, gone): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut state.idle)
            .into_iter()
            .partition(|i| i.since.elapsed() < idle_timeout && !i.send.is_closed());
        state.idle = kept;
        let done = state.idle.is_empty();
        if done {
            state.sweeping = false;
        }
        drop(state);
        drop(gone);
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream on loopback that answers every request `200 ok` and logs its request
    /// lines; also counts the connections it accepted.
    async fn upstream() -> (Uri, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (log2, accepted2) = (Arc::clone(&log), Arc::clone(&accepted));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted2.fetch_add(1, Ordering::SeqCst);
                let log = Arc::clone(&log2);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                            seen.drain(..end + 4);
                            let line = head.lines().next().unwrap_or("").to_owned();
                            log.lock().unwrap().push(line);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, log, accepted)
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::builder()
            .uri(path)
            .header(http::header::HOST, "upstream")
            .body(UpstreamBody::Empty)
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_future_never_polled_sends_nothing_and_keeps_the_idle_connection() {
        let (url, log, accepted) = upstream().await;
        let connector = Connector::new(url.clone(), None, None, Duration::from_secs(2));
        let pool = H1Pool::new(connector, url, (4, Duration::from_secs(60)), 100);
        let warm = pool.request(get("/warm")).await.unwrap();
        assert_eq!(warm.status(), StatusCode::OK);
        drop(warm);
        // The connection goes back once hyper can take the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;

        drop(pool.request(get("/never-polled")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = pool.request(get("/after")).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK);

        let lines = log.lock().unwrap().clone();
        assert_eq!(lines, ["GET /warm HTTP/1.1", "GET /after HTTP/1.1"]);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the idle connection was kept"
        );
    }
}
