//! Writing copies to Redis off the request path: a bounded queue and one task.
//!
//! A response body finishing is what stores a copy; it must never wait for Redis. So the
//! store only puts the copy (an `Arc`, no bytes copied) on a queue of [`QUEUE`] entries,
//! and drops it when the queue is full (counted as `op="queue-full"`): a replica whose
//! Redis is slow loses shared copies, never latency. The task encodes the envelope and
//! sets it with its TTL, each write bounded by `shared.timeout`; while Redis is down the
//! writes are skipped at once.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::envelope::Envelope;
use super::keys::{self, Kind};
use super::Shared;
use crate::resilience::store::Stored;

/// Copies waiting to be written, at most.
pub const QUEUE: usize = 256;

/// One copy to write.
pub struct Write {
    pub route: Arc<str>,
    pub key: Vec<u8>,
    pub stored: Arc<Stored>,
    pub ttl: Duration,
}

/// Writes queued copies until the store is dropped.
pub async fn run(shared: Weak<Shared>, mut queue: mpsc::Receiver<Write>) {
    while let Some(write) = queue.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        put(&shared, write).await;
    }
}

async fn put(shared: &Shared, write: Write) {
    let stored_at = SystemTime::now()
        .checked_sub(write.stored.stored_at.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let envelope = Envelope {
        status: http::StatusCode::OK,
        stored_at,
        vary: write.stored.vary_digests(&write.key),
        headers: write.stored.headers.clone(),
        body: write.stored.body.clone(),
    };
    let Some(bytes) = envelope.encode() else {
        return;
    };
    let key = keys::key(shared.namespace(), Kind::Response, &write.route, &write.key);
    let ttl_ms = u64::try_from(write.ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let deadline = Instant::now() + shared.link.timeout();
    let _: Option<()> = shared
        .link
        .run("put", deadline, |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await
        })
        .await;
}

/// Queues a copy; `false` when the queue was full and the copy dropped.
pub fn queue(shared: &Shared, write: Write) -> bool {
    match shared.writes.try_send(write) {
        Ok(()) => true,
        Err(_) => {
            shared.link.count_error("queue-full");
            false
        }
    }
}
