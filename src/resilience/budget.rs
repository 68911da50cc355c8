//! The retry budget: retries may add at most `ratio` of live traffic, plus a small floor.
//!
//! Why a budget and not only `attempts`? `attempts: 3` alone means that when the backend is
//! fully down every client request becomes three upstream requests: the outage triples the
//! load on the service that is trying to come back. A budget scales retries with traffic
//! instead: over a sliding 10 s window, retries may number at most
//! `ratio * first_attempts + min_per_second * 10`. With the default 20% the backend sees
//! about 1.2x its normal load during an outage, not 3x; the floor keeps retries useful
//! when traffic is low. A retry over budget is skipped, never queued.
//!
//! The window is ten one-second buckets, so the bookkeeping is O(1) and memory is fixed.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BudgetPolicy;

const BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_secs(1);

/// A per-route retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Start of the bucket at `head`.
    head_start: Instant,
    head: usize,
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
}

impl Window {
    /// Moves the window forward to `now`, clearing buckets that fell out of it.
    fn advance(&mut self, now: Instant) {
        let mut steps = 0;
        while now.saturating_duration_since(self.head_start) >= BUCKET && steps < BUCKETS {
            self.head = (self.head + 1) % BUCKETS;
            self.requests[self.head] = 0;
            self.retries[self.head] = 0;
            self.head_start += BUCKET;
            steps += 1;
        }
        if now.saturating_duration_since(self.head_start) >= BUCKET {
            // Idle for longer than the window: everything is cleared; restart at now.
            self.head_start = now;
        }
    }
}

impl RetryBudget {
    /// A budget with an empty window.
    pub fn new(policy: BudgetPolicy) -> RetryBudget {
        RetryBudget {
            policy,
            window: Mutex::new(Window {
                head_start: Instant::now(),
                head: 0,
                requests: [0; BUCKETS],
                retries: [0; BUCKETS],
            }),
        }
    }

    /// Records a first attempt (a client request going upstream).
    pub fn record_request(&self) {
        if let Ok(mut w) = self.window.lock() {
            w.advance(Instant::now());
            let head = w.head;
            w.requests[head] += 1;
        }
    }

    /// Takes one retry from the budget; `false` means the retry must be skipped.
    pub fn try_retry(&self) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        w.advance(Instant::now());
        let requests: u64 = w.requests.iter().sum();
        let retries: u64 = w.retries.iter().sum();
        let allowed = self.policy.ratio * requests as f64
            + f64::from(self.policy.min_per_second) * BUCKETS as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let head = w.head;
        w.retries[head] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(BudgetPolicy {
            ratio,
            min_per_second,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests_without_floor() {
        let b = budget(0.2, 0);
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_retries_with_no_traffic() {
        let b = budget(0.0, 1);
        let granted = (0..50).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 10, "min_per_second x 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_budget_allows_nothing() {
        let b = budget(0.0, 0);
        b.record_request();
        assert!(!b.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn old_traffic_leaves_the_window() {
        let b = budget(0.5, 0);
        for _ in 0..10 {
            b.record_request();
        }
        assert_eq!((0..10).filter(|_| b.try_retry()).count(), 5);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            !b.try_retry(),
            "requests of 11 s ago no longer earn retries"
        );
        for _ in 0..4 {
            b.record_request();
        }
        assert_eq!((0..10).filter(|_| b.try_retry()).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides_one_second_at_a_time() {
        let b = budget(1.0, 0);
        for _ in 0..3 {
            b.record_request();
        }
        tokio::time::advance(Duration::from_millis(9_500)).await;
        b.record_request();
        assert_eq!((0..10).filter(|_| b.try_retry()).count(), 4);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        // The first three requests left the window; the four retries taken at 9.5 s did not.
        assert_eq!((0..10).filter(|_| b.try_retry()).count(), 0);
        for _ in 0..4 {
            b.record_request();
        }
        assert_eq!(
            (0..10).filter(|_| b.try_retry()).count(),
            1,
            "5 requests earn 5, 4 spent"
        );
    }
}
