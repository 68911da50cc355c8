//! The `shared:` block (SPEC §7.4) and the `scope:` key of `rate_limit`, `stale_if_error`
//! and `cache`: state that the replicas of one service keep together in Redis.
//!
//! The Redis URL may carry a password, so it lives in a [`RedisUrl`] whose `Debug` and
//! `Display` print it with the password replaced: a config dumped into a log, an error or
//! `outrigger check` output cannot leak it. Errors about the URL never quote it either.
//!
//! `OUTRIGGER_REDIS_URL` wins over `shared.redis` (environment over file, as everywhere):
//! Kubernetes users keep the URL in a Secret and the rest in a ConfigMap. It is read here,
//! at every load and reload, so the value in force is always the one the file was checked
//! with.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::units::ConfigDuration;
use super::{ConfigError, Route};

/// The environment variable that overrides `shared.redis`.
pub const REDIS_URL_ENV: &str = "OUTRIGGER_REDIS_URL";

/// `shared.namespace` when the file says none (SPEC §7.4 shows it as the default). It is
/// the same for every service: two services sharing one Redis with it read each other's
/// buckets and copies wherever route names and paths agree, so the shared store warns at
/// start when it is in use, and README tells each service to set its own.
pub const DEFAULT_NAMESPACE: &str = "outrigger";

/// Whether a policy's state lives in this replica only or in the shared store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Per replica, in memory (the default).
    #[default]
    Local,
    /// All replicas together, through `shared.redis`.
    Shared,
}

/// `shared:` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShared {
    pub redis: Option<String>,
    pub namespace: Option<String>,
    pub timeout: Option<ConfigDuration>,
}

/// The validated `shared:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    pub redis: RedisUrl,
    /// Key prefix; the replicas of one service share one namespace.
    pub namespace: String,
    /// Bound on every Redis operation; slower counts as unavailable.
    pub timeout: Duration,
}

/// A `redis://` or `rediss://` URL, printed without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL with its password, for the Redis client only.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The URL with any password (or lone user-info) replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "***".to_owned();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or("");
                let user = if rest[..at].contains(':') { user } else { "" };
                format!("{scheme}://{user}:***@{}", &rest[at + 1..])
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Validates `shared:` (with `OUTRIGGER_REDIS_URL` laid over it) against the routes that
/// ask for `scope: shared`.
pub fn validate(
    raw: Option<RawShared>,
    routes: &[&Route],
) -> Result<Option<SharedConfig>, ConfigError> {
    let env = std::env::var(REDIS_URL_ENV).ok().filter(|v| !v.is_empty());
    validate_with(raw, routes, env)
}

fn validate_with(
    raw: Option<RawShared>,
    routes: &[&Route],
    env: Option<String>,
) -> Result<Option<SharedConfig>, ConfigError> {
    // `defaults` (last) first: routes that inherit its scope are not the place to fix.
    let last = routes.len().saturating_sub(1);
    let order = std::iter::once(last).chain(0..last);
    let wanted = order.filter(|&i| i < routes.len()).find_map(|i| {
        let r = routes[i];
        let at = if i == last {
            "defaults".to_owned()
        } else {
            format!("routes[{i}]")
        };
        shared_part(r).map(|part| format!("{at}.{part}"))
    });
    let raw = raw.unwrap_or_default();
    let (url, field) = match (env, raw.redis) {
        (Some(url), _) => (url, REDIS_URL_ENV.to_owned()),
        (None, Some(url)) => (url, "shared.redis".to_owned()),
        (None, None) => {
            return match wanted {
                Some(at) => Err(ConfigError::new(
                    at,
                    "scope: shared needs shared.redis (or OUTRIGGER_REDIS_URL)",
                )),
                None => Ok(None),
            };
        }
    };
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    if !scheme_ok || redis::parse_redis_url(&url).is_none() {
        return Err(ConfigError::new(
            field,
            "is not a redis:// or rediss:// URL (value not shown: it may hold a password)",
        ));
    }
    if url.starts_with("rediss://") {
        return Err(ConfigError::new(
            field,
            "rediss:// is not supported by this build yet; use redis:// on a private network",
        ));
    }
    let namespace = raw
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if namespace.is_empty() || namespace.len() > 64 || namespace.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            "shared.namespace",
            format!("`{namespace}` must be 1 to 64 characters without spaces"),
        ));
    }
    let timeout = raw.timeout.map_or(Duration::from_millis(20), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(5) {
        return Err(ConfigError::new(
            "shared.timeout",
            "must be longer than 0s and at most 5s",
        ));
    }
    Ok(Some(SharedConfig {
        redis: RedisUrl(url),
        namespace,
        timeout,
    }))
}

/// The first part of `route` with `scope: shared`, if any.
fn shared_part(route: &Route) -> Option<&'static str> {
    let p = &route.policy;
    if p.rate_limit
        .as_ref()
        .is_some_and(|r| r.scope == Scope::Shared)
    {
        return Some("rate_limit.scope");
    }
    if p.stale_if_error
        .as_ref()
        .is_some_and(|s| s.scope == Scope::Shared)
    {
        return Some("stale_if_error.scope");
    }
    if p.cache.as_ref().is_some_and(|c| c.scope == Scope::Shared) {
        return Some("cache.scope");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let url = |s: &str| RedisUrl(s.to_owned());
        assert_eq!(
            url("redis://:hunter2@127.0.0.1:6379/0").to_string(),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            url("redis://app:hunter2@h:1/2").redacted(),
            "redis://app:***@h:1/2"
        );
        assert_eq!(url("redis://hunter2@h/").redacted(), "redis://:***@h/");
        assert_eq!(url("redis://h:6379").redacted(), "redis://h:6379");
        assert!(!format!("{:?}", url("redis://:sekrit@h")).contains("sekrit"));
    }

    #[test]
    fn env_wins_and_bad_urls_are_not_quoted() {
        let raw = || RawShared {
            redis: Some("redis://file:6379".into()),
            ..Default::default()
        };
        let from_env = validate_with(Some(raw()), &[], Some("redis://env:6379".into()));
        assert_eq!(
            from_env.unwrap().unwrap().redis.secret(),
            "redis://env:6379"
        );
        let bad = RawShared {
            redis: Some("http://:sekrit@h".into()),
            ..Default::default()
        };
        let e = validate_with(Some(bad), &[], None).unwrap_err();
        assert_eq!(e.field, "shared.redis");
        assert!(!e.to_string().contains("sekrit"), "{e}");
        let defaults = validate_with(Some(raw()), &[], None).unwrap().unwrap();
        assert_eq!(defaults.namespace, "outrigger");
        assert_eq!(defaults.timeout, Duration::from_millis(20));
    }
}
