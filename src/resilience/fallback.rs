//! Fallbacks: a canned answer for a route whose upstream failed, so clients get something
//! useful in microseconds instead of an error.
//!
//! A fallback applies when the final REASON is in its `when` list: a failure kind
//! (`connect-failure`, `circuit-open`, ...) or the upstream's final status (`503`, `5xx`).
//! It always carries `x-outrigger-fallback: REASON` so clients and dashboards can tell a
//! canned answer from a real one.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Response;

use crate::config::{Condition, Fallback};
use crate::vocab::reason::{Failure, Reason};

/// Header naming why a fallback was served.
pub static FALLBACK: HeaderName = HeaderName::from_static("x-outrigger-fallback");

/// Whether a condition list names this reason.
pub fn listed(when: &[Condition], reason: Reason) -> bool {
    when.iter().any(|c| match (c, reason) {
        (Condition::Status(code), Reason::Status(s)) => *code == s.as_u16(),
        (Condition::Any5xx, Reason::Status(s)) => s.is_server_error(),
        (Condition::ConnectFailure, Reason::Failure(Failure::ConnectFailure))
        | (Condition::Reset, Reason::Failure(Failure::Reset))
        | (Condition::Timeout, Reason::Failure(Failure::Timeout))
        | (Condition::BadResponse, Reason::Failure(Failure::BadResponse))
        | (Condition::CircuitOpen, Reason::Failure(Failure::CircuitOpen))
        | (Condition::Overloaded, Reason::Failure(Failure::Overloaded))
        | (Condition::RateLimited, Reason::Failure(Failure::RateLimited)) => true,
        _ => false,
    })
}

/// The fallback's response for this reason, if its `when` matches. The body is the bytes
/// as configured; the request path wraps them in its own body type.
pub fn answer(fallback: &Fallback, reason: Reason) -> Option<Response<Bytes>> {
    if !listed(&fallback.when, reason) {
        return None;
    }
    let mut resp = Response::new(fallback.body.clone());
    *resp.status_mut() = fallback.status;
    *resp.headers_mut() = fallback.headers.clone();
    let value = HeaderValue::from_str(&reason.to_string()).expect("reasons are ASCII labels");
    resp.headers_mut().insert(FALLBACK.clone(), value);
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn statuses_and_failures_match_their_conditions() {
        let when = [Condition::Status(503), Condition::ConnectFailure];
        assert!(listed(
            &when,
            Reason::Status(StatusCode::SERVICE_UNAVAILABLE)
        ));
        assert!(!listed(&when, Reason::Status(StatusCode::BAD_GATEWAY)));
        assert!(listed(&when, Reason::Failure(Failure::ConnectFailure)));
        assert!(!listed(&when, Reason::Failure(Failure::Timeout)));
        assert!(listed(
            &[Condition::Any5xx],
            Reason::Status(StatusCode::INSUFFICIENT_STORAGE)
        ));
        assert!(!listed(
            &[Condition::Any5xx],
            Reason::Status(StatusCode::TOO_MANY_REQUESTS)
        ));
    }
}
