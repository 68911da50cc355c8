//! Review of issue 17's per-request service (`server::per_request`) and of
//! `header_read_timeout` kept by the connection watchdog (`Expiry::Head`) instead of
//! hyper. Each test talks real HTTP/1 or h2c over loopback to the sidecar started
//! in-process (or to the real accept loop with a handler of its own, for panics), and
//! asserts what a user of `limits.header_read_timeout` expects.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use outrigger::edge::OnPanic;
use outrigger::proxy::body::ResponseBody;
use outrigger::server::accept::{self, Handler};
use outrigger::server::drain::Drain;
use support::review_conn::{get_request, read_response, RawConn};
use support::{get, metric, servers, within, Action, Backend, Sidecar};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// `header_read_timeout` for most tests here: short, so that a test stays well under 10 s.
const HEAD: Duration = Duration::from_secs(1);

fn limits(head: Duration) -> String {
    format!(
        "limits:\n  header_read_timeout: {}ms\n  idle_timeout: 60s\n  send_timeout: 30s\n",
        head.as_millis()
    )
}

async fn sidecar(backend: &Backend, head: Duration) -> Sidecar {
    Sidecar::in_front_of(backend, &limits(head)).await
}

/// Writes `bytes` one at a time, `every` apart, until the peer refuses them or all are
/// written; the task ends by itself.
fn trickle(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for b in bytes {
            tokio::time::sleep(every).await;
            if write.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Hold the write half open (no FIN) so that only the server can end the exchange.
        tokio::time::sleep(Duration::from_secs(8)).await;
    })
}

/// Reads until EOF or reset: what came, and when the connection ended (`None`: still
/// open after `limit`).
async fn read_until_closed(
    read: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (String, Option<Instant>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(limit, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok();
    (String::from_utf8_lossy(&out).into_owned(), ended)
}

/// A head that never ends: 60 header bytes trickled 100 ms apart (6 s in all).
fn endless_head() -> Vec<u8> {
    b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_vec()
}

/// Slowloris on a fresh connection: a head trickled a byte every 100 ms (so bytes keep
/// coming) is cut about `header_read_timeout` after it began, unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_on_a_fresh_connection_is_cut_at_header_read_timeout() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let mut stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let began = Instant::now();
    let (mut read, write) = stream.into_split();
    let writer = trickle(write, endless_head(), Duration::from_millis(100));
    let (got, ended) = read_until_closed(&mut read, Duration::from_secs(5)).await;
    writer.abort();
    let ended = ended.expect("a trickled head was never cut (5 s, header_read_timeout 1 s)");
    let after = ended - began;
    assert!(got.is_empty(), "answered a head that never ended: {got:?}");
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "cut {after:?} after the head began, header_read_timeout 1 s"
    );
    // The sidecar still serves others.
    assert_eq!(get(&sidecar.url("/")).await.0, 200);
}

/// Slowloris that waits before its first byte: the head must still be complete within
/// `header_read_timeout` of the connection's start ("timed from the connection's start",
/// `server::watchdog`), not of its first byte: a client must not get twice the limit.
/// Fails on dafac5b (and on c943ff2): the clock starts after `protocol_within` waited up
/// to `header_read_timeout` for the first bytes (`server/accept.rs:195-199`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_is_timed_from_the_connection_s_start_not_its_first_byte() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let connected = Instant::now();
    let (mut read, mut write) = stream.into_split();
    // Just inside the time allowed for the first bytes (`header_read_timeout` too).
    tokio::time::sleep(Duration::from_millis(800)).await;
    write.write_all(b"G").await.unwrap();
    let writer = trickle(write, endless_head(), Duration::from_millis(100));
    let (got, ended) = read_until_closed(&mut read, Duration::from_secs(5)).await;
    writer.abort();
    let after = ended.expect("never cut") - connected;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        after < Duration::from_millis(1500),
        "a trickled head was cut {after:?} after the connection began; \
         header_read_timeout is 1 s"
    );
}

/// Slowloris on a warm keep-alive connection, begun after the connection was parked: the
/// next head is timed from the end of the last answer, not restarted when the parked
/// socket is handed to a new hyper connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_after_parking_is_timed_from_the_last_answer() {
    let backend = Backend::start().await;
    let head = Duration::from_secs(2);
    let sidecar = sidecar(&backend, head).await;
    let stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(&get_request("1.1", "/", "")).await.unwrap();
    let (status, _) = within(read_response(&mut read))
        .await
        .expect("first answer");
    assert!(status.starts_with("http/1.1 200"), "{status}");
    let answered = Instant::now();
    // Idle 1.5 s: parked long since (PARK_AFTER is 100 ms), 0.5 s of the limit left.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let writer = trickle(write, endless_head(), Duration::from_millis(100));
    let (got, ended) = read_until_closed(&mut read, Duration::from_secs(5)).await;
    writer.abort();
    let ended = ended.expect("a trickled head on a warm connection was never cut");
    let after = ended - answered;
    assert!(got.is_empty(), "answered a head that never ended: {got:?}");
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_millis(3000),
        "cut {after:?} after the last answer; header_read_timeout 2 s, timed from that \
         answer (3.5 s would mean it restarted when the parked connection was resumed)"
    );
}

/// A head begun and stalled on a fresh connection while the sidecar drains (SIGTERM's
/// graceful shutdown): the connection is still cut at `header_read_timeout`, so the
/// shutdown does not wait `shutdown.timeout` (30 s) for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_stalled_during_the_drain_is_cut_and_the_shutdown_ends() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let mut stalled = RawConn::connect(sidecar.addr).await;
    stalled.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: ").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = Instant::now();
    let stop = tokio::spawn(sidecar.stop());
    assert!(stalled.closed().await, "the stalled connection was closed");
    let cut = began.elapsed();
    assert!(
        cut < Duration::from_millis(2500),
        "stalled head cut {cut:?} into the drain"
    );
    within(stop).await.expect("shutdown");
    let stopped = began.elapsed();
    assert!(
        stopped < Duration::from_secs(4),
        "the shutdown waited {stopped:?} for a connection with a stalled head"
    );
}

/// Pipelining: a complete request followed by the start of another. The first is answered;
/// the second head, never completed, is cut about `header_read_timeout` after that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_partial_second_head_is_cut_after_the_first_answer() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let mut stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let mut bytes = get_request("1.1", "/first", "");
    bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: t\r\n");
    stream.write_all(&bytes).await.unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _) = within(read_response(&mut reader))
        .await
        .expect("first answer");
    assert!(status.starts_with("http/1.1 200"), "{status}");
    let answered = Instant::now();
    let (got, ended) = read_until_closed(&mut reader, Duration::from_secs(5)).await;
    let ended = ended.expect("a pipelined partial head was never cut");
    assert!(got.is_empty(), "answered a partial head: {got:?}");
    let after = ended - answered;
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "cut {after:?} after the first answer, header_read_timeout 1 s"
    );
    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/first"],
        "only the complete request went upstream"
    );
}

/// `Expect: 100-continue`: once the head is complete the request is in progress; a client
/// that sends its body after `header_read_timeout` (still well within the route timeout)
/// is served, not cut as a slow head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_100_continue_past_header_read_timeout_is_served() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = sidecar(&backend, HEAD).await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let (interim, _) = conn.response().await.expect("100 Continue");
    assert!(interim.starts_with("http/1.1 100"), "{interim}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    conn.send(b"hello").await;
    let (head, body) = conn
        .response()
        .await
        .expect("the request was cut while its body was awaited");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "hello");
}

/// An HTTP/1.1 upstream that answers `200 early` as soon as it has read a request head,
/// then reads (and counts) whatever else comes on that connection.
struct EarlyUpstream {
    addr: SocketAddr,
    after: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EarlyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EarlyUpstream {
    async fn start() -> EarlyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let after = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&after);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    while reader.read_line(&mut line).await.unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                    if reader.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                counted.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        EarlyUpstream { addr, after, task }
    }
}

/// A request body still uploading after its answer was sent: the connection has a request
/// in progress (its body), so the head timer must not cut it; the whole body reaches the
/// upstream and the connection then serves its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_still_running_after_its_answer_is_not_cut_as_a_slow_head() {
    let upstream = EarlyUpstream::start().await;
    let sidecar = Sidecar::start(&format!(
        "upstream:\n  url: http://{}\n{}",
        upstream.addr,
        limits(HEAD)
    ))
    .await;
    // Larger than `request_body_buffer` (64 KiB) so it streams to the upstream as it comes.
    let total = 100 * 1024;
    let stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'u'; total / 10];
    write.write_all(&chunk).await.unwrap();
    let (status, body) = within(read_response(&mut read))
        .await
        .expect("early answer");
    assert!(
        status.starts_with("http/1.1 200") && body == "early",
        "{status}{body}"
    );
    // The other nine tenths over 2.25 s: more than twice header_read_timeout.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        write
            .write_all(&chunk)
            .await
            .expect("the connection was cut while its request body was still coming");
    }
    write
        .write_all(&get_request("1.1", "/next", ""))
        .await
        .unwrap();
    let next = within(read_response(&mut read)).await;
    let (status, _) = next.expect("no answer after the upload: the connection was cut");
    assert!(status.starts_with("http/1.1 200"), "{status}");
    support::eventually(|| upstream.after.load(Ordering::Relaxed) >= total - chunk.len()).await;
}

/// A long poll: the upstream takes longer than `header_read_timeout` to answer and then
/// streams its body slowly. The request is in progress all along: it is answered in full
/// and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_longer_than_header_read_timeout_is_answered_in_full() {
    let backend = Backend::start().await;
    backend.on_path(
        "/poll",
        Action::Delay(
            Duration::from_millis(1300),
            Box::new(Action::Slow {
                chunks: 3,
                interval: Duration::from_millis(600),
            }),
        ),
    );
    let sidecar = sidecar(&backend, HEAD).await;
    let mut stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    stream
        .write_all(&get_request("1.1", "/poll", ""))
        .await
        .unwrap();
    // The chunked answer: read until its last chunk.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    within(async {
        while !got.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the long poll's answer was cut short: {text:?}"
    );
    let mut conn = RawConn::from_stream(stream);
    conn.send(&get_request("1.1", "/", "")).await;
    let (head, _) = conn
        .response()
        .await
        .expect("the next request on the connection");
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

/// A WebSocket tunnel open (and silent) for longer than `header_read_timeout` is not cut
/// by the head timer: no HTTP head is expected on an upgraded connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_is_not_cut_by_the_head_timer() {
    let echo = servers::websocket_echo().await;
    let sidecar = Sidecar::start(&format!(
        "upstream:\n  url: http://{}\n{}",
        echo.addr,
        limits(HEAD)
    ))
    .await;
    let (mut ws, _) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/chat",
        sidecar.addr
    )))
    .await
    .expect("websocket handshake");
    for text in ["one", "two"] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        within(ws.send(Message::text(text)))
            .await
            .expect("the tunnel was cut");
        let back = within(ws.next())
            .await
            .expect("tunnel open")
            .expect("frame");
        assert_eq!(back.into_text().unwrap(), text);
    }
}

/// h2c: `header_read_timeout` is an HTTP/1 limit. An HTTP/2 connection with no stream for
/// longer than it (but well within `idle_timeout`) stays open and serves its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_does_not_get_the_http1_head_timer() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let (send, task) = support::review_conn::h2_client(sidecar.addr).await;
    assert_eq!(
        support::review_conn::h2_get(&send, &sidecar.url("/")).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!task.is_finished(), "the idle h2c connection was closed");
    assert_eq!(
        support::review_conn::h2_get(&send, &sidecar.url("/")).await,
        200
    );
    // A fresh h2c connection with no stream at all is not cut either.
    let (_fresh, fresh_task) = support::review_conn::h2_client(sidecar.addr).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!fresh_task.is_finished(), "a fresh h2c connection was cut");
    task.abort();
    fresh_task.abort();
}

/// HTTP/1.0 with `Connection: keep-alive`: the answer confirms it, the connection serves a
/// second request, and the head timer applies to it afterwards like any HTTP/1 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_is_kept_and_then_timed_like_http11() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    for path in ["/a", "/b"] {
        conn.send(&get_request("1.0", path, "Connection: keep-alive\r\n"))
            .await;
        let (head, _) = conn.response().await.expect("HTTP/1.0 keep-alive answer");
        assert!(head.contains("connection: keep-alive"), "{head}");
    }
    let answered = Instant::now();
    conn.send(b"GET /c HTTP/1.0\r\n").await;
    assert!(conn.closed().await);
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
        "{after:?}"
    );
}

/// Live handler futures, for the panic tests: each holds one until it is dropped.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Live;

impl Live {
    fn new() -> Live {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handler that panics in its `call` (`/call`), in its future after a wait (`/poll`), or
/// answers `fine`.
#[derive(Clone)]
struct Panicky;

impl hyper::service::Service<Request<Incoming>> for Panicky {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let path = req.uri().path().to_owned();
        if path == "/call" {
            panic!("a bug in call");
        }
        Box::pin(async move {
            let live = Live::new();
            if path == "/poll" {
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("a bug after a wait");
            }
            drop(live);
            Ok(Response::new(ResponseBody::full("fine")))
        })
    }
}

/// A panic in the handler's `call` or in its future is that request's `500
/// {"error":"internal error"}`, counted in `outrigger_panics_total` (the app's own
/// registry, read on the admin listener); the connection carries on, what the panicking
/// future held is released, and the admin listener still answers `/metrics` and `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_500s_the_connection_carries_on_and_nothing_stays_held() {
    let backend = Backend::start().await;
    let sidecar = sidecar(&backend, HEAD).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = outrigger::config::from_text(
        &format!("upstream:\n  url: {}\n{}", backend.url(), limits(HEAD)),
        None,
        &Default::default(),
    )
    .expect("config");
    let handler = Handler {
        make: |_peer| Panicky,
        on_panic: OnPanic::new(&sidecar.app.metrics, "proxy"),
    };
    let builder = accept::builder(&config.limits);
    let server = tokio::spawn(async move {
        let drain = Drain::default();
        accept::serve(
            listener,
            builder,
            HEAD,
            handler,
            &drain,
            std::future::pending(),
        )
        .await;
    });
    let mut conn = RawConn::connect(addr).await;
    for path in ["/call", "/poll", "/ok"] {
        conn.send(&get_request("1.1", path, "")).await;
        let (head, body) = conn
            .response()
            .await
            .unwrap_or_else(|| panic!("{path}: the connection died"));
        if path == "/ok" {
            assert!(
                head.starts_with("http/1.1 200") && body == "fine",
                "{head}{body}"
            );
        } else {
            assert!(head.starts_with("http/1.1 500"), "{path}: {head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            assert_eq!(body, r#"{"error":"internal error"}"#);
        }
    }
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "a panicked future is still held"
    );
    let text = sidecar.metrics().await;
    assert_eq!(metric(&text, "outrigger_panics_total", &[]), 2.0, "{text}");
    assert_eq!(
        metric(&text, "outrigger_in_flight_requests", &[]),
        0.0,
        "{text}"
    );
    let health = get(&format!("http://{}/health", sidecar.admin)).await;
    assert_eq!(health.0, 200, "{}", health.2);
    server.abort();
}

/// A connected client socket with a small receive buffer and a small MSS, so that the
/// kernel holds little of a response and hyper's own write buffer holds the rest.
async fn narrow_client(addr: SocketAddr) -> TcpStream {
    use std::os::fd::AsRawFd;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mss: libc::c_int = 536;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            &mss as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG");
    within(socket.connect(addr)).await.unwrap()
}

/// The kernel's send queue of the server side of a loopback connection (`/proc/net/tcp`).
fn send_queue(server: u16, client: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            (port(f[1])? == server && port(f[2])? == client).then(|| {
                let tx = f[4].split(':').next()?;
                usize::from_str_radix(tx, 16).ok()
            })?
        })
        .unwrap_or(0)
}

/// A client that pauses reading a large answer for a moment (1.6 s here, far from
/// `send_timeout`, 30 s) gets all of it. Its last bytes wait in hyper's write buffer behind
/// a full kernel queue once the body has ended: the connection has no request in progress,
/// but it is not idle awaiting a head either, and cutting it (`Expiry::Head`) throws away
/// what hyper holds: the client gets a short body. (Parking already refuses to take such
/// a connection: `Expiry::Park` with `is_write_blocked`.)
/// Fails on dafac5b, passes on c943ff2: `Expiry::Head` (`server/watchdog.rs:163`) ignores
/// `is_write_blocked`, and `server/accept.rs:319` drops the connection with hyper's buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pausing_mid_answer_gets_the_whole_answer() {
    let size = 140 * 1024;
    let backend = Backend::start().await;
    backend.set_default(Action::Respond {
        status: 200,
        headers: vec![],
        body: vec![b'r'; size],
    });
    let sidecar = sidecar(&backend, HEAD).await;
    let mut stream = narrow_client(sidecar.addr).await;
    let (server, client) = (sidecar.addr.port(), stream.local_addr().unwrap().port());
    stream
        .write_all(&get_request("1.1", "/big", ""))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = send_queue(server, client);
    // The setup holds only if the kernel cannot take the whole answer (else hyper holds
    // nothing and there is nothing to lose).
    assert!(
        queued > 0 && queued + 16 * 1024 < size,
        "setup: the kernel queue took {queued} bytes of {size}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut got = Vec::new();
    let _ = within(stream.read_to_end(&mut got)).await;
    let head_len = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let body = got.len() - head_len;
    assert_eq!(
        body, size,
        "the answer was cut short after a 1.6 s pause in reading (kernel queue {queued})"
    );
}
