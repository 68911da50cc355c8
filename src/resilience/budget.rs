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
//!
//! That is the static rule, kept exactly for `adaptive: false`. With `adaptive: true` (the
//! default since SPEC §7.1) the room follows the retry yield instead: see
//! [`super::yield_budget`].

use std::sync::Mutex;

use tokio::time::Instant;

use super::window::Window;
use super::yield_budget::{YieldBudget, WINDOW};
use crate::config::BudgetPolicy;

/// A per-route retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    /// (first attempts, retries) over the last 10 s.
    window: Mutex<Window>,
    /// The adaptive state, when `policy.adaptive`.
    adaptive: Option<Mutex<YieldBudget>>,
}

impl RetryBudget {
    /// A budget with an empty window.
    pub fn new(policy: BudgetPolicy) -> RetryBudget {
        RetryBudget {
            policy,
            window: Mutex::new(Window::new(WINDOW, Instant::now())),
            adaptive: policy
                .adaptive
                .then(|| Mutex::new(YieldBudget::new(Instant::now()))),
        }
    }

    /// The policy this budget enforces.
    pub fn policy(&self) -> BudgetPolicy {
        self.policy
    }

    /// Records a first attempt (a client request going upstream).
    pub fn record_request(&self) {
        if let Some(adaptive) = &self.adaptive {
            if let Ok(mut a) = adaptive.lock() {
                a.record_request(Instant::now());
            }
            return;
        }
        if let Ok(mut w) = self.window.lock() {
            w.add(Instant::now(), 1, 0);
        }
    }

    /// Records how a granted retry ended (`true`: its answer was final). Only the adaptive
    /// budget learns from it.
    pub fn record_retry(&self, succeeded: bool) {
        if let Some(Ok(mut a)) = self.adaptive.as_ref().map(Mutex::lock) {
            a.record_outcome(Instant::now(), succeeded);
        }
    }

    /// The retry yield the adaptive budget believes now; `None` for a static budget.
    pub fn retry_yield(&self) -> Option<f64> {
        let mut a = self.adaptive.as_ref()?.lock().ok()?;
        Some(a.yield_now(Instant::now()))
    }

    /// Takes one retry from the budget; `false` means the retry must be skipped.
    /// `attempts` is the route's, which bounds the adaptive budget's room.
    pub fn try_retry(&self, attempts: u32) -> bool {
        if let Some(adaptive) = &self.adaptive {
            let Ok(mut a) = adaptive.lock() else {
                return false;
            };
            return a.try_retry(Instant::now(), attempts, self.policy.min_per_second);
        }
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
    use std::time::Duration;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(BudgetPolicy {
            ratio,
            min_per_second,
            adaptive: false,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_budget_learns_from_retry_outcomes() {
        let b = RetryBudget::new(BudgetPolicy {
            ratio: 0.0,
            min_per_second: 0,
            adaptive: true,
        });
        assert_eq!(b.retry_yield(), Some(1.0));
        for _ in 0..10 {
            b.record_request();
        }
        assert!(b.try_retry(3), "ratio 0 does not bind the adaptive budget");
        for _ in 0..9 {
            b.record_retry(false);
        }
        assert_eq!(b.retry_yield(), Some(0.1));
        assert!(!b.try_retry(3), "20 x 0.01 leaves no room after one retry");
        assert_eq!(budget(0.2, 0).retry_yield(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests_without_floor() {
        let b = budget(0.2, 0);
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_retry(3)).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_retries_with_no_traffic() {
        let b = budget(0.0, 1);
        let granted = (0..50).filter(|_| b.try_retry(3)).count();
        assert_eq!(granted, 10, "min_per_second x 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_budget_allows_nothing() {
        let b = budget(0.0, 0);
        b.record_request();
        assert!(!b.try_retry(3));
    }

    #[tokio::test(start_paused = true)]
    async fn old_traffic_leaves_the_window() {
        let b = budget(0.5, 0);
        for _ in 0..10 {
            b.record_request();
        }
        assert_eq!((0..10).filter(|_| b.try_retry(3)).count(), 5);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            !b.try_retry(3),
            "requests of 11 s ago no longer earn retries"
        );
        for _ in 0..4 {
            b.record_request();
        }
        assert_eq!((0..10).filter(|_| b.try_retry(3)).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides_one_second_at_a_time() {
        let b = budget(1.0, 0);
        for _ in 0..3 {
            b.record_request();
        }
        tokio::time::advance(Duration::from_millis(9_500)).await;
        b.record_request();
        assert_eq!((0..10).filter(|_| b.try_retry(3)).count(), 4);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        // The first three requests left the window; the four retries taken at 9.5 s did not.
        assert_eq!((0..10).filter(|_| b.try_retry(3)).count(), 0);
        for _ in 0..4 {
            b.record_request();
        }
        assert_eq!(
            (0..10).filter(|_| b.try_retry(3)).count(),
            1,
            "5 requests earn 5, 4 spent"
        );
    }
}
