//! The `concurrency:` block of SPEC §7.3: a route's adaptive limit on attempts in flight to
//! the upstream. Off by default; `null` on a route switches an inherited one off. A route
//! that sets the block replaces the defaults' block whole (as `rate_limit` does).

use std::time::Duration;

use serde::Deserialize;

use super::units::ConfigDuration;
use super::ConfigError;
use crate::resilience::concurrency::Bounds;

/// The block as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    pub initial: Option<usize>,
    pub min: Option<usize>,
    pub max: Option<usize>,
    pub queue_timeout: Option<ConfigDuration>,
}

/// A validated `concurrency:` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyPolicy {
    /// `1 <= min <= initial <= max`.
    pub bounds: Bounds,
    /// How long a first attempt may wait for a slot; zero sheds at once.
    pub queue_timeout: Duration,
}

/// Checks the block at `at` (e.g. `routes[0].concurrency`).
pub fn validate(raw: RawConcurrency, at: &str) -> Result<ConcurrencyPolicy, ConfigError> {
    let field = |key: &str| format!("{at}.{key}");
    let min = raw.min.unwrap_or(2);
    let max = raw.max.unwrap_or(512);
    for (key, value) in [("min", raw.min), ("max", raw.max), ("initial", raw.initial)] {
        if value == Some(0) {
            return Err(ConfigError::new(field(key), "must be at least 1"));
        }
    }
    if min > max {
        return Err(ConfigError::new(
            field("min"),
            format!("{min} is above max ({max})"),
        ));
    }
    let initial = raw.initial.unwrap_or(16.clamp(min, max));
    if !(min..=max).contains(&initial) {
        return Err(ConfigError::new(
            field("initial"),
            format!("{initial} is outside min..max ({min}..{max})"),
        ));
    }
    Ok(ConcurrencyPolicy {
        bounds: Bounds { initial, min, max },
        queue_timeout: raw.queue_timeout.map_or(Duration::ZERO, |d| d.0),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{from_text, Overrides};

    fn load(text: &str) -> Result<crate::config::Config, String> {
        let text = format!("upstream:\n  url: http://127.0.0.1:3000\n{text}");
        from_text(&text, Some(Path::new("/etc/o.yaml")), &Overrides::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_inherited_from_defaults() {
        let c = load("routes:\n  - { name: a, match: { path_prefix: /a } }\n").unwrap();
        assert!(c.routes[0].policy.concurrency.is_none());
        let c = load(
            "defaults:\n  concurrency: { max: 40 }\nroutes:\n  - { name: a, match: { path_prefix: /a } }\n  - { name: b, match: { path_prefix: /b }, concurrency: null }\n",
        )
        .unwrap();
        let a = c.routes[0].policy.concurrency.unwrap();
        assert_eq!((a.bounds.min, a.bounds.initial, a.bounds.max), (2, 16, 40));
        assert!(a.queue_timeout.is_zero());
        assert!(c.routes[1].policy.concurrency.is_none());
        assert!(c.default_route.policy.concurrency.is_some());
    }

    #[test]
    fn bad_values_name_the_file_and_field() {
        let cases = [
            (
                "defaults:\n  concurrency: { min: 10, max: 4 }\n",
                "/etc/o.yaml: defaults.concurrency.min: 10 is above max (4)",
            ),
            (
                "routes:\n  - { name: a, match: { path: /a }, concurrency: { initial: 1, min: 2 } }\n",
                "/etc/o.yaml: routes[0].concurrency.initial: 1 is outside min..max (2..512)",
            ),
            (
                "defaults:\n  concurrency: { max: 0 }\n",
                "/etc/o.yaml: defaults.concurrency.max: must be at least 1",
            ),
            (
                "defaults:\n  concurrency: { min: 0 }\n",
                "defaults.concurrency.min: must be at least 1",
            ),
            (
                "defaults:\n  concurrency: { inital: 3 }\n",
                "unknown field `inital`",
            ),
        ];
        for (text, want) in cases {
            let e = load(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
