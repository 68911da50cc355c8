//! Why an upstream attempt failed, or why none was made: the REASON of SPEC §3.
//!
//! Every failure on the request path is one of these variants, and each knows its REASON
//! label, the status of the proxy-made answer, and whether the upstream could have seen
//! the request (which decides if a non-idempotent request may be tried again). How a
//! client error is classified into one is the request path's business
//! (`proxy::failure`).

use std::fmt;

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
}

/// What ended a request's attempts: a failure, or an upstream status listed in `when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Failure(Failure),
    Status(StatusCode),
    /// A trailers-only gRPC answer with this `grpc-status`, listed in `retry.when`.
    Grpc(u8),
}

/// The `retry.when` conditions for gRPC statuses (SPEC §7.7), by name and status code.
pub const GRPC_CONDITIONS: [(&str, u8); 5] = [
    ("grpc-cancelled", 1),
    ("grpc-deadline-exceeded", 4),
    ("grpc-resource-exhausted", 8),
    ("grpc-internal", 13),
    ("grpc-unavailable", 14),
];

/// The `retry.when` name of a gRPC status code (`grpc-unavailable` for 14).
pub fn grpc_condition_name(code: u8) -> &'static str {
    GRPC_CONDITIONS
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("grpc-unknown", |(n, _)| *n)
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Failure(failure) => f.write_str(failure.reason()),
            Reason::Status(s) => write!(f, "status-{}", s.as_u16()),
            Reason::Grpc(code) => f.write_str(grpc_condition_name(*code)),
        }
    }
}
