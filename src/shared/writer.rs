//! Writing copies to Redis off the request path: a bounded queue and one task.
//!
//! A response body finishing is what stores a copy; it must never wait for Redis. So the
//! store only puts the copy (an `Arc`, no bytes copied) on a queue of at most [`QUEUE`]
//! entries and [`QUEUE_BYTES`] bytes, and drops it when either is full (counted as
//! `op="queue-full"`): a replica whose Redis is slow loses shared copies, never latency
//! nor memory. The task encodes the envelope and sets it with its TTL, each write bounded
//! by `shared.timeout`; while Redis is down the writes are skipped at once.
//!
//! The byte bound matters because a queued copy keeps its body alive after the local store
//! has evicted it: 256 entries of up to 1 MiB each would be 256 MiB beside the store's
//! own `max_bytes`. A copy's bytes count from the moment it is queued until its write is
//! done (or it is dropped, whatever the reason: the count is returned by `Drop`).

use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Bytes of copies waiting to be written or being written, at most (a copy is at most
/// 1 MiB of body: at least 15 always fit).
pub const QUEUE_BYTES: usize = 16 << 20;

/// One copy to write.
pub struct Write {
    pub route: Arc<str>,
    pub key: Vec<u8>,
    pub stored: Arc<Stored>,
    pub ttl: Duration,
}

impl Write {
    /// What the copy holds in memory, roughly: body, headers and key.
    fn bytes(&self) -> usize {
        let headers: usize = (self.stored.headers.iter())
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.stored.body.len() + headers + self.key.len() + 128
    }
}

/// The sending side: the channel and the bytes it holds.
pub struct Queue {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<AtomicUsize>,
}

/// A copy on the queue, with its share of the byte bound (returned on drop).
pub struct Queued {
    write: Write,
    held: Held,
}

struct Held {
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A new queue and the receiver [`run`] reads.
pub fn channel() -> (Queue, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let bytes = Arc::new(AtomicUsize::new(0));
    (Queue { tx, bytes }, rx)
}

impl Queue {
    /// Queues a copy when both bounds allow; `false` when it was dropped.
    fn push(&self, write: Write) -> bool {
        let bytes = write.bytes();
        let before = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let held = Held {
            bytes,
            total: Arc::clone(&self.bytes),
        };
        if before + bytes > QUEUE_BYTES {
            return false; // `held` gives the bytes back
        }
        self.tx.try_send(Queued { write, held }).is_ok()
    }

    /// Bytes of copies queued or being written now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Writes queued copies until the store is dropped.
pub async fn run(shared: Weak<Shared>, mut queue: mpsc::Receiver<Queued>) {
    while let Some(Queued { write, held }) = queue.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        put(&shared, write).await;
        drop(held);
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

/// Queues a copy; `false` when the queue was full (in entries or bytes) and the copy
/// dropped.
pub fn queue(shared: &Shared, write: Write) -> bool {
    let queued = shared.writes.push(write);
    if !queued {
        shared.link.count_error("queue-full");
    }
    queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::store::{ResponseStore, StorePolicy};
    use bytes::Bytes;
    use http::HeaderMap;

    fn stored(body: usize) -> Arc<Stored> {
        let store = ResponseStore::new(StorePolicy {
            ttl: None,
            stale_max_age: Some(Duration::from_secs(60)),
            max_entries: 10,
            max_bytes: 4 << 20,
            key_headers: vec![],
        });
        let none = HeaderMap::new();
        store.insert(
            b"k".to_vec(),
            &none,
            HeaderMap::new(),
            Bytes::from(vec![0u8; body]),
        );
        store.stale(b"k", &none).expect("stored").0
    }

    fn write(stored: &Arc<Stored>) -> Write {
        Write {
            route: Arc::from("r"),
            key: b"k".to_vec(),
            stored: Arc::clone(stored),
            ttl: Duration::from_secs(1),
        }
    }

    #[test]
    fn bounded_by_bytes_as_well_as_entries() {
        let (queue, mut rx) = channel();
        let big = stored(1_000_000);
        let each = write(&big).bytes();
        let accepted = (0..40).filter(|_| queue.push(write(&big))).count();
        assert_eq!(accepted, QUEUE_BYTES / each, "{each} bytes each");
        assert_eq!(queue.bytes(), accepted * each);
        // A copy taken off and written (or dropped) gives its bytes back.
        drop(rx.try_recv().expect("queued"));
        assert!(queue.push(write(&big)));
        while rx.try_recv().is_ok() {}
        assert_eq!(queue.bytes(), 0, "every copy's bytes came back");

        let small = stored(10);
        let accepted = (0..QUEUE + 10)
            .filter(|_| queue.push(write(&small)))
            .count();
        assert_eq!(accepted, QUEUE, "the entry bound still holds");
        drop(rx);
        assert!(!queue.push(write(&small)));
        assert_eq!(queue.bytes(), 0, "dropped with the receiver");
    }
}
