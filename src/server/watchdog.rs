//! Per-connection timers for slow peers: `limits.send_timeout`, `limits.idle_timeout` and,
//! for HTTP/1, `limits.header_read_timeout`.
//!
//! Why not per response: a client that stops reading stops hyper from polling the response
//! body (HTTP/1 waits for the socket to drain, HTTP/2 for window updates), so a timer inside
//! the body would never be looked at. The connection task is always polled, so it keeps the
//! one timer; each response body only records, in the connection's [`Clock`], when the
//! client last took bytes and whether it is waiting for the client to take more.
//!
//! "Waiting for the client" means the body handed a frame out (or has not been polled yet)
//! and has not been asked for the next one. A body waiting for its upstream (a long poll,
//! a slow stream) is not the client's fault and never counts.
//!
//! The unit is the connection: it is cut when none of its responses has moved for
//! `send_timeout` while at least one waits for the client. An HTTP/2 client that keeps one
//! stream moving keeps its other stalled streams (at most 256, `max_concurrent_streams`).
//!
//! `header_read_timeout` is kept here too, not by hyper: an HTTP/1 connection with no
//! request in progress must complete a request head within it, timed from the
//! connection's start or its last request's end, else it is cut ([`Expiry::Head`]), as
//! hyper's own timer did (a head begun and stalled is a slowloris; no head at all is a
//! keep-alive connection idle for that long). hyper's timer cost every request a boxed
//! `Sleep`, registered in the timer wheel while the next head was awaited and removed once
//! it came, and two clock reads (`docs/benchmarks.md`); this one costs requests nothing.
//! It is also stricter: a connection taken back from hyper and served again (parking,
//! `server::accept`) does not restart it.
//!
//! Cost: one allocation per connection (the clock) and one timer per connection, which
//! wakes at most once per `min(send_timeout, idle_timeout, header_read_timeout)` (or when a
//! limit is reached).
//! Per request: an `Arc` clone and a few atomic counter updates; per response frame handed
//! out one clock read and one relaxed store (none for a poll that finds the upstream has
//! nothing yet).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What one connection's requests and responses are doing.
#[derive(Debug)]
pub struct Clock {
    base: Instant,
    /// Requests started and not yet finished (handler running or body still sending).
    requests: AtomicUsize,
    /// Response bodies waiting for the client to take more.
    waiting: AtomicUsize,
    /// Milliseconds since `base` of the last thing that happened: a response frame taken,
    /// a request finished.
    last: AtomicU64,
    /// hyper's last write to the socket found no room: it still holds response bytes
    /// (`conn_io`).
    write_blocked: AtomicBool,
    /// Told when the last request in progress ends, so that parking needs no polling.
    ended: Notify,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A response waited for the client for `send_timeout`: cut the connection.
    Send,
    /// No request for `idle_timeout`: close it politely.
    Idle,
    /// No request for the parking delay: hyper's connection state may be let go.
    Park,
    /// HTTP/1: no complete request head for `header_read_timeout` since the connection
    /// began or its last request ended: cut the connection (slowloris).
    Head,
}

/// What a connection's watchdog times ([`Clock::expired`]).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A response waiting for the client this long: [`Expiry::Send`].
    pub send: Duration,
    /// No request in progress for this long: [`Expiry::Idle`] (`None`: not watched).
    pub idle: Option<Duration>,
    /// No request in progress, and no complete head read, for this long: [`Expiry::Head`]
    /// (`None`: not watched).
    pub head: Option<Duration>,
    /// When the connection may be parked (`None`: never).
    pub park: Option<Parking>,
}

impl Clock {
    pub fn new() -> Arc<Clock> {
        Arc::new(Clock {
            base: Instant::now(),
            requests: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            ended: Notify::new(),
        })
    }

    /// Counts a request from its start until the returned handle is dropped (with its
    /// response body, or with the request if it never got one).
    pub fn start(self: &Arc<Self>) -> Active {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Active {
            clock: Arc::clone(self),
            waiting: false,
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Counts a request body hyper is still reading, until the returned handle (and its
    /// clones) are dropped: with the body's end, or when the body is let go.
    pub fn reading(self: &Arc<Self>) -> Reading {
        Reading(Arc::new(self.start()))
    }

    /// When the last thing happened (an opaque stamp: equal stamps, nothing happened).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Records whether the connection's last write found no room.
    pub fn write_blocked(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Whether the connection still holds response bytes the client has not taken.
    pub fn is_write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// Resolves when the connection's time runs out (`limits`). With `limits.park`,
    /// resolves [`Expiry::Park`] once the connection has had no request for `park.after`
    /// (shorter than the others), unless nothing happened since `park.held`.
    pub async fn expired(&self, limits: Timeouts) -> Expiry {
        let ms = |d: Duration| d.as_millis() as u64;
        let send = ms(limits.send);
        let (idle, head) = (limits.idle.map(ms), limits.head.map(ms));
        let park = limits.park;
        let park_after = park.map(|p| ms(p.after));
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            // Counters first (acquire): a counter seen changed comes with its `last`.
            let requests = self.requests.load(Ordering::Acquire);
            // Response bytes hyper still holds for a client that is not reading count as a
            // response waiting for the client, not as a connection without a request.
            let held = requests == 0 && self.is_write_blocked();
            let waiting = self.waiting.load(Ordering::Acquire) + usize::from(held);
            let last = self.last.load(Ordering::Relaxed);
            let now = self.now();
            let quiet = now.saturating_sub(last);
            let next = if waiting > 0 {
                if quiet >= send {
                    return Expiry::Send;
                }
                // Held bytes leave unseen: look again soon, to time the head after them.
                let soon = if held {
                    head.unwrap_or(send).min(send)
                } else {
                    send
                };
                (last + send).min(now + soon)
            } else if requests == 0 && (idle.is_some() || head.is_some()) {
                if head.is_some_and(|head| quiet >= head) {
                    return Expiry::Head;
                }
                if idle.is_some_and(|idle| quiet >= idle) {
                    return Expiry::Idle;
                }
                let parkable = park.filter(|p| p.held != Some(last)).and(park_after);
                if parkable.is_some_and(|p| quiet >= p) {
                    return Expiry::Park;
                }
                // A response may start waiting meanwhile: look again within `send`.
                let due = [head, idle, parkable].into_iter().flatten().min();
                due.map_or(now + send, |due| (last + due).min(now + send))
            } else {
                // Requests in their handlers: nothing to watch until one sends or all
                // end. Looking that often is enough: a wait or an idle spell seen begun is
                // then timed from `last`.
                let quiet_limit = [idle, head].into_iter().flatten().min();
                now + quiet_limit.map_or(send, |q| send.min(q))
            };
            sleep
                .as_mut()
                .reset(self.base + Duration::from_millis(next));
            if park.is_some() && (requests > 0 || waiting > 0) {
                // Parking is timed from the end of the last request: look again then. (A
                // request that ended since the counters were read left a permit.)
                tokio::select! {
                    () = sleep.as_mut() => {}
                    () = self.ended.notified() => {}
                }
            } else {
                sleep.as_mut().await;
            }
        }
    }
}

/// When an idle connection may be parked (see `server::accept`).
#[derive(Debug, Clone, Copy)]
pub struct Parking {
    /// After this long without a request.
    pub after: Duration,
    /// Not while the clock's [`Clock::last`] stamp is still this one.
    pub held: Option<u64>,
}

/// A response body the watchdog can follow: the accept loop hands it the request's
/// [`Active`] once the handler answered, and the body reports whether it waits for the
/// client. The accept loop needs nothing else of a handler's body type.
pub trait Watched {
    /// Takes over `active` for the time the body is being sent. In place: a response is
    /// large (about 300 bytes), and `Response::map` would move it twice.
    fn sending(&mut self, active: Active);
}

/// One request on a connection, carried by its response body.
#[derive(Debug)]
pub struct Active {
    clock: Arc<Clock>,
    /// Counted in the clock's `waiting`.
    waiting: bool,
}

impl Active {
    /// The response is handed to the connection: waiting for the client to take it.
    pub fn sending(&mut self) {
        self.clock.touch();
        self.set_waiting(true);
    }

    /// The response body was polled (the client took what came before) and gave `frame`
    /// (`true`: a frame handed out, waiting for the client again; `false`: waiting for the
    /// upstream, or done).
    pub fn polled(&mut self, frame: bool) {
        // Only a wait that begins needs the time: a body pending on its upstream is not
        // timed, so that poll costs no clock read.
        if frame {
            self.clock.touch();
        }
        self.set_waiting(frame);
    }

    fn set_waiting(&mut self, waiting: bool) {
        if waiting != self.waiting {
            self.waiting = waiting;
            if waiting {
                self.clock.waiting.fetch_add(1, Ordering::Release);
            } else {
                self.clock.waiting.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.set_waiting(false);
        self.clock.touch();
        if self.clock.requests.fetch_sub(1, Ordering::Release) == 1 {
            self.clock.ended.notify_one();
        }
    }
}

/// A request body hyper is still reading (`Clock::reading`), carried in the request's
/// extensions to whoever reads the body. Until it is dropped the connection has a request
/// in progress: it is not idle, and it is never parked, since a new hyper connection
/// would read the rest of the body as a new request.
#[derive(Debug, Clone)]
pub struct Reading(#[allow(dead_code)] Arc<Active>);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle: Option<u64>, head: Option<u64>) -> Timeouts {
        Timeouts {
            send: Duration::from_secs(30),
            idle: idle.map(Duration::from_secs),
            head: head.map(Duration::from_secs),
            park: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_cut_at_the_head_limit() {
        let clock = Clock::new();
        let start = Instant::now();
        assert_eq!(
            clock.expired(limits(Some(60), Some(10))).await,
            Expiry::Head
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // Told to leave (no idle limit): a stalled head is still cut.
        let start = Instant::now();
        let clock = Clock::new();
        assert_eq!(clock.expired(limits(None, Some(10))).await, Expiry::Head);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // The shorter of the two decides.
        let clock = Clock::new();
        assert_eq!(clock.expired(limits(Some(5), Some(10))).await, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_limit_counts_from_the_last_request_s_end() {
        let clock = Clock::new();
        let start = Instant::now();
        let active = clock.start();
        let watch = tokio::spawn({
            let clock = Arc::clone(&clock);
            async move { clock.expired(limits(Some(60), Some(10))).await }
        });
        // A request in its handler for 25 s is not a stalled head.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!watch.is_finished());
        drop(active);
        assert_eq!(watch.await.unwrap(), Expiry::Head);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(35) && waited <= Duration::from_secs(36),
            "cut after {waited:?}, not 10 s after the request ended at 25 s"
        );
    }
}
