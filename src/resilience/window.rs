//! A sliding window of two counters in ten buckets: O(1) to update, fixed memory.
//!
//! The retry budget counts (first attempts, retries) in it and the circuit breaker counts
//! (attempts, failures). Time comes from `tokio::time::Instant`, so tests run it on paused
//! time.

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;

/// Two counters summed over the last `span`, in steps of `span / 10`.
#[derive(Debug)]
pub struct Window {
    bucket: Duration,
    /// Start of the bucket at `head`.
    head_start: Instant,
    head: usize,
    a: [u64; BUCKETS],
    b: [u64; BUCKETS],
}

impl Window {
    /// An empty window covering `span`.
    pub fn new(span: Duration, now: Instant) -> Window {
        Window {
            bucket: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            head_start: now,
            head: 0,
            a: [0; BUCKETS],
            b: [0; BUCKETS],
        }
    }

    /// Moves the window forward to `now`, clearing buckets that fell out of it.
    fn advance(&mut self, now: Instant) {
        let mut elapsed = now.saturating_duration_since(self.head_start);
        // Still within the head bucket, the usual case: one clock subtraction.
        if elapsed < self.bucket {
            return;
        }
        if elapsed >= self.bucket * BUCKETS as u32 {
            // Idle for the whole window or longer: every bucket is old.
            self.clear(now);
            return;
        }
        while elapsed >= self.bucket {
            self.head = (self.head + 1) % BUCKETS;
            self.a[self.head] = 0;
            self.b[self.head] = 0;
            self.head_start += self.bucket;
            elapsed -= self.bucket;
        }
    }

    /// Adds to the counters at `now`.
    pub fn add(&mut self, now: Instant, a: u64, b: u64) {
        self.advance(now);
        self.a[self.head] += a;
        self.b[self.head] += b;
    }

    /// Adds to the counters at `now`, then the two sums: `add` and `sums` with one move of
    /// the window.
    pub fn add_then_sums(&mut self, now: Instant, a: u64, b: u64) -> (u64, u64) {
        self.add(now, a, b);
        self.totals()
    }

    /// The two sums over the window at `now`.
    pub fn sums(&mut self, now: Instant) -> (u64, u64) {
        self.advance(now);
        self.totals()
    }

    fn totals(&self) -> (u64, u64) {
        (self.a.iter().sum(), self.b.iter().sum())
    }

    /// Empties the window.
    pub fn clear(&mut self, now: Instant) {
        self.a = [0; BUCKETS];
        self.b = [0; BUCKETS];
        self.head_start = now;
    }
}
