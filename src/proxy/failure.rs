//! Why an upstream attempt failed, or why none was made: the REASON of SPEC §3.
//!
//! Every failure on the request path is one of these variants, and each knows its REASON
//! label, the status of the proxy-made answer, and whether the upstream could have seen
//! the request (which decides if a non-idempotent request may be tried again).

use std::error::Error as StdError;
use std::fmt;
use std::io;

use http::StatusCode;

/// A failed attempt (or a request refused before any attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No connection could be made: nothing reached the upstream.
    #[error("could not connect to the upstream")]
    ConnectFailure,
    /// The connection closed before response headers arrived.
    #[error("the upstream closed the connection before answering")]
    Reset,
    /// No response headers within the per-try timeout or the deadline.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The upstream sent something that is not HTTP.
    #[error("the upstream sent an invalid response")]
    BadResponse,
    /// The circuit breaker is open for this route.
    #[error("the circuit breaker is open")]
    CircuitOpen,
    /// Too many requests in flight.
    #[error("too many requests in flight")]
    Overloaded,
    /// Over the route's rate limit.
    #[error("rate limit exceeded")]
    RateLimited,
    /// The client's request body failed while it was being sent: the client's problem,
    /// never counted against the upstream, never retried, answered 400.
    #[error("the request body could not be read")]
    ClientBody,
    /// The deadline passed while the client was still sending its body: the client's time,
    /// never counted against the upstream, answered 408 (REASON `client-body`).
    #[error("the request body did not arrive in time")]
    ClientTimeout,
}

impl Failure {
    /// The REASON label (SPEC §3).
    pub fn reason(self) -> &'static str {
        match self {
            Failure::ConnectFailure => "connect-failure",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::BadResponse => "bad-response",
            Failure::CircuitOpen => "circuit-open",
            Failure::Overloaded => "overloaded",
            Failure::RateLimited => "rate-limited",
            Failure::ClientBody | Failure::ClientTimeout => "client-body",
        }
    }

    /// The status of the proxy-made answer for this failure.
    pub fn status(self) -> StatusCode {
        match self {
            Failure::ConnectFailure | Failure::Reset | Failure::BadResponse => {
                StatusCode::BAD_GATEWAY
            }
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::CircuitOpen | Failure::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Failure::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Failure::ClientBody => StatusCode::BAD_REQUEST,
            Failure::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether the client caused it: not counted against the upstream, never retried.
    pub fn is_client(self) -> bool {
        matches!(self, Failure::ClientBody | Failure::ClientTimeout)
    }

    /// Classifies an error of the pooled upstream client.
    ///
    /// A TLS failure (untrusted certificate, wrong name) is `bad-response`, even though it
    /// happens while connecting: it will not heal by itself, so it is never retried as a
    /// transient connect failure. An HTTP/2 stream the upstream refused (`REFUSED_STREAM`,
    /// or cut off by the upstream's graceful GOAWAY before it was processed) counts as `connect-failure`: the
    /// upstream provably did not process it, so any method may be sent again.
    pub fn from_client_error(err: &hyper_util::client::legacy::Error) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = err.source();
        while let Some(e) = source {
            if is_tls_error(e) {
                return Failure::BadResponse;
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                // Only the peer's graceful GOAWAY resets streams it never processed; a GOAWAY
                // with an error, or one we sent ourselves, may follow processing.
                let graceful_goaway =
                    h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
                if h2.reason() == Some(h2::Reason::REFUSED_STREAM) || graceful_goaway {
                    return Failure::ConnectFailure;
                }
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_user() {
                    return Failure::ClientBody;
                }
                if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                    return Failure::BadResponse;
                }
            }
            source = e.source();
        }
        if err.is_connect() {
            return Failure::ConnectFailure;
        }
        Failure::Reset
    }
}

/// Whether an error comes from TLS, looking through `io::Error` wrappers (the TLS
/// connector wraps the handshake's `io::Error` in another one).
fn is_tls_error(e: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    for _ in 0..4 {
        let Some(err) = current else { return false };
        if err.is::<rustls::Error>() {
            return true;
        }
        current = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .map(|inner| inner as &(dyn StdError + 'static));
    }
    false
}

/// An error and all its causes on one line, for logs.
pub fn chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What ended a request's attempts: a failure, or an upstream status listed in `when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Failure(Failure),
    Status(StatusCode),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Failure(failure) => f.write_str(failure.reason()),
            Reason::Status(s) => write!(f, "status-{}", s.as_u16()),
        }
    }
}
