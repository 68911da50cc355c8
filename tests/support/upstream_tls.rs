//! Upstream peers for tests/upstream_tls.rs: an HTTP/2 server that allows one stream per
//! connection, a TCP listener that never speaks, and TLS servers that require a client
//! certificate or record the ALPN protocol they negotiated.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::servers::TestPki;

/// A running peer; stops when dropped.
pub struct Peer {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests answered.
    pub hits: Arc<AtomicUsize>,
    /// The ALPN protocol each TLS connection negotiated (`None`: none).
    pub alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn peer(listener: TcpListener) -> (Peer, TcpListener) {
    let peer = Peer {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        hits: Arc::default(),
        alpn: Arc::default(),
        task: tokio::spawn(async {}),
    };
    (peer, listener)
}

/// Cleartext HTTP/2 with this `SETTINGS_MAX_CONCURRENT_STREAMS`, its preface 100 ms after
/// the connection is accepted; each answer after `delay`.
pub async fn h2_limited(max_streams: u32, delay: Duration) -> Peer {
    let (mut peer, listener) = peer(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let (connections, hits) = (Arc::clone(&peer.connections), Arc::clone(&peer.hits));
    peer.task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                // A slow preface, so that a burst finds the first connection still opening.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let handshake = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, Bytes>(tcp);
                let Ok(mut conn) = handshake.await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let hits = Arc::clone(&hits);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        hits.fetch_add(1, Ordering::SeqCst);
                        let resp = Response::new(());
                        if let Ok(mut stream) = respond.send_response(resp, false) {
                            let _ = stream.send_data(Bytes::from_static(b"one-stream"), true);
                        }
                    });
                }
            });
        }
    });
    peer
}

/// Accepts TCP connections and never sends a byte (holds them until dropped).
pub async fn silent() -> Peer {
    let (mut peer, listener) = peer(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let connections = Arc::clone(&peer.connections);
    peer.task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    peer
}

/// A client certificate (PEM) and the CA that signed it (PEM).
pub struct ClientPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a client CA and a client certificate signed by it.
pub fn client_pki() -> ClientPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "outrigger client CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["outrigger-client".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    ClientPki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The server side of `pki`, requiring a client certificate from `client_ca_pem` when given.
pub fn server_config(pki: &TestPki, client_ca_pem: Option<&str>, alpn: &[&[u8]]) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(pki.key.clone_key());
    let mut config = builder
        .with_single_cert(vec![pki.cert.clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS server answering `tls-ok`; HTTP/2 only when `h2_only`, else HTTP/1.1 and h2.
pub async fn tls_server(config: ServerConfig, h2_only: bool) -> Peer {
    let (mut peer, listener) = peer(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let (connections, hits, alpn) = (
        Arc::clone(&peer.connections),
        Arc::clone(&peer.hits),
        Arc::clone(&peer.alpn),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    peer.task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, hits, alpn) = (acceptor.clone(), Arc::clone(&hits), Arc::clone(&alpn));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let protocol = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                alpn.lock().unwrap().push(protocol);
                let service = service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("tls-ok")))) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                if h2_only {
                    builder = builder.http2_only();
                }
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    peer
}
