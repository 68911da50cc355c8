//! The HTTP/1.1 upstream pool (`proxy::h1pool`), seen from the upstream's side: a
//! hand-written HTTP/1.1 server on loopback that counts the connections it accepts and
//! still holds open, and can close a connection that stays idle, as servers with a
//! keep-alive timeout do.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::{eventually, get, send, within, Sidecar};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the upstream behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Bytes of each answer's body.
    body: usize,
    /// Waits this long before answering.
    delay: Duration,
    /// Closes a connection that brings no new request within this long.
    close_idle_after: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            body: 2,
            delay: Duration::ZERO,
            close_idle_after: None,
        }
    }
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// Method and path of each request, in arrival order.
    requests: Mutex<Vec<String>>,
}

struct Upstream {
    url: String,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let counts = Arc::new(Counts::default());
        let for_task = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                for_task.accepted.fetch_add(1, Ordering::SeqCst);
                for_task.open.fetch_add(1, Ordering::SeqCst);
                let counts = Arc::clone(&for_task);
                conns.push(tokio::spawn(async move {
                    serve(stream, behaviour, &counts).await;
                    counts.open.fetch_sub(1, Ordering::SeqCst);
                }));
            }
        });
        Upstream { url, counts, task }
    }

    fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.counts.requests.lock().unwrap().clone()
    }
}

/// Answers requests on one connection until the peer closes it or it stays idle too long.
async fn serve(stream: TcpStream, behaviour: Behaviour, counts: &Counts) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let read = stream.read_line(&mut line);
        let read = match behaviour.close_idle_after {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(read) => read,
                Err(_) => return,
            },
            None => read.await,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut words = line.split_whitespace();
        let request = format!(
            "{} {}",
            words.next().unwrap_or(""),
            words.next().unwrap_or("")
        );
        counts.requests.lock().unwrap().push(request);
        tokio::time::sleep(behaviour.delay).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            behaviour.body
        );
        let mut answer = head.into_bytes();
        answer.resize(answer.len() + behaviour.body, b'x');
        if stream.get_mut().write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn sidecar_yaml(upstream: &Upstream, pool: &str) -> String {
    format!("upstream:\n  url: {}\n{pool}", upstream.url)
}

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(b"order")))
        .expect("request")
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = Upstream::start(Behaviour::default()).await;
    let sidecar = Sidecar::start(&sidecar_yaml(&upstream, "")).await;
    for i in 0..20 {
        let (status, _, body) = get(&sidecar.url(&format!("/small/{i}"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "xx"));
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "every request reused the connection"
    );
    assert_eq!(upstream.requests().len(), 20);
}

#[tokio::test]
async fn a_connection_whose_answer_was_still_streaming_comes_back_to_the_pool() {
    // 256 KiB answers: hyper has not read the body when the head reaches the proxy, so
    // the connection goes back only once the body is done.
    let upstream = Upstream::start(Behaviour {
        body: 256 * 1024,
        ..Behaviour::default()
    })
    .await;
    let sidecar = Sidecar::start(&sidecar_yaml(&upstream, "")).await;
    for i in 0..5 {
        let (status, _, body) = get(&sidecar.url(&format!("/large/{i}"))).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 256 * 1024));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_post_after_the_upstream_closed_the_idle_connection_is_sent_once_on_a_new_one() {
    let upstream = Upstream::start(Behaviour {
        close_idle_after: Some(Duration::from_millis(30)),
        ..Behaviour::default()
    })
    .await;
    let sidecar = Sidecar::start(&sidecar_yaml(&upstream, "")).await;
    let (status, _, _) = send(post(&sidecar.url("/orders/1"))).await;
    assert_eq!(status, StatusCode::OK);
    // The upstream closes the idle connection; the proxy must not send on it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, headers, _) = send(post(&sidecar.url("/orders/2"))).await;
    assert_eq!(status, StatusCode::OK, "{headers:?}");
    assert_eq!(
        upstream.requests(),
        ["POST /orders/1", "POST /orders/2"],
        "each POST reached the upstream exactly once"
    );
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_after_pool_idle_timeout() {
    let upstream = Upstream::start(Behaviour::default()).await;
    let sidecar = Sidecar::start(&sidecar_yaml(&upstream, "  pool_idle_timeout: 200ms\n")).await;
    let (status, _, _) = get(&sidecar.url("/a")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.open(), 1);
    // Nothing else is sent: the sweep, not a later request, closes it.
    eventually(|| upstream.open() == 0).await;
    let (status, _, _) = get(&sidecar.url("/b")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.accepted(),
        2,
        "the expired connection was not used"
    );
}

#[tokio::test]
async fn no_more_than_pool_max_idle_connections_stay_open() {
    let upstream = Upstream::start(Behaviour {
        delay: Duration::from_millis(200),
        ..Behaviour::default()
    })
    .await;
    let sidecar = Sidecar::start(&sidecar_yaml(&upstream, "  pool_max_idle: 1\n")).await;
    let urls: Vec<String> = (0..4)
        .map(|i| sidecar.url(&format!("/burst/{i}")))
        .collect();
    let burst = urls.iter().map(|url| get(url));
    for (status, _, _) in within(futures_util::future::join_all(burst)).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        upstream.accepted(),
        4,
        "four at once needed four connections"
    );
    eventually(|| upstream.open() == 1).await;
    // The one kept is used again.
    let (status, _, _) = get(&sidecar.url("/after")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.accepted(), 4);
}

#[tokio::test]
async fn pool_max_idle_zero_opens_a_connection_per_request() {
    let upstream = Upstream::start(Behaviour::default()).await;
    let sidecar = Sidecar::start(&sidecar_yaml(&upstream, "  pool_max_idle: 0\n")).await;
    for i in 0..3 {
        let (status, _, _) = get(&sidecar.url(&format!("/n/{i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(upstream.accepted(), 3);
    eventually(|| upstream.open() == 0).await;
}
