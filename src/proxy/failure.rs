//! How an upstream client error becomes a [`Failure`] (the REASON of SPEC §3), and the
//! log text of such errors. The `Failure` and `Reason` types are in [`crate::vocab`], so
//! that policies (`resilience`) can name them without importing the request path.

use std::error::Error as StdError;
use std::io;

use rustls::AlertDescription;

use super::upstream::ClientError;

// The words themselves live below every layer that uses them (`vocab`); the old path
// stays so that code written against `proxy::failure` keeps compiling.
pub use crate::vocab::reason::{Failure, Reason};

impl Failure {
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
