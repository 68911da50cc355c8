//! gRPC through the sidecar (SPEC §7.7): what makes a request gRPC, what the proxy may read
//! of a gRPC answer, and the gRPC form of the answers the proxy makes itself.
//!
//! A request is gRPC when its `content-type` starts with `application/grpc`. Everything else
//! on the request path stays as it is; gRPC adds four small things, each hooked in where it
//! happens:
//!
//! - **deadline**: a `grpc-timeout` shorter than the route's `timeout` becomes the call's
//!   deadline ([`cap`]); a longer one never extends it; a malformed one is ignored (debug
//!   log), never an error.
//! - **retries and the breaker**: the proxy may only judge an answer it has not started to
//!   pass on. For gRPC that is the *trailers-only* answer, `grpc-status` in the response
//!   headers with no message: [`retry_reason`] lets `retry.when`'s `grpc-*` conditions retry
//!   it like an HTTP 503 (same budget, same method rule: a call is a `POST`, resent only
//!   where the route declares it safe), and [`breaker_failure`] counts UNAVAILABLE and
//!   RESOURCE_EXHAUSTED against the breaker. A status in the trailers of a streamed answer
//!   arrives after the client got the headers: it is passed on, never retried.
//! - **proxy-made errors**: a gRPC client reads `grpc-status`, not an HTTP 502 with a JSON
//!   body. [`answer`] turns the proxy's own failure answers for gRPC calls into trailers-only
//!   errors (HTTP 200; 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED or 8 RESOURCE_EXHAUSTED) whose
//!   `grpc-message` names the REASON. It recognises them by the [`Failure`] that
//!   `respond::failure` leaves in the response's extensions, so no call site changes.
//! - **fallbacks**: `fallback.grpc` answers gRPC calls with a framed message and status 0, or
//!   a chosen status ([`fallback`]).
//!
//! Stale copies are never served for gRPC: a call is a `POST`, and only `GET` answers are
//! stored, so no copy exists to serve. (SPEC allows them for a route that declares the
//! method safe and cacheable; outrigger has no such declaration for `POST`, so it chose not
//! to store gRPC answers at all: a copy of one caller's answer is easily another's private
//! data.)
//!
//! `outrigger_grpc_responses_total{route, grpc_status}` counts each gRPC answer once: at the
//! head when the status is there, else when the trailers pass by. A stream that breaks
//! before its trailers is not counted (the client sees the broken stream).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode, Version};
use hyper::body::Incoming;
use tracing::debug;

use super::body::ResponseBody;
use super::failure::{Failure, Reason};
use crate::config::{Condition, Fallback, RetryPolicy};
use crate::metrics::Metrics;
use crate::resilience::fallback::{self as http_fallback, FALLBACK};
use crate::vocab::reason::{grpc_condition_name, GRPC_CONDITIONS};

/// `grpc-status`: the call's status code, in the trailers (or the headers when trailers-only).
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status text, percent-encoded.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the client's deadline for the call.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The status codes the proxy itself uses or retries.
pub const CANCELLED: u8 = 1;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const RESOURCE_EXHAUSTED: u8 = 8;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;

/// The status code a `retry.when` condition such as `grpc-unavailable` names.
pub fn code_named(name: &str) -> Option<u8> {
    GRPC_CONDITIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
}

/// The `retry.when` name of a status code (`grpc-unavailable` for 14).
pub fn condition_name(code: u8) -> &'static str {
    grpc_condition_name(code)
}

/// Whether a request (or response) is gRPC: `content-type: application/grpc[+proto|...]`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The call's timeout: the route's, capped by the client's `grpc-timeout` when that is
/// shorter. A malformed `grpc-timeout` is ignored (logged at debug).
pub fn cap(route_timeout: Duration, headers: &HeaderMap) -> Duration {
    let Some(value) = headers.get(&GRPC_TIMEOUT) else {
        return route_timeout;
    };
    match parse_timeout(value.as_bytes()) {
        Some(asked) => asked.min(route_timeout),
        None => {
            debug!(grpc_timeout = ?value, "malformed grpc-timeout ignored");
            route_timeout
        }
    }
}

/// `grpc-timeout` as the gRPC spec writes it: 1 to 8 digits and a unit (`H`ours,
/// `M`inutes, `S`econds, `m`illiseconds, `u` microseconds, `n`anoseconds).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The status of a trailers-only answer (`grpc-status` in the response headers), if it is one.
pub fn head_status(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    value.parse().ok()
}

/// Why a trailers-only answer should be retried, when `retry.when` lists its status.
pub fn retry_reason(policy: &RetryPolicy, resp: &Response<Incoming>) -> Option<Reason> {
    // The policy first: a route without `grpc-*` conditions reads no header.
    if !policy.when.iter().any(|c| matches!(c, Condition::Grpc(_))) {
        return None;
    }
    let code = head_status(resp.headers())?;
    policy
        .when
        .contains(&Condition::Grpc(code))
        .then_some(Reason::Grpc(code))
}

/// Whether an answer counts against the breaker as a gRPC failure: a trailers-only
/// UNAVAILABLE or RESOURCE_EXHAUSTED (gRPC only runs over HTTP/2).
pub fn breaker_failure(resp: &Response<Incoming>) -> bool {
    resp.version() == Version::HTTP_2
        && matches!(
            head_status(resp.headers()),
            Some(UNAVAILABLE | RESOURCE_EXHAUSTED)
        )
}

/// The gRPC status of a proxy-made failure (SPEC §7.7); `None` for the client's own
/// failures, which keep their HTTP answer.
pub fn status_of(failure: Failure) -> Option<u8> {
    match failure {
        Failure::ConnectFailure
        | Failure::Reset
        | Failure::BadResponse
        | Failure::CircuitOpen
        | Failure::Overloaded => Some(UNAVAILABLE),
        Failure::Timeout => Some(DEADLINE_EXCEEDED),
        Failure::RateLimited => Some(RESOURCE_EXHAUSTED),
        Failure::ClientBody | Failure::ClientTimeout => None,
    }
}

/// The answer to a gRPC call on its way out: a proxy-made failure becomes a trailers-only
/// gRPC error, and the answer's status is counted.
pub fn answer(
    resp: Response<ResponseBody>,
    route: &str,
    metrics: &Metrics,
) -> Response<ResponseBody> {
    let resp = match resp.extensions().get::<Failure>().copied() {
        Some(failure) => match status_of(failure) {
            Some(code) => proxy_error(resp, failure, code),
            None => resp,
        },
        None => resp,
    };
    count(resp, route, metrics)
}

/// A trailers-only error in place of a proxy-made HTTP error, keeping its other headers.
fn proxy_error(resp: Response<ResponseBody>, failure: Failure, code: u8) -> Response<ResponseBody> {
    let (mut parts, _) = resp.into_parts();
    parts.status = StatusCode::OK;
    parts.headers.remove(CONTENT_LENGTH);
    let message = format!("outrigger: {}: {failure}", failure.reason());
    set_status(&mut parts.headers, code, Some(&message));
    Response::from_parts(parts, ResponseBody::full(Bytes::new()))
}

/// `content-type`, `grpc-status` and (percent-encoded) `grpc-message` on a head or trailers.
fn set_status(headers: &mut HeaderMap, code: u8, message: Option<&str>) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    if let Some(message) = message {
        let encoded = percent_encode(message);
        let value = HeaderValue::from_str(&encoded).expect("percent-encoded text is ASCII");
        headers.insert(GRPC_MESSAGE.clone(), value);
    }
}

/// `grpc-message` encoding: printable ASCII except `%` as is, every other byte `%XX`.
pub fn percent_encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The route's fallback for a failed request: the gRPC form for a gRPC call when the
/// fallback has one, the HTTP form otherwise. `None` when its `when` does not list `reason`.
pub fn fallback(
    fallback: &Fallback,
    reason: Reason,
    request: &HeaderMap,
) -> Option<Response<ResponseBody>> {
    let grpc = match &fallback.grpc {
        Some(grpc) if is_grpc(request) => grpc,
        _ => return http_fallback::answer(fallback, reason).map(|r| r.map(ResponseBody::full)),
    };
    if !http_fallback::listed(&fallback.when, reason) {
        return None;
    }
    let mut headers = fallback.headers.clone();
    let label = HeaderValue::from_str(&reason.to_string()).expect("reasons are ASCII labels");
    headers.insert(FALLBACK.clone(), label);
    let body = match &grpc.framed {
        // The message, then the status in the trailers.
        Some(framed) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            let mut trailers = HeaderMap::new();
            set_status(&mut trailers, grpc.status, grpc.message.as_deref());
            ResponseBody::full_with_trailers(framed.clone(), trailers)
        }
        // Trailers-only: the status in the headers, no message.
        None => {
            set_status(&mut headers, grpc.status, grpc.message.as_deref());
            ResponseBody::full(Bytes::new())
        }
    };
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers;
    Some(resp)
}

/// Counts the answer in `outrigger_grpc_responses_total`: now when its head carries the
/// status, else when its trailers pass by.
fn count(resp: Response<ResponseBody>, route: &str, metrics: &Metrics) -> Response<ResponseBody> {
    let counter = metrics.grpc_responses.clone();
    let route = route.to_owned();
    if let Some(value) = resp.headers().get(&GRPC_STATUS) {
        counter
            .with_label_values(&[&route, status_label(value)])
            .inc();
        return resp;
    }
    resp.map(|body| {
        body.on_trailers(Box::new(move |trailers: &HeaderMap| {
            if let Some(value) = trailers.get(&GRPC_STATUS) {
                counter
                    .with_label_values(&[&route, status_label(value)])
                    .inc();
            }
        }))
    })
}

/// The `grpc_status` label: the code 0-16 as a number, anything else `other` (an upstream
/// cannot grow the label space).
fn status_label(value: &HeaderValue) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    let code = value.to_str().ok().and_then(|v| v.parse::<usize>().ok());
    code.and_then(|c| CODES.get(c)).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(parse_timeout(b"1H"), ms(3_600_000));
        assert_eq!(parse_timeout(b"2M"), ms(120_000));
        assert_eq!(parse_timeout(b"3S"), ms(3000));
        assert_eq!(parse_timeout(b"250m"), ms(250));
        assert_eq!(parse_timeout(b"1500u"), Some(Duration::from_micros(1500)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"m",
            b"10",
            b"10x",
            b"-1S",
            b"123456789S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn grpc_timeout_caps_and_never_extends() {
        let mut h = HeaderMap::new();
        let route = Duration::from_secs(10);
        assert_eq!(cap(route, &h), route);
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static("200m"));
        assert_eq!(cap(route, &h), Duration::from_millis(200));
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static("1H"));
        assert_eq!(cap(route, &h), route);
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        assert_eq!(cap(route, &h), route);
    }

    #[test]
    fn conditions_round_trip_and_content_types() {
        for (name, code) in GRPC_CONDITIONS {
            assert_eq!(code_named(name), Some(code));
            assert_eq!(condition_name(code), name);
        }
        assert_eq!(code_named("grpc-ok"), None);
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/json", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[test]
    fn messages_are_percent_encoded_and_labels_closed() {
        assert_eq!(percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
        assert_eq!(status_label(&HeaderValue::from_static("14")), "14");
        assert_eq!(status_label(&HeaderValue::from_static("17")), "other");
        assert_eq!(status_label(&HeaderValue::from_static("x")), "other");
    }

    #[test]
    fn failures_map_to_the_statuses_of_the_spec() {
        assert_eq!(status_of(Failure::ConnectFailure), Some(UNAVAILABLE));
        assert_eq!(status_of(Failure::CircuitOpen), Some(UNAVAILABLE));
        assert_eq!(status_of(Failure::Timeout), Some(DEADLINE_EXCEEDED));
        assert_eq!(status_of(Failure::RateLimited), Some(RESOURCE_EXHAUSTED));
        assert_eq!(status_of(Failure::ClientBody), None);
    }
}
