//! Real protocol peers for the protocol tests: a TLS backend with a CA made at test time,
//! HTTP/2 backends (hyper, and a raw `h2` one that can refuse streams), a WebSocket echo.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A test CA and one server certificate signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

/// Makes a CA and a certificate for `names` (DNS names or IP addresses).
pub fn pki(names: &[&str]) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "outrigger test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers `{scheme}:{version}` (e.g. `tls:HTTP/2.0`) after reading the request body.
async fn describe(
    req: Request<Incoming>,
    scheme: &'static str,
    hits: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = format!("{:?}", req.version());
    let _ = req.into_body().collect().await;
    hits.fetch_add(1, Ordering::SeqCst);
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{scheme}:{version}"
    )))))
}

/// An HTTPS backend (HTTP/1.1 and HTTP/2 by ALPN) with this certificate.
pub async fn tls_backend(pki: &TestPki) -> Server {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(pki.key.clone_key()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let hits = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req| describe(req, "tls", Arc::clone(&hits)));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Server { addr, hits, task }
}

/// What the h2c backend does per request, in order (then `Ok` forever).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum H2Step {
    Ok,
    Status(u16),
    /// Reset the stream with REFUSED_STREAM before reading anything.
    Refuse,
    /// Answer 200 with a body and `grpc-status: 0` trailers.
    Trailers,
}

/// A cleartext HTTP/2 (prior knowledge) backend built on the `h2` crate.
pub async fn h2c_backend(steps: Vec<H2Step>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let steps = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        steps,
    )));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (hits, steps) = (Arc::clone(&counter), Arc::clone(&steps));
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let step = steps.lock().unwrap().pop_front().unwrap_or(H2Step::Ok);
                    if step == H2Step::Refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let mut body = req.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let status = match step {
                        H2Step::Status(s) => s,
                        _ => 200,
                    };
                    let resp = Response::builder().status(status).body(()).unwrap();
                    let Ok(mut stream) = respond.send_response(resp, false) else {
                        continue;
                    };
                    let _ = stream.send_data(
                        Bytes::from_static(b"h2c:HTTP/2.0"),
                        step != H2Step::Trailers,
                    );
                    if step == H2Step::Trailers {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = stream.send_trailers(trailers);
                    }
                }
            });
        }
    });
    Server { addr, hits, task }
}

/// A WebSocket echo server.
pub async fn websocket_echo() -> Server {
    websocket_echo_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// A WebSocket echo server on a listener the caller bound.
pub fn websocket_echo_on(listener: TcpListener) -> Server {
    use futures_util::{SinkExt, StreamExt};
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                hits.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server { addr, hits, task }
}
