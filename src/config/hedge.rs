//! The `hedge` key (SPEC §7.2): its raw form, its validated form and its checks.
//!
//! `delay` and `max_ratio` are checked while the YAML layer still knows the line (a `0s`
//! delay or a ratio of 1.5 is refused with `FILE:LINE:COLUMN`). A hedge on a route whose
//! requests can never be sent twice is a warning, not an error: the config works as
//! written, the hedge simply never fires, and an operator should hear about it.

use std::time::Duration;

use serde::Deserialize;

use super::types::{Matcher, RetryPolicy};
use super::units::parse_duration;

/// `hedge:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHedge {
    pub delay: Option<HedgeDelay>,
    pub max_ratio: Option<UnitRatio>,
}

/// When a hedge starts: after the route's p95, or after a fixed time (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HedgeDelay {
    /// The route's p95 time to response headers of successful first attempts; no hedge
    /// before [`AUTO_MIN_SAMPLES`] of them.
    Auto,
    Fixed(Duration),
}

/// `delay: auto` waits for this many successful first attempts before hedging.
pub const AUTO_MIN_SAMPLES: usize = 100;

impl TryFrom<String> for HedgeDelay {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.trim() == "auto" {
            return Ok(HedgeDelay::Auto);
        }
        let d = parse_duration(&text).map_err(|e| format!("{e} (or `auto`)"))?;
        if d.is_zero() {
            return Err(
                "a hedge delay of 0 would double every request; give a duration > 0 or `auto`"
                    .to_owned(),
            );
        }
        Ok(HedgeDelay::Fixed(d))
    }
}

/// A share in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct UnitRatio(pub f64);

impl TryFrom<f64> for UnitRatio {
    type Error = String;

    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(UnitRatio(v))
        } else {
            Err(format!("{v} is outside 0..1"))
        }
    }
}

/// A validated hedge policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgePolicy {
    pub delay: HedgeDelay,
    /// Hedges at most this share of first attempts over a sliding 10 s.
    pub max_ratio: f64,
}

impl From<RawHedge> for HedgePolicy {
    fn from(raw: RawHedge) -> Self {
        HedgePolicy {
            delay: raw.delay.unwrap_or(HedgeDelay::Auto),
            max_ratio: raw.max_ratio.map_or(0.05, |r| r.0),
        }
    }
}

/// A warning when `hedge` is set on a route none of whose requests may be sent twice:
/// its methods are all outside `retry.methods` and no idempotency header can vouch.
pub fn warn_if_never_resent(
    at: &str,
    name: &str,
    matcher: &Matcher,
    retry: &RetryPolicy,
    warnings: &mut Vec<String>,
) {
    let Some(methods) = &matcher.methods else {
        return;
    };
    if retry.idempotency_header.is_some() || methods.iter().any(|m| retry.methods.contains(m)) {
        return;
    }
    warnings.push(format!(
        "{at}.hedge: route `{name}` hedges, but its methods ({}) are never sent twice (not in retry.methods, and idempotency_header is null): no request will be hedged",
        methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
