//! Retry decisions that need no I/O: which outcomes the policy retries, which requests may
//! be retried at all, and what a `Retry-After` header asks for.
//!
//! The rule that matters most: a request whose method is not idempotent, and that carries
//! no idempotency key, is sent at most once, except after a connect failure, when provably
//! nothing reached the upstream. Duplicating a POST is worse than failing it.

use std::num::IntErrorKind;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

use crate::config::{Condition, RetryPolicy};
use crate::vocab::reason::Failure;

/// Whether `when` lists this failure.
pub fn retries_failure(policy: &RetryPolicy, failure: Failure) -> bool {
    let wanted = match failure {
        Failure::ConnectFailure => Condition::ConnectFailure,
        Failure::Reset => Condition::Reset,
        Failure::Timeout => Condition::Timeout,
        _ => return false,
    };
    policy.when.contains(&wanted)
}

/// Whether `when` lists this upstream status.
pub fn retries_status(policy: &RetryPolicy, status: StatusCode) -> bool {
    let code = status.as_u16();
    policy.when.iter().any(|c| match c {
        Condition::Status(s) => *s == code,
        Condition::Any5xx => (500..=599).contains(&code),
        _ => false,
    })
}

/// Whether the request may be sent more than once (idempotent method or idempotency key).
pub fn may_resend(policy: &RetryPolicy, method: &Method, headers: &HeaderMap) -> bool {
    policy.methods.contains(method)
        || policy
            .idempotency_header
            .as_ref()
            .is_some_and(|h| headers.contains_key(h))
}

/// How long a 429 or 503 asks the client to wait, from `Retry-After` (seconds or HTTP-date).
/// A number of seconds too large for `u64` is a very long wait (`Duration::MAX`), not an
/// unreadable header: it must end the retries like any wait beyond the deadline.
pub fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<u64>() {
        Ok(secs) => return Some(Duration::from_secs(secs)),
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => return Some(Duration::MAX),
        Err(_) => {}
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers("2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_after(StatusCode::BAD_GATEWAY, &headers("2")), None);
    }

    #[test]
    fn an_oversized_retry_after_is_a_long_wait() {
        for value in ["99999999999999999999", "18446744073709551616"] {
            assert_eq!(
                retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers(value)),
                Some(Duration::MAX),
                "{value}"
            );
        }
    }

    #[test]
    fn retry_after_as_http_date() {
        let later = SystemTime::now() + Duration::from_secs(30);
        let h = headers(&httpdate::fmt_http_date(later));
        let d = retry_after(StatusCode::TOO_MANY_REQUESTS, &h).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let past = headers("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &past),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &headers("soon")),
            None
        );
    }
}
