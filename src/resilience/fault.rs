//! Fault injection for drills: answer a share of requests at once with an error status, or
//! delay a share before the upstream call, so a team can watch its clients, fallbacks and
//! dashboards react to an outage before a real one happens. Off unless a route has `fault`.

use std::time::Duration;

use http::StatusCode;

use crate::config::FaultPolicy;

/// What the dice decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Answer with this status instead of calling the upstream.
    pub abort: Option<StatusCode>,
    /// Wait this long before calling the upstream.
    pub delay: Option<Duration>,
}

/// Rolls the route's fault percentages for one request; `unit` gives numbers in `[0, 1)`.
pub fn roll(policy: &FaultPolicy, mut unit: impl FnMut() -> f64) -> Faults {
    let hit = |percent: f64, unit: f64| percent > 0.0 && unit * 100.0 < percent;
    Faults {
        abort: policy
            .abort
            .and_then(|(p, status)| hit(p, unit()).then_some(status)),
        delay: policy.delay.and_then(|(p, d)| hit(p, unit()).then_some(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_decide() {
        let policy = FaultPolicy {
            abort: Some((30.0, StatusCode::SERVICE_UNAVAILABLE)),
            delay: Some((100.0, Duration::from_millis(5))),
        };
        assert_eq!(
            roll(&policy, || 0.29).abort,
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(roll(&policy, || 0.30).abort, None);
        assert_eq!(
            roll(&policy, || 0.999).delay,
            Some(Duration::from_millis(5))
        );
        let off = FaultPolicy {
            abort: Some((0.0, StatusCode::BAD_GATEWAY)),
            delay: None,
        };
        assert_eq!(roll(&off, || 0.0), Faults::default(), "0% never fires");
        let mut rng = fastrand::Rng::with_seed(1);
        let aborted = (0..10_000)
            .filter(|_| roll(&policy, || rng.f64()).abort.is_some())
            .count();
        assert!((2_700..3_300).contains(&aborted), "{aborted}");
    }
}
