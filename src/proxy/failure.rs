//! Why an upstream attempt failed, or why none was made: the REASON of SPEC §3.
//!
//! Every failure on the request path is one of these variants, and each knows its REASON
//! label, the status of the proxy-made answer, and whether the upstream could have seen
//! the request (which decides if a non-idempotent request may be tried again).

use std::error::Error as StdError;
use std::fmt;
use std::io;

use http::StatusCode;
use rustls::AlertDescription;

use super::upstream::ClientError;

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
    /// A TLS failure (untrusted certificate, wrong name, a client certificate required,
    /// no common ALPN protocol) is `bad-response`, even though it happens while
    /// connecting: it will not heal by itself, so it is never retried as a transient
    /// connect failure. A handshake that does not finish within `connect_timeout` is a
    /// `connect-failure` (nothing was sent). An HTTP/2 stream the upstream refused (`REFUSED_STREAM`,
    /// or cut off by the upstream's graceful GOAWAY before it was processed) counts as `connect-failure`: the
    /// upstream provably did not process it, so any method may be sent again.
    pub fn from_client_error(err: &ClientError) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = err.source();
        while let Some(e) = source {
            if tls_error(e).is_some() {
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

/// The TLS error behind an error, looking through `io::Error` wrappers (the TLS
/// connector wraps the handshake's `io::Error` in another one).
fn tls_error<'e>(e: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    for _ in 0..4 {
        let err = current?;
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .map(|inner| inner as &(dyn StdError + 'static));
    }
    None
}

/// What an operator should do about a TLS failure that needs one: the rustls error alone
/// (`received fatal alert: CertificateRequired`) does not say which setting is missing.
pub fn hint(err: &(dyn StdError + 'static)) -> Option<&'static str> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(rustls::Error::AlertReceived(alert)) = tls_error(e) {
            return match alert {
                AlertDescription::CertificateRequired => Some(
                    "the upstream requires a client certificate (mTLS): \
                     set upstream.tls.cert_file and upstream.tls.key_file",
                ),
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown => Some(
                    "the upstream refused the TLS handshake, perhaps our client \
                     certificate (upstream.tls.cert_file)",
                ),
                AlertDescription::NoApplicationProtocol => Some(
                    "protocol mismatch: the upstream speaks none of the protocols offered \
                     by ALPN (http/1.1 with upstream.http2: false, h2 with true); set \
                     upstream.http2 to what it speaks",
                ),
                _ => None,
            };
        }
        current = e.source();
    }
    None
}

/// An error and all its causes on one line, for logs; led by what to do about it when
/// [`hint`] knows.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = String::new();
    if let Some(hint) = hint(err) {
        text.push_str(hint);
        text.push_str(": ");
    }
    text.push_str(&err.to_string());
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
    /// A trailers-only gRPC answer with this `grpc-status`, listed in `retry.when`.
    Grpc(u8),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Failure(failure) => f.write_str(failure.reason()),
            Reason::Status(s) => write!(f, "status-{}", s.as_u16()),
            Reason::Grpc(code) => f.write_str(super::grpc::condition_name(*code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a TLS alert reaches us: rustls' error inside the `io::Error` of hyper's read.
    fn alert(alert: AlertDescription) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(alert),
        )
    }

    #[test]
    fn a_required_client_certificate_is_named_in_the_log() {
        let err = alert(AlertDescription::CertificateRequired);
        let line = chain(&err);
        assert!(line.starts_with("the upstream requires a client certificate (mTLS)"));
        assert!(line.contains("upstream.tls.cert_file"), "{line}");
    }

    #[test]
    fn no_common_alpn_protocol_is_a_protocol_mismatch() {
        let err = alert(AlertDescription::NoApplicationProtocol);
        assert!(
            chain(&err).starts_with("protocol mismatch"),
            "{}",
            chain(&err)
        );
        let other = io::Error::new(io::ErrorKind::TimedOut, "no connection");
        assert_eq!(hint(&other), None);
    }
}
