//! The shared store's metrics (SPEC §7.4): whether Redis is in use, its errors and its
//! latency per operation. Registered once with the process registry and absent from
//! `/metrics` until a `shared:` block first uses them.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Redis answers in well under a millisecond on a healthy network; the buckets reach up to
/// the largest `shared.timeout` allowed.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 5.0,
];

/// `outrigger_shared_store_*`.
#[derive(Debug, Clone)]
pub struct SharedMetrics {
    /// No labels: 1 while Redis is in use, 0 while on local fallbacks.
    pub up: IntGaugeVec,
    /// op: `connect`, `announce`, `reserve`, `get`, `put`, `queue-full`
    pub errors: IntCounterVec,
    /// op
    pub duration: HistogramVec,
}

impl SharedMetrics {
    /// Registers the shared-store metrics in `registry`.
    pub fn register(registry: &Registry) -> SharedMetrics {
        let up = IntGaugeVec::new(
            Opts::new(
                "outrigger_shared_store_up",
                "1 while the shared store (Redis) is in use, 0 while on local state",
            ),
            &[],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "outrigger_shared_store_errors_total",
                "Shared store operations that failed, timed out or were dropped",
            ),
            &["op"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "outrigger_shared_store_duration_seconds",
                "Time of shared store operations that got an answer",
            )
            .buckets(BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        registry.register(Box::new(up.clone())).expect("unique");
        registry.register(Box::new(errors.clone())).expect("unique");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        SharedMetrics {
            up,
            errors,
            duration,
        }
    }

    /// Sets `outrigger_shared_store_up`.
    pub fn set_up(&self, up: bool) {
        self.up.with_label_values(&[] as &[&str]).set(i64::from(up));
    }
}
