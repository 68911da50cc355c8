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
    /// End of the bucket at `head` (the start of the next): a time before it is in the
    /// head bucket.
    head_end: Instant,
    head: usize,
    a: [u64; BUCKETS],
    b: [u64; BUCKETS],
}

impl Window {
    /// An empty window covering `span`.
    pub fn new(span: Duration, now: Instant) -> Window {
        let bucket = (span / BUCKETS as u32).max(Duration::from_millis(1));
        Window {
            bucket,
            head_end: now + bucket,
            head: 0,
            a: [0; BUCKETS],
            b: [0; BUCKETS],
        }
    }

    /// Moves the window forward to `now`, clearing buckets that fell out of it.
    fn advance(&mut self, now: Instant) {
        // Still within the head bucket, the usual case: one comparison of instants (a
        // subtraction of instants costs several times that, and this runs for the budget
        // and the breaker on every request).
        if now < self.head_end {
            return;
        }
        if now - self.head_end >= self.bucket * (BUCKETS as u32 - 1) {
            // Idle for the whole window or longer: every bucket is old.
            self.clear(now);
            return;
        }
        while now >= self.head_end {
            self.head = (self.head + 1) % BUCKETS;
            self.a[self.head] = 0;
            self.b[self.head] = 0;
            self.head_end += self.bucket;
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
        self.head_end = now + self.bucket;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_the_window_a_bucket_at_a_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Window::new(Duration::from_millis(1000), t0);
        w.add(t0, 1, 0);
        w.add(ms(99), 1, 1);
        assert_eq!(w.sums(ms(99)), (2, 1), "the same bucket");
        w.add(ms(100), 4, 0);
        assert_eq!(
            w.sums(ms(999)),
            (6, 1),
            "all ten buckets still in the window"
        );
        assert_eq!(
            w.sums(ms(1000)),
            (4, 0),
            "the first bucket left at one span"
        );
        assert_eq!(w.sums(ms(1099)), (4, 0));
        assert_eq!(w.sums(ms(1100)), (0, 0), "the second left one bucket later");
        // In the bucket that began at 1100: it leaves at 2100.
        w.add(ms(1150), 2, 2);
        assert_eq!(w.sums(ms(2099)), (2, 2));
        assert_eq!(w.sums(ms(2100)), (0, 0));
    }

    #[test]
    fn a_window_idle_for_its_span_or_longer_starts_empty() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_millis(1000), t0);
        w.add(t0 + Duration::from_millis(50), 3, 3);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(w.sums(later), (0, 0));
        w.add(later, 1, 0);
        assert_eq!(w.sums(later + Duration::from_millis(999)), (1, 0));
        assert_eq!(w.sums(later + Duration::from_millis(1000)), (0, 0));
    }
}
