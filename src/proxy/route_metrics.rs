//! A route's hot metric series, resolved once and kept. `with_label_values` hashes every
//! label value and looks the series up in a locked map on each call; every request touched
//! four series that way (`outrigger_requests_total`, the request duration, the attempts
//! and their duration), about 650 instructions a request. Here each series a route has
//! used is found again by a scan of a short list.
//!
//! The lists hold the label combinations seen (first use creates the series, as
//! `with_label_values` does, so nothing appears in `/metrics` earlier than before), at most
//! [`CAP`] each; beyond that a lookup goes to the metric itself.
//!
//! The retry and fallback counters, labelled by REASON, are kept the same way: in an outage
//! every failing request counts two retries and a fallback, at about 290 instructions a
//! lookup by label (`FAIL=1 bash bench/per_request.sh`).

use std::sync::Mutex;

use prometheus::{Histogram, IntCounter};

use crate::metrics::Metrics;
use crate::vocab::reason::Reason;

/// Entries per list; a route sees a handful of statuses and outcomes.
const CAP: usize = 32;

/// The series of one route (`RouteState::series`).
#[derive(Default)]
pub struct RouteMetrics {
    requests: Series<(&'static str, u16, &'static str), IntCounter>,
    durations: Series<&'static str, Histogram>,
    attempts: Series<&'static str, IntCounter>,
    attempt_duration: Series<(), Histogram>,
    retries: Series<Reason, IntCounter>,
    fallbacks: Series<Reason, IntCounter>,
}

impl RouteMetrics {
    /// `outrigger_requests_total{route,method,status,outcome}`.
    pub fn request(
        &self,
        metrics: &Metrics,
        route: &str,
        method: &'static str,
        status: http::StatusCode,
        outcome: &'static str,
    ) -> IntCounter {
        self.requests.get((method, status.as_u16(), outcome), || {
            let labels = [route, method, status.as_str(), outcome];
            metrics.requests.with_label_values(&labels)
        })
    }

    /// `outrigger_request_duration_seconds{route,outcome}`.
    pub fn duration(&self, metrics: &Metrics, route: &str, outcome: &'static str) -> Histogram {
        self.durations.get(outcome, || {
            metrics
                .request_duration
                .with_label_values(&[route, outcome])
        })
    }

    /// `outrigger_upstream_attempts_total{route,result}`.
    pub fn attempt(&self, metrics: &Metrics, route: &str, result: &'static str) -> IntCounter {
        self.attempts.get(result, || {
            metrics
                .upstream_attempts
                .with_label_values(&[route, result])
        })
    }

    /// `outrigger_upstream_attempt_duration_seconds{route}`.
    pub fn attempt_duration(&self, metrics: &Metrics, route: &str) -> Histogram {
        self.attempt_duration.get((), || {
            metrics
                .upstream_attempt_duration
                .with_label_values(&[route])
        })
    }
}

impl RouteMetrics {
    /// `outrigger_retries_total{route,reason}`.
    pub fn retry(&self, metrics: &Metrics, route: &str, reason: Reason) -> IntCounter {
        self.retries.get(reason, || {
            metrics
                .retries
                .with_label_values(&[route, &reason.to_string()])
        })
    }

    /// `outrigger_fallbacks_total{route,reason}`.
    pub fn fallback(&self, metrics: &Metrics, route: &str, reason: Reason) -> IntCounter {
        self.fallbacks.get(reason, || {
            metrics
                .fallbacks
                .with_label_values(&[route, &reason.to_string()])
        })
    }
}

/// Series by label values, in the order first used.
struct Series<K, M>(Mutex<Vec<(K, M)>>);

impl<K, M> Default for Series<K, M> {
    fn default() -> Self {
        Series(Mutex::new(Vec::new()))
    }
}

impl<K: PartialEq + Copy, M: Clone> Series<K, M> {
    fn get(&self, key: K, make: impl FnOnce() -> M) -> M {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, series)) = list.iter().find(|(k, _)| *k == key) {
            return series.clone();
        }
        let series = make();
        if list.len() < CAP {
            list.push((key, series.clone()));
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_resolved_once_and_counts_where_with_label_values_would() {
        let metrics = Metrics::new();
        let series = RouteMetrics::default();
        for _ in 0..3 {
            series
                .request(&metrics, "r", "GET", http::StatusCode::OK, "upstream")
                .inc();
        }
        series
            .request(&metrics, "r", "GET", http::StatusCode::BAD_GATEWAY, "error")
            .inc();
        let direct = |status| {
            metrics
                .requests
                .with_label_values(&[
                    "r",
                    "GET",
                    status,
                    if status == "200" { "upstream" } else { "error" },
                ])
                .get()
        };
        assert_eq!(direct("200"), 3);
        assert_eq!(direct("502"), 1);
        assert_eq!(series.requests.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn retries_and_fallbacks_count_under_their_reason_s_label() {
        use crate::vocab::reason::Failure;
        let metrics = Metrics::new();
        let series = RouteMetrics::default();
        let s503 = Reason::Status(http::StatusCode::SERVICE_UNAVAILABLE);
        for reason in [s503, s503, Reason::Failure(Failure::ConnectFailure)] {
            series.retry(&metrics, "r", reason).inc();
        }
        series.fallback(&metrics, "r", s503).inc();
        let retries = |reason: &str| metrics.retries.with_label_values(&["r", reason]).get();
        assert_eq!((retries("status-503"), retries("connect-failure")), (2, 1));
        assert_eq!(
            metrics
                .fallbacks
                .with_label_values(&["r", "status-503"])
                .get(),
            1
        );
        assert_eq!(series.retries.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn past_the_cap_lookups_go_to_the_metric() {
        let metrics = Metrics::new();
        let series = RouteMetrics::default();
        for code in 200..(200 + CAP as u16 + 5) {
            let status = http::StatusCode::from_u16(code).unwrap();
            series
                .request(&metrics, "r", "GET", status, "upstream")
                .inc();
        }
        assert_eq!(series.requests.0.lock().unwrap().len(), CAP);
        let last = (200 + CAP as u16 + 4).to_string();
        let count = metrics
            .requests
            .with_label_values(&["r", "GET", &last, "upstream"])
            .get();
        assert_eq!(count, 1);
    }
}
