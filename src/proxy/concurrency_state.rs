//! A route's concurrency limit across reloads: what the limit learnt is the route's
//! knowledge of its upstream, so a reload keeps it unless the route's `concurrency:` block
//! itself changed (then the new bounds start fresh from `initial`). A replaced or removed
//! limit is retired: slots still held on it release normally, but it stops writing the
//! route's gauges, which belong to the limit in force (or are removed with it).

use std::sync::Arc;

use super::runtime::RouteState;
use crate::config::Route;
use crate::metrics::Metrics;
use crate::resilience::slots::{ConcurrencyLimit, SlotMetrics};

/// The limit for `route` in the new runtime: the old one when its policy is unchanged.
pub fn carry(
    route: &Route,
    old: Option<&RouteState>,
    metrics: &Metrics,
) -> Option<Arc<ConcurrencyLimit>> {
    let old = old.and_then(|o| o.concurrency.as_ref());
    let wanted = route.policy.concurrency;
    if let Some(limit) = old {
        if Some(*limit.policy()) == wanted {
            return Some(Arc::clone(limit));
        }
        // Before the new limit sets the gauges, so the old one cannot overwrite them.
        limit.retire();
    }
    let Some(policy) = wanted else {
        retire(None, &route.name, metrics);
        return None;
    };
    let name = [route.name.as_str()];
    let slot_metrics = SlotMetrics {
        limit: metrics.concurrency_limit.with_label_values(&name),
        in_flight: metrics.upstream_in_flight.with_label_values(&name),
        rejected: metrics.concurrency_rejected.with_label_values(&name),
    };
    Some(Arc::new(ConcurrencyLimit::new(policy, slot_metrics)))
}

/// Retires `limit` (if any) and removes the route's gauges.
pub fn retire(limit: Option<&ConcurrencyLimit>, route: &str, metrics: &Metrics) {
    if let Some(limit) = limit {
        limit.retire();
    }
    let _ = metrics.concurrency_limit.remove_label_values(&[route]);
    let _ = metrics.upstream_in_flight.remove_label_values(&[route]);
}
