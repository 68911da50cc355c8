//! The connection to the one upstream: the pooled client (our pools for HTTP/1.1 and
//! HTTP/2), its TLS settings, and the request head every attempt sends.
//!
//! The URI is always built from `upstream.url` plus the client's path and query, whatever
//! the client put in its request line: an absolute-form request for another host still
//! goes to our upstream only, so the proxy can never be used as an open proxy. What the
//! client asked for travels only in `Host` (with `host_header: preserve`) and
//! `X-Forwarded-Host`, after it was checked: the target's authority wins over `Host`, and
//! a repeated or malformed `Host` is refused with 400 rather than passed on.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, HOST, TE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use rustls::{ClientConfig, RootCertStore};

use super::body::UpstreamBody;
use super::connect::{BoxError, Connector};
use super::h1pool::H1Pool;
use super::h2pool::H2Pool;
use super::headers::{self, ATTEMPT};
use crate::config::{HostHeader, Limits, Tls, Upstream};

/// The client every attempt goes through (plain or TLS, by the URL's scheme): our own
/// pools, of HTTP/1.1 connections (`h1pool`) or, with `upstream.http2: true`, of HTTP/2
/// ones (`h2pool`). Both connect to the configured upstream only.
pub struct HttpClient(Protocol);

enum Protocol {
    Http1 {
        pool: H1Pool,
        /// `Host` for a request that has none: the URL's host, and its port unless default.
        host: HeaderValue,
    },
    Http2(H2Pool),
}

impl HttpClient {
    /// `Host` for an HTTP/1.1 request that has no client host to send: the URL's host, and
    /// its port unless the scheme's default. `None` for HTTP/2, where `:authority` comes
    /// from the URI.
    pub fn default_host(&self) -> Option<&HeaderValue> {
        match &self.0 {
            Protocol::Http1 { host, .. } => Some(host),
            Protocol::Http2(_) => None,
        }
    }

    /// Sends a request and waits for the response head. Its `Host` is the caller's to set
    /// ([`Head::from_client`], the health probe, both from [`HttpClient::default_host`]):
    /// looking for one here cost a hashed lookup on every attempt. Not an `async fn`, and no `async`
    /// block around the pool's future: the request goes straight into that future, which
    /// is returned as it is (each wrapper would copy it again).
    pub fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> impl std::future::Future<Output = Result<UpstreamResponse, ClientError>> + Send + '_ {
        match &self.0 {
            Protocol::Http1 { pool, .. } => {
                // hyper writes the URI as it is given: origin form (`/path?query`). A
                // `Head` is in that form already; a health probe's URI is absolute.
                if req.uri().scheme().is_some() {
                    let target = req.uri().path_and_query().cloned();
                    *req.uri_mut() =
                        Uri::from(target.unwrap_or_else(|| PathAndQuery::from_static("/")));
                }
                Sent::Http1 {
                    sent: pool.request(req),
                }
            }
            // Boxed: the HTTP/2 pool's future holds a whole connect and handshake (about
            // 6.5 KB), and every future of the request path above this one would carry that
            // room, and copy it each time one is created and moved, for every request.
            // Built in its box, not copied there (`edge::proxy`).
            Protocol::Http2(pool) => {
                let room = Box::new_uninit();
                Sent::Http2 {
                    sent: Box::into_pin(Box::write(room, pool.request(req))),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request on its way, in the pool of the upstream's protocol.
    #[project = SentNow]
    enum Sent<A, B> {
        Http1 { #[pin] sent: A },
        Http2 { #[pin] sent: B },
    }
}

/// The upstream's response (its head and the handle on its body), boxed as it comes out
/// of the pool: it is then moved up through every level of the request path (the
/// timeout, the attempt, the hedge, the loop, `forward`), more than a dozen moves of 152
/// bytes where a box moves 8. The one allocation costs less than those copies
/// (callgrind, `docs/benchmarks.md`).
pub type UpstreamResponse = Box<Response<Incoming>>;

impl<A, B> std::future::Future for Sent<A, B>
where
    A: std::future::Future<Output = Result<Response<Incoming>, ClientError>>,
    B: std::future::Future<Output = Result<Response<Incoming>, ClientError>>,
{
    type Output = Result<UpstreamResponse, ClientError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let polled = match self.project() {
            SentNow::Http1 { sent } => sent.poll(cx),
            SentNow::Http2 { sent } => sent.poll(cx),
        };
        polled.map(|result| result.map(Box::new))
    }
}

/// Why the client could not get a response head.
#[derive(Debug)]
pub enum ClientError {
    /// No connection (TCP, TLS or the HTTP/2 preface) within `connect_timeout`, or refused.
    Connect(BoxError),
    /// The request failed on a connection (HTTP/1.1 or HTTP/2).
    Request(hyper::Error),
}

impl ClientError {
    /// Whether no connection was made, so nothing was sent.
    pub fn is_connect(&self) -> bool {
        match self {
            ClientError::Connect(_) => true,
            ClientError::Request(_) => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(_) => f.write_str("client error (Connect)"),
            ClientError::Request(_) => f.write_str("client error (SendRequest)"),
        }
    }
}

impl std::error::Error for ClientError {
    /// The cause: the display above names the stage.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(&**e),
            ClientError::Request(e) => Some(e),
        }
    }
}

/// Builds the client for an upstream. Over HTTP/2 its answers may carry as many header
/// bytes as requests may (hyper's client default is 16 KiB).
pub fn client(upstream: &Upstream, limits: &Limits) -> HttpClient {
    let tls = upstream.tls.as_ref().map(|t| tls_config(t, upstream.http2));
    let server_name = upstream.tls.as_ref().and_then(|t| t.server_name.clone());
    let connector = Connector::new(
        upstream.url.clone(),
        tls,
        server_name,
        upstream.connect_timeout,
    );
    let max_header_list = u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX);
    if upstream.http2 {
        let pool_limits = (
            upstream.pool_max_idle,
            upstream.pool_idle_timeout,
            upstream.connect_timeout,
        );
        let pool = H2Pool::new(
            connector,
            upstream.url.clone(),
            pool_limits,
            max_header_list,
        );
        return HttpClient(Protocol::Http2(pool));
    }
    let pool = H1Pool::new(
        connector,
        upstream.url.clone(),
        (upstream.pool_max_idle, upstream.pool_idle_timeout),
        limits.header_cap(),
    );
    HttpClient(Protocol::Http1 {
        pool,
        host: host_of(&upstream.url),
    })
}

/// The `Host` for `url`: its host, and its port unless it is the scheme's default.
fn host_of(url: &Uri) -> HeaderValue {
    let host = url.host().unwrap_or_default();
    let default = if url.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let value = match url.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).expect("a validated URL's host is a valid header value")
}

/// Roots: the configured private CA, else the webpki roots bundled in the binary (a
/// `scratch` container has no system store to read). The client certificate when the
/// upstream wants mTLS. ALPN offers exactly the protocol we speak (SPEC §7.8).
fn tls_config(tls: &Tls, http2: bool) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    match &tls.ca_certs {
        Some(certs) => {
            // Validated at load: every certificate parsed; one rustls refuses is skipped.
            let _ = roots.add_parsable_certificates(certs.iter().cloned());
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
            .expect("the client certificate and key were checked at load"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    config
}

/// What every attempt of one request sends, minus the body.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// Why a client's request head cannot be forwarded: the client gets 400.
#[derive(Debug, thiserror::Error)]
pub enum BadHead {
    /// Two `Host` lines, or a `Host` or target authority that is not `host[:port]`
    /// (RFC 9112 §3.2: a server must answer 400).
    #[error("the Host header or the request target's authority is not valid")]
    Host,
    /// The upstream URI could not be built from the client's path and query.
    #[error("the request target is not valid: {0}")]
    Target(#[from] http::Error),
    /// A request target in a form its method does not take (RFC 9112 §3.2): the authority
    /// form is CONNECT's (refused before this), the asterisk form OPTIONS's.
    #[error("the request target's form does not go with its method")]
    Form,
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2: a server must answer 400).
    #[error("an HTTP/1.1 request must carry Host")]
    NoHost,
}

impl Head {
    /// Rewrites the client's request head for the upstream.
    /// `default_host` is [`HttpClient::default_host`].
    pub fn from_client(
        parts: &mut Parts,
        upstream: &Upstream,
        default_host: Option<&HeaderValue>,
        peer: SocketAddr,
        request_id: &HeaderValue,
    ) -> Result<Head, BadHead> {
        let target = &parts.uri;
        if target.scheme().is_none() && target.authority().is_some() {
            return Err(BadHead::Form);
        }
        if target.path() == "*" && parts.method != Method::OPTIONS {
            return Err(BadHead::Form);
        }
        let mut headers = std::mem::take(&mut parts.headers);
        let (client_host, host_line_is_it) = client_host(&parts.uri, &headers)?;
        if client_host.is_none()
            && parts.version == http::Version::HTTP_11
            && !headers.contains_key(HOST)
        {
            return Err(BadHead::NoHost);
        }
        let present = headers::Present::of(&headers);
        // A `Connection` line may name `Host` itself: the line is then gone below.
        let host_line_is_it = host_line_is_it && !present.connection;
        let trailers = present.te && headers::offers_trailers(&headers);
        headers::strip_hop_by_hop(&mut headers);
        let present = match present.connection {
            true => headers::Present::of(&headers),
            false => present,
        };
        // Room for what this hop adds (`TE`, the three `X-Forwarded-*`, `Via`, the request
        // id, `Host`, the attempt), so that the map hyper sized to the client's headers
        // grows once rather than at each insert.
        headers.reserve(8);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        if present.cookie {
            headers::join_cookies(&mut headers);
        }
        headers::set_forwarded(&mut headers, peer.ip(), client_host.as_ref(), present);
        headers::add_via(&mut headers, parts.version);
        headers.insert(&headers::REQUEST_ID, request_id.clone());
        // Attempt 1's number is in the head already: each attempt's copy of the head then
        // holds the header's room, and a later attempt only changes its value.
        headers.insert(&ATTEMPT, headers::count(1));
        // HTTP/2 carries the host as `:authority`, which is the upstream's (never the
        // client's: that would let a client choose where we connect). A differing `Host`
        // is forbidden there (RFC 9113 §8.3.1), so `preserve` applies to HTTP/1 only;
        // `X-Forwarded-Host` still tells the upstream what the client asked for.
        let host = match upstream.host_header {
            HostHeader::Preserve if !upstream.http2 => client_host,
            _ => None,
        };
        match host {
            // The usual HTTP/1.1 request: its one `Host` line is already the one to send.
            Some(_) if host_line_is_it => {}
            Some(h) => {
                headers.insert(HOST, h);
            }
            // No client host to send: the upstream's own (a replaced value keeps its room).
            None => match default_host {
                Some(h) => {
                    headers.insert(HOST, h.clone());
                }
                // HTTP/2: the pool writes `:authority` from the URI.
                None => {
                    headers.remove(HOST);
                }
            },
        }
        Ok(Head {
            method: parts.method.clone(),
            uri: upstream_uri(upstream, &parts.uri)?,
            headers,
        })
    }

    /// The request for attempt `n` (1-based).
    pub fn request(&self, n: u32, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let mut headers = self.headers.clone();
        if n != 1 {
            if let Some(value) = headers.get_mut(&ATTEMPT) {
                *value = headers::count(n);
            }
        }
        *req.headers_mut() = headers;
        req
    }
}

/// The host the client asked for, checked. The request target's authority wins where
/// there is one (absolute form, RFC 9112 §3.2.2; HTTP/2's `:authority`, RFC 9113 §8.3.1),
/// minus any userinfo; else `Host`. An empty `Host` (allowed when the target has no
/// authority) is no host. A `Host` must be single and valid even when the target wins.
/// `true` with it when the client's `Host` line holds exactly that host.
fn client_host(uri: &Uri, headers: &HeaderMap) -> Result<(Option<HeaderValue>, bool), BadHead> {
    let mut lines = headers.get_all(HOST).iter();
    let host = lines.next().filter(|h| !h.is_empty());
    if lines.next().is_some() || host.is_some_and(|h| !headers::valid_host(h.as_bytes())) {
        return Err(BadHead::Host);
    }
    let Some(authority) = uri.authority() else {
        return Ok((host.cloned(), host.is_some()));
    };
    let target = authority.as_str();
    let target = target.rsplit_once('@').map_or(target, |(_, host)| host);
    if !headers::valid_host(target.as_bytes()) {
        return Err(BadHead::Host);
    }
    // The usual HTTP/2 request repeats its authority in `Host`: share those bytes.
    match host {
        Some(h) if h.as_bytes() == target.as_bytes() => Ok((Some(h.clone()), true)),
        _ => HeaderValue::from_str(target)
            .map(|h| (Some(h), false))
            .map_err(|_| BadHead::Host),
    }
}

/// `upstream.url`'s base path with the client's path and query appended: in origin form
/// for HTTP/1.1, as hyper writes it; with the URL's scheme and authority for HTTP/2, whose
/// pseudo-headers carry them.
fn upstream_uri(upstream: &Upstream, client_uri: &Uri) -> Result<Uri, http::Error> {
    let pq = client_uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut builder = Uri::builder();
    if upstream.http2 {
        if let Some(scheme) = upstream.url.scheme() {
            builder = builder.scheme(scheme.clone());
        }
        if let Some(authority) = upstream.url.authority() {
            builder = builder.authority(authority.clone());
        }
    }
    if upstream.base_path.is_empty() {
        // Reuse the parsed path and query: no second parse on the hot path.
        let pq = client_uri.path_and_query().cloned();
        builder
            .path_and_query(pq.unwrap_or_else(|| PathAndQuery::from_static("/")))
            .build()
    } else {
        builder
            .path_and_query(format!("{}{pq}", upstream.base_path))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_names_the_port_unless_it_is_the_scheme_s_default() {
        let host = |url: &str| host_of(&url.parse().unwrap());
        assert_eq!(host("http://backend:8080"), "backend:8080");
        assert_eq!(host("http://backend:80"), "backend");
        assert_eq!(host("http://backend"), "backend");
        assert_eq!(host("https://backend:443"), "backend");
        assert_eq!(host("https://backend:80"), "backend:80");
        assert_eq!(host("http://[::1]:3000"), "[::1]:3000");
    }
}
