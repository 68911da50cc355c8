//! How far a streamed request body got on its way to the upstream, and whose time it is.
//!
//! The time a client takes to upload is the client's: `per_try_timeout` starts only once
//! the body is handed over, and the route's deadline does not run while a streamed body is
//! on its way (it is pushed back by as long as the upload took). Each side's stall is
//! bounded instead: a client that sends nothing for the route's `timeout` fails as the
//! client's (`ClientTimeout`, 408), an upstream connection that takes nothing for
//! `per_try_timeout` as the upstream's (`Timeout`).
//!
//! A client that trickles (a byte now and then, never a whole `timeout` apart) is bounded
//! by a least rate: once the client's own time on the upload (the waits for it to send,
//! not those for the upstream to take) passes the route's `timeout`, it must have sent at
//! least [`MIN_RATE`] bytes for each second of it, else the same 408. Without it, one
//! client at about 120 bytes/s held every in-flight slot, and an upstream connection with
//! each (an attack review of the release binary, 2026-12-01).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::vocab::reason::Failure;

/// How far a streamed request body got on its way to the upstream, and who is being
/// waited for: the client (to send more) or the upstream connection (to take more).
#[derive(Debug)]
pub struct Upload {
    /// The last byte was handed to the upstream connection.
    done: AtomicBool,
    base: Instant,
    /// Milliseconds since `base` when the current wait for the client began; `NOT_WAITING`
    /// while the last read found data.
    waiting_since: AtomicU64,
    /// Milliseconds since `base` of the last time the upstream connection asked for more.
    last_poll: AtomicU64,
    /// Milliseconds since `base` when the last byte was handed over.
    done_at: AtomicU64,
    /// Body bytes read from the client.
    received: AtomicU64,
    /// Milliseconds spent waiting for the client, in waits that have ended.
    client_time: AtomicU64,
    finished: Notify,
    /// A wait for the client began: the deadline loop looks again (it may be asleep until
    /// the upstream side's stall, later than the client's).
    client_wait: Notify,
}

const NOT_WAITING: u64 = u64::MAX;

/// The least upload rate, in bytes per second of the client's own time, once that time
/// passed the route's `timeout`: about 2 kbit/s, far below any real client's.
const MIN_RATE: u64 = 240;

impl Default for Upload {
    fn default() -> Self {
        Upload {
            done: AtomicBool::new(false),
            base: Instant::now(),
            waiting_since: AtomicU64::new(NOT_WAITING),
            last_poll: AtomicU64::new(0),
            done_at: AtomicU64::new(0),
            received: AtomicU64::new(0),
            client_time: AtomicU64::new(0),
            finished: Notify::new(),
            client_wait: Notify::new(),
        }
    }
}

impl Upload {
    /// Resolves once the whole body has been handed over.
    pub async fn handed_over(&self) {
        let finished = self.finished.notified();
        if !self.done.load(Ordering::Acquire) {
            finished.await;
        }
    }

    /// Whether the upload is unfinished because the client has not sent the rest yet.
    pub fn waiting_for_client(&self) -> bool {
        !self.done.load(Ordering::Acquire)
            && self.waiting_since.load(Ordering::Relaxed) != NOT_WAITING
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Notes one read from the client, asked for by the upstream connection: `pending`
    /// when the client had nothing yet, `end` when nothing is left to send, `bytes` of
    /// body it gave. One clock read per read (a chunk of the body).
    pub(super) fn read(&self, pending: bool, end: bool, bytes: usize) {
        let now = self.now();
        self.last_poll.store(now, Ordering::Relaxed);
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
        let since = self.waiting_since.load(Ordering::Acquire);
        if pending && since == NOT_WAITING {
            self.waiting_since.store(now, Ordering::Release);
            self.client_wait.notify_one();
        } else if !pending && since != NOT_WAITING {
            // The wait ends before its time is added: a look in between (`stalled` reads
            // in the other order) counts it at most once.
            self.waiting_since.store(NOT_WAITING, Ordering::Release);
            let waited = now.saturating_sub(since);
            self.client_time.fetch_add(waited, Ordering::Release);
        }
        if end && !self.done.swap(true, Ordering::AcqRel) {
            self.done_at.store(now, Ordering::Relaxed);
            self.finished.notify_waiters();
        }
    }

    /// While unfinished: the failure if one side stalled too long, or the client sent too
    /// slowly, else when to look again (milliseconds since `base`).
    fn stalled(&self, client: Duration, upstream: Duration) -> Result<u64, Failure> {
        let now = self.now();
        let client_time = self.client_time.load(Ordering::Acquire);
        let since = self.waiting_since.load(Ordering::Acquire);
        if since == NOT_WAITING {
            let last = self.last_poll.load(Ordering::Relaxed);
            let limit = upstream.as_millis() as u64;
            if now.saturating_sub(last) >= limit {
                return Err(Failure::Timeout);
            }
            return Ok(last + limit);
        }
        let limit = client.as_millis() as u64;
        let waiting = now.saturating_sub(since);
        // The client's time so far, against what its bytes pay for at the least rate (and
        // never less than the route's `timeout`).
        let spent = client_time + waiting;
        let paid = self.received.load(Ordering::Relaxed).saturating_mul(1000) / MIN_RATE;
        let allowed = paid.max(limit);
        if waiting >= limit || spent >= allowed {
            return Err(Failure::ClientTimeout);
        }
        Ok((since + limit).min(now + (allowed - spent)))
    }
}

/// Resolves when a request's overall deadline has passed, with whose failure it is.
///
/// An upload is the client's time: while a streamed body is on its way the deadline does
/// not run, and it is pushed back by as long as the upload took. Each side is bounded
/// instead: a client that sends nothing for the route's `timeout` (`client_stall`) fails
/// as the client's (`ClientTimeout`, 408), an upstream connection that takes nothing for
/// `per_try_timeout` (`upstream_stall`) as the upstream's (`Timeout`).
pub async fn deadline(
    upload: Option<&Upload>,
    deadline: Instant,
    client_stall: Duration,
    upstream_stall: Duration,
) -> Failure {
    let Some(upload) = upload else {
        tokio::time::sleep_until(deadline).await;
        return Failure::Timeout;
    };
    while !upload.done.load(Ordering::Acquire) {
        // A stall that ends only moves the answer later: waking at the earlier time and
        // looking again is enough, so no timer is set per chunk.
        let next = match upload.stalled(client_stall, upstream_stall) {
            Ok(next) => upload.base + Duration::from_millis(next),
            Err(failure) => return failure,
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = upload.handed_over() => {}
            () = upload.client_wait.notified() => {}
        }
    }
    let took = Duration::from_millis(upload.done_at.load(Ordering::Relaxed));
    tokio::time::sleep_until(deadline + took).await;
    Failure::Timeout
}
