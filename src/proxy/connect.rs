//! Connecting to the upstream: TCP, then TLS for `https://`, both inside one
//! `connect_timeout`.
//!
//! Why our own connector and not hyper-rustls' builder: `connect_timeout` must cover the
//! TLS handshake too (SPEC §7.8). hyper-util's connector times the TCP connect only, so an
//! upstream that accepts and then stays silent used to hold each attempt until
//! `per_try_timeout`, answered as `timeout` and not retried for a POST, although nothing
//! was sent. Here a handshake that does not finish in time is a connect error, which the
//! client reports as `connect-failure` (retried for any method). The builder also refuses
//! a preset ALPN list and offers none when only HTTP/1.1 is enabled; we offer exactly the
//! protocol we speak (`h2`, or `http/1.1` with `http2: false`), so an HTTP/2-only upstream
//! refuses the handshake with a clear alert instead of resetting an HTTP/1.1 request.
//!
//! It always connects to the configured upstream (`target`), whatever URI it is handed.
//!
//! The boxed future and the clones are per new connection, never per request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What a connection error is, for the client: boxed like hyper-util's own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connected stream, plain or TLS.
pub type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Connects to the upstream: a `tower` service from URI to stream, as the pools call it.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    /// Set for `https://` upstreams.
    tls: Option<TlsConnector>,
    /// `upstream.tls.server_name`, else the URL's host.
    server_name: Option<ServerName<'static>>,
    /// TCP connect and TLS handshake together.
    timeout: Duration,
    /// The upstream's URL as configured: where every connection goes.
    target: Uri,
}

impl Connector {
    /// `tls` is `None` for a plain `http://` upstream.
    pub fn new(
        target: Uri,
        tls: Option<ClientConfig>,
        server_name: Option<ServerName<'static>>,
        timeout: Duration,
    ) -> Connector {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        // Once per connection: a tunnel's upstream that vanished is noticed (see `tunnel`).
        http.set_keepalive(Some(super::tunnel::KEEPALIVE_IDLE));
        http.set_keepalive_interval(Some(super::tunnel::KEEPALIVE_INTERVAL));
        http.set_keepalive_retries(Some(super::tunnel::KEEPALIVE_RETRIES));
        // `https://` URIs reach us too: TLS is added below, by scheme.
        http.enforce_http(false);
        Connector {
            http,
            tls: tls.map(|config| TlsConnector::from(Arc::new(config))),
            server_name,
            timeout,
            target,
        }
    }

    async fn connect(mut self) -> Result<Stream, BoxError> {
        use tower_service::Service;
        let uri = self.target.clone();
        let tcp = self.http.call(uri.clone()).await?;
        let Some(tls) = self.tls.filter(|_| uri.scheme_str() == Some("https")) else {
            return Ok(MaybeHttpsStream::Http(tcp));
        };
        let name = match self.server_name {
            Some(name) => name,
            None => {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned())?
            }
        };
        let stream = tls.connect(name, TokioIo::new(tcp)).await?;
        Ok(MaybeHttpsStream::Https(TokioIo::new(stream)))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    /// Connects to `target`, whatever the URI.
    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        let limit = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, this.connect()).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no connection within connect_timeout ({} ms, TCP connect and TLS \
                         handshake included)",
                        limit.as_millis()
                    ),
                )) as BoxError),
            }
        })
    }
}
