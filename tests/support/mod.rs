//! Shared test support: a scriptable backend, the sidecar started in-process on real
//! loopback sockets through the same `App::run` that `main` calls, and small HTTP helpers.

#![allow(dead_code)]

pub mod backend;
pub mod capacity;
pub mod opsrust;
pub mod otlp;
pub mod process;
pub mod redis_server;
pub mod review_conn;
pub mod review_headers;
pub mod servers;
pub mod slowclients;
pub mod upstream_tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outrigger::app::{App, Listeners};
use outrigger::config::{self, Overrides};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use backend::{Action, Backend};

/// Every await in a test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits with the test time limit.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

/// Writes a file under a fresh temporary directory and returns its path.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "outrigger-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A sidecar running in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    pub config_path: PathBuf,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    /// Starts the sidecar with this YAML (listeners forced to `127.0.0.1:0`).
    pub async fn start(yaml: &str) -> Sidecar {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Sidecar::start_on(proxy, yaml).await
    }

    /// Starts the sidecar with this YAML, serving on `proxy` (bound by the caller).
    pub async fn start_on(proxy: TcpListener, yaml: &str) -> Sidecar {
        let path = temp_file("outrigger.yaml", yaml);
        let overrides = Overrides {
            listen: Some(proxy.local_addr().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        let config = config::load(Some(&path), &overrides).expect("test config is valid");
        let listeners = Listeners {
            proxy,
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let app = App::new(config, overrides);
        let task = tokio::spawn(Arc::clone(&app).run(listeners));
        Sidecar {
            addr,
            admin,
            app,
            config_path: path,
            task: Some(task),
        }
    }

    /// Starts a sidecar in front of `backend` with extra YAML appended.
    pub async fn in_front_of(backend: &Backend, extra: &str) -> Sidecar {
        Sidecar::start(&format!("upstream:\n  url: {}\n{extra}", backend.url())).await
    }

    /// `http://127.0.0.1:PORT{path}` on the proxy port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(&format!("http://{}/metrics", self.admin)).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Begins the graceful shutdown and waits until `run` returned.
    pub async fn stop(mut self) {
        self.app.lifecycle.begin_shutdown();
        if let Some(task) = self.task.take() {
            within(task).await.expect("app task");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An HTTP/2 (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
    within(async {
        let resp = client().request(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    })
    .await
}

/// GET a URL.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

/// A GET with extra headers.
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::default()).expect("valid request")
}

/// Sends raw bytes and reads until the peer closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one sample in Prometheus text, matched by name and labels (0 if absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Polls `check` every 10 ms until it is true, failing after the test limit.
pub async fn eventually<F: FnMut() -> bool>(mut check: F) {
    within(async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Thousands of sockets need more descriptors than a default soft limit of 1,024: raise the
/// soft limit to the hard one (the child process inherits it) and return it.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_max
}
