//! `outrigger probe URL`: the client side of `/ready`, for images that have no curl.
//!
//! The release image is `FROM scratch`, so a Docker `HEALTHCHECK` or a Kubernetes exec
//! probe can only run the binary itself. `probe` makes one plain-HTTP GET and exits 0 on a
//! 2xx answer, 1 otherwise (refused, timed out, not 2xx), with one line on stderr saying
//! why. Only response headers are awaited: the body of `/ready` carries no verdict.
//!
//! One hyper HTTP/1 connection, no pool and no TLS: the admin listener is plain HTTP on
//! loopback, and a probe that needs more than that is probing the wrong thing. It runs on
//! its own current-thread runtime and never reads the config, so it works in any container
//! that has the binary, whatever `OUTRIGGER_CONFIG` says.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Parses a probe URL: `http://HOST[:PORT][/PATH]`, for clap (a bad one is a usage error).
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|e| format!("{text}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{text}: only http:// URLs can be probed"));
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(uri),
        _ => Err(format!("{text}: the URL has no host")),
    }
}

/// Probes `uri` once: `Ok` with the status on a 2xx within `timeout`, else why not.
pub fn run(uri: &Uri, timeout: Duration) -> Result<StatusCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let status = runtime
        .block_on(async { tokio::time::timeout(timeout, get(uri)).await })
        .map_err(|_| format!("{uri}: no answer within {}", units(timeout)))??;
    if status.is_success() {
        Ok(status)
    } else {
        Err(format!("{uri} answered {status}"))
    }
}

/// One GET on a fresh connection, until the response head.
async fn get(uri: &Uri) -> Result<StatusCode, String> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "outrigger-probe")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{uri}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{uri}: {e}"));
    conn.abort();
    Ok(resp?.status())
}

fn units(d: Duration) -> String {
    crate::config::units::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(parse_url("http://127.0.0.1:9901/ready").is_ok());
        assert!(parse_url("http://[::1]:9901/ready").is_ok());
        assert!(parse_url("https://127.0.0.1:9901/ready").is_err());
        assert!(parse_url("127.0.0.1:9901").is_err());
        assert!(parse_url("/ready").is_err());
    }
}
