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

use super::window::Window;
use crate::config::BudgetPolicy;

const WINDOW: Duration = Duration::from_secs(10);

/// A per-route retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    /// (first attempts, retries) over the last 10 s.
    window: Mutex<Window>,
}

impl RetryBudget {
    /// A budget with an empty window.
    pub fn new(policy: BudgetPolicy) -> RetryBudget {
        RetryBudget {
            policy,
            window: Mutex::new(Window::new(WINDOW, Instant::now())),
        }
    }

    /// The policy this budget enforces.
    pub fn policy(&self) -> BudgetPolicy {
        self.policy
    }

    /// Records a first attempt (a client request going upstream).
    pub fn record_request(&self) {
        if let Ok(mut w) = self.window.lock() {
            w.add(Instant::now(), 1, 0);
        }
    }

    /// Takes one retry from the budget; `false` means the retry must be skipped.
    pub fn try_retry(&self) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        let now = Instant::now();
        let (requests, retries) = w.sums(now);
        let allowed = self.policy.ratio * requests as f64
            + f64::from(self.policy.min_per_second) * WINDOW.as_secs_f64();
        if (retries + 1) as f64 > allowed {
            return false;
        }
        w.add(now, 0, 1);
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
