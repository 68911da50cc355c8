//! Review of the HTTP/1.1 upstream pool (`proxy::h1pool`) from the upstream's side: a
//! hand-written HTTP/1.1 server on loopback whose every answer is scripted per request
//! (by path), so that it can misbehave the ways real upstreams do: close after reading,
//! close mid-body, answer before reading the body, send bytes after the end of an answer,
//! answer `101` to a plain request. Each request it reads is logged with the number of the
//! connection it came on, so a test can tell a request sent twice, or an answer read by
//! the wrong request.

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

/// One request as the upstream read its head.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    content_length: usize,
    chunked: bool,
    /// `Sec-WebSocket-Key`, if any.
    ws_key: Option<String>,
}

/// What the upstream does with one request.
enum Act {
    /// Reads the body, answers 200 with the path as the body.
    Echo,
    /// Reads the body, waits, then echoes.
    EchoAfter(Duration),
    /// Reads the body, then writes these bytes as they are.
    Raw(Vec<u8>),
    /// Reads the body, writes the first bytes, waits, writes the second.
    RawThen(Vec<u8>, Duration, Vec<u8>),
    /// Reads the body, writes these bytes, then closes the connection.
    RawThenClose(Vec<u8>),
    /// Reads the body, echoes, then closes the connection after this long.
    EchoThenClose(Duration),
    /// Reads the body, then closes without answering.
    CloseAfterRead,
    /// Reads this many body bytes, then closes (RST: unread bytes are left).
    CloseMidBody(usize),
    /// Writes these bytes before reading the body, then reads it.
    AnswerFirst(Vec<u8>),
    /// Writes `100 Continue`, reads the body, echoes the path and the body's length.
    ContinueThenEcho,
    /// Answers a chunked 200 and sends a chunk every 10 ms until the peer goes.
    Endless,
    /// Switches to WebSocket and echoes messages until the peer closes.
    WebSocket,
}

type Script = Arc<dyn Fn(&Head, usize) -> Act + Send + Sync>;

#[derive(Default)]
struct Log {
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// `METHOD PATH #connection`, in the order read.
    requests: Mutex<Vec<String>>,
}

struct Upstream {
    url: String,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// `script(head, connection number)` decides each answer.
    async fn start(script: impl Fn(&Head, usize) -> Act + Send + Sync + 'static) -> Upstream {
        Upstream::start_dropping(|_| false, script).await
    }

    /// As `start`, but connection `n` is closed as soon as accepted when `drop(n)`.
    async fn start_dropping(
        drop: fn(usize) -> bool,
        script: impl Fn(&Head, usize) -> Act + Send + Sync + 'static,
    ) -> Upstream {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Log::default());
        let for_task = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                let n = for_task.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                if drop(n) {
                    std::mem::drop(stream);
                    continue;
                }
                for_task.open.fetch_add(1, Ordering::SeqCst);
                let log = Arc::clone(&for_task);
                let script = Arc::clone(&script);
                conns.push(tokio::spawn(async move {
                    serve(stream, n, &script, &log).await;
                    log.open.fetch_sub(1, Ordering::SeqCst);
                }));
            }
        });
        Upstream { url, log, task }
    }

    fn accepted(&self) -> usize {
        self.log.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.log.open.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Requests for `path`, whatever their connection.
    fn count(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.split(' ').nth(1) == Some(path))
            .count()
    }
}

fn echo(path: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
        path.len()
    )
    .into_bytes()
}

async fn read_head(io: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    if io.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let mut head = Head {
        method,
        path,
        content_length: 0,
        chunked: false,
        ws_key: None,
    };
    loop {
        let mut header = String::new();
        if io.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        if header == "\r\n" {
            return Some(head);
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            head.content_length = v.trim().parse().ok()?;
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            head.chunked = true;
        }
        if lower.starts_with("sec-websocket-key:") {
            let value = header.split_once(':').map(|(_, v)| v.trim().to_string());
            head.ws_key = value;
        }
    }
}

/// Reads up to `limit` body bytes (all with `usize::MAX`); false if the peer closed early.
async fn read_body(io: &mut BufReader<TcpStream>, head: &Head, limit: usize) -> bool {
    if !head.chunked {
        let mut body = vec![0; head.content_length.min(limit)];
        return io.read_exact(&mut body).await.is_ok();
    }
    let mut read = 0;
    loop {
        let mut size = String::new();
        if io.read_line(&mut size).await.unwrap_or(0) == 0 {
            return false;
        }
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return false;
        };
        if read + n > limit {
            let mut part = vec![0; limit - read];
            return io.read_exact(&mut part).await.is_ok();
        }
        let mut chunk = vec![0; n + 2];
        if io.read_exact(&mut chunk).await.is_err() {
            return false;
        }
        read += n;
        if n == 0 {
            return true;
        }
    }
}

async fn serve(stream: TcpStream, n: usize, script: &Script, log: &Log) {
    let mut io = BufReader::new(stream);
    while let Some(head) = read_head(&mut io).await {
        log.requests
            .lock()
            .unwrap()
            .push(format!("{} {} #{n}", head.method, head.path));
        let act = script(&head, n);
        if let Act::AnswerFirst(bytes) = &act {
            if io.get_mut().write_all(bytes).await.is_err() {
                return;
            }
            if !read_body(&mut io, &head, usize::MAX).await {
                return;
            }
            continue;
        }
        if let Act::ContinueThenEcho = act {
            if io
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        let limit = match act {
            Act::CloseMidBody(k) => k,
            _ => usize::MAX,
        };
        if !read_body(&mut io, &head, limit).await {
            return;
        }
        if let Act::WebSocket = act {
            websocket_echo(io, &head).await;
            return;
        }
        let out = io.get_mut();
        let written = match act {
            Act::Echo => out.write_all(&echo(&head.path)).await,
            Act::ContinueThenEcho => {
                let body = format!("{} {}", head.path, head.content_length);
                out.write_all(&echo(&body)).await
            }
            Act::EchoAfter(wait) => {
                tokio::time::sleep(wait).await;
                out.write_all(&echo(&head.path)).await
            }
            Act::Raw(bytes) => out.write_all(&bytes).await,
            Act::RawThen(first, wait, second) => {
                if out.write_all(&first).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
                out.write_all(&second).await
            }
            Act::Endless => {
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if out.write_all(head).await.is_err() {
                    return;
                }
                loop {
                    if out.write_all(b"5\r\ntick\n\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Act::RawThenClose(bytes) => {
                let _ = out.write_all(&bytes).await;
                return;
            }
            Act::EchoThenClose(wait) => {
                let _ = out.write_all(&echo(&head.path)).await;
                tokio::time::sleep(wait).await;
                return;
            }
            Act::CloseAfterRead | Act::CloseMidBody(_) => return,
            Act::AnswerFirst(_) | Act::WebSocket => unreachable!(),
        };
        if written.is_err() {
            return;
        }
    }
}

/// Answers 101 to a WebSocket handshake, then echoes text messages.
async fn websocket_echo(io: BufReader<TcpStream>, head: &Head) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    assert!(io.buffer().is_empty(), "the client spoke before the 101");
    let mut stream = io.into_inner();
    let key = head.ws_key.as_deref().unwrap_or("");
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    while let Some(Ok(message)) = ws.next().await {
        if message.is_close() {
            return;
        }
        if message.is_text() && ws.send(message).await.is_err() {
            return;
        }
    }
}

fn yaml(upstream: &Upstream, extra: &str) -> String {
    format!("upstream:\n  url: {}\n{extra}", upstream.url)
}

fn post(url: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

/// GETs `path` a few times and checks each answer is its own path.
async fn each_gets_its_own_answer(sidecar: &Sidecar, paths: &[&str]) {
    for path in paths {
        let (status, _, body) = within(get(&sidecar.url(path))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, *path),
            "{path} got another answer"
        );
    }
}

// ---- a POST is never sent twice ----

#[tokio::test]
async fn a_post_the_upstream_read_on_a_reused_connection_then_closed_is_not_sent_again() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/pay" => Act::CloseAfterRead,
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/warm"]).await;
    let (status, _, _) = within(send(post(&sidecar.url("/pay"), b"once"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests(), ["GET /warm #1", "POST /pay #1"]);
}

#[tokio::test]
async fn a_post_cut_mid_body_on_a_reused_connection_is_not_sent_again() {
    static BODY: [u8; 48 * 1024] = [b'p'; 48 * 1024];
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/upload" => Act::CloseMidBody(1000),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/warm"]).await;
    let (status, _, _) = within(send(post(&sidecar.url("/upload"), &BODY))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.requests(),
        ["GET /warm #1", "POST /upload #1"],
        "sent once, on the reused connection"
    );
}

#[tokio::test]
async fn a_post_with_expect_continue_is_sent_once() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/expect" => Act::Raw(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n/expect"
                .to_vec(),
        ),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/warm"]).await;
    let req = Request::post(sidecar.url("/expect"))
        .header("expect", "100-continue")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let (status, _, body) = within(send(req)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/expect"));
    each_gets_its_own_answer(&sidecar, &["/after-1", "/after-2"]).await;
    assert_eq!(upstream.count("/expect"), 1);
    assert_eq!(upstream.accepted(), 1, "{:?}", upstream.requests());
}

// ---- one request's answer never reaches another ----

#[tokio::test]
async fn bytes_after_the_end_of_an_answer_never_answer_the_next_request() {
    let smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSECRET".to_vec();
    let same_write = [echo("/extra-now"), smuggled.clone()].concat();
    let upstream = Upstream::start(move |head, _| match head.path.as_str() {
        "/extra-now" => Act::Raw(same_write.clone()),
        "/extra-later" => Act::RawThen(
            echo("/extra-later"),
            Duration::from_millis(50),
            smuggled.clone(),
        ),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/extra-now", "/a", "/b"]).await;
    each_gets_its_own_answer(&sidecar, &["/extra-later"]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    each_gets_its_own_answer(&sidecar, &["/c", "/d"]).await;
}

#[tokio::test]
async fn a_body_after_head_204_or_304_never_answers_the_next_request() {
    let smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSECRET";
    let upstream = Upstream::start(move |head, _| {
        let status = match head.path.as_str() {
            "/head" => "200 OK",
            "/nocontent" => "204 No Content",
            "/notmodified" => "304 Not Modified",
            _ => return Act::Echo,
        };
        // A head that announces 47 bytes, then a whole second answer as "the body".
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
            smuggled.len()
        )
        .into_bytes();
        out.extend_from_slice(smuggled);
        Act::Raw(out)
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    for path in ["/head", "/nocontent", "/notmodified"] {
        let method = if path == "/head" { "HEAD" } else { "GET" };
        let req = Request::builder()
            .method(method)
            .uri(sidecar.url(path))
            .body(Full::default())
            .unwrap();
        let (status, _, body) = within(send(req)).await;
        assert!(body.is_empty(), "{path}: {status} {body}");
        each_gets_its_own_answer(&sidecar, &["/next-1", "/next-2"]).await;
    }
}

#[tokio::test]
async fn informational_answers_before_the_real_one_do_not_shift_answers() {
    let upstream = Upstream::start(|head, _| {
        match head.path.as_str() {
        "/hints" => Act::Raw(
            [
                b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                    .as_slice(),
                &echo("/hints"),
            ]
            .concat(),
        ),
        _ => Act::Echo,
    }
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/hints", "/x", "/hints", "/y"]).await;
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_body_keeps_answers_in_order() {
    // The upstream answers the upload at once, then reads (and drops) its body: the
    // connection may be used again only once the whole body was written.
    static BODY: [u8; 256 * 1024] = [b'u'; 256 * 1024];
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/early" => Act::AnswerFirst(echo("/early")),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/warm"]).await;
    let (status, _, body) = within(send(post(&sidecar.url("/early"), &BODY))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/early"));
    each_gets_its_own_answer(&sidecar, &["/a", "/b", "/c"]).await;
    assert_eq!(upstream.count("/early"), 1);
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_obeyed() {
    let upstream = Upstream::start(|head, _| {
        Act::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{}",
                head.path.len(),
                head.path
            )
            .into_bytes(),
        )
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/1", "/2", "/3"]).await;
    assert_eq!(upstream.accepted(), 3, "{:?}", upstream.requests());
}

#[tokio::test]
async fn a_late_answer_to_an_attempt_that_timed_out_never_answers_another_request() {
    // Attempt 1 of /slow times out (per_try_timeout); its answer comes later on its
    // connection, which must never carry another request.
    let upstream = Upstream::start(|head, n| match head.path.as_str() {
        "/slow" if n == 1 => Act::EchoAfter(Duration::from_millis(400)),
        _ => Act::Echo,
    })
    .await;
    let extra =
        "defaults:\n  retry:\n    per_try_timeout: 150ms\n    backoff: { base: 1ms, max: 1ms }\n";
    let sidecar = Sidecar::start(&yaml(&upstream, extra)).await;
    let (status, _, body) = within(get(&sidecar.url("/slow"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/slow"));
    assert_eq!(upstream.requests()[..2], ["GET /slow #1", "GET /slow #2"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    each_gets_its_own_answer(&sidecar, &["/p", "/q", "/r", "/s"]).await;
}

#[tokio::test]
async fn a_hedge_loser_connection_is_never_reused() {
    let upstream = Upstream::start(|head, n| match head.path.as_str() {
        "/hedged" if n == 1 => Act::EchoAfter(Duration::from_millis(300)),
        _ => Act::Echo,
    })
    .await;
    let extra = "defaults:\n  hedge:\n    delay: 50ms\n    max_ratio: 1.0\n";
    let sidecar = Sidecar::start(&yaml(&upstream, extra)).await;
    let (status, _, body) = within(get(&sidecar.url("/hedged"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/hedged"));
    assert_eq!(upstream.requests(), ["GET /hedged #1", "GET /hedged #2"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    each_gets_its_own_answer(&sidecar, &["/h1", "/h2", "/h3"]).await;
    // The loser's connection was closed.
    eventually(|| upstream.open() == 1).await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_frees_the_upstream_connection() {
    // A 4 MiB answer that the client stops reading after the head: its upstream
    // connection is closed (or drained) and never answers another request.
    let big = {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n".to_vec();
        out.resize(out.len() + 4 * 1024 * 1024, b'z');
        out
    };
    let upstream = Upstream::start(move |head, _| match head.path.as_str() {
        "/big" => Act::Raw(big.clone()),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    for _ in 0..3 {
        let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
        client
            .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0; 1024];
        let n = within(client.read(&mut first)).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        drop(client);
        each_gets_its_own_answer(&sidecar, &["/after"]).await;
    }
    // Each abandoned connection is closed; at most the echo connections stay.
    eventually(|| upstream.open() <= 1).await;
}

// ---- upgrades ----

#[tokio::test]
async fn a_101_to_a_plain_request_never_puts_its_connection_back() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/switch" => Act::Raw(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: evil\r\nconnection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSECRET"
                .to_vec(),
        ),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    let (status, _, body) = within(get(&sidecar.url("/switch"))).await;
    assert_ne!(body, "SECRET", "{status}");
    each_gets_its_own_answer(&sidecar, &["/n1", "/n2", "/n3"]).await;
    eventually(|| upstream.open() == 1).await;
}

// ---- leaks and limits ----

#[tokio::test]
async fn a_reload_closes_the_old_pools_idle_connections() {
    let upstream = Upstream::start(|_, _| Act::Echo).await;
    let config = yaml(&upstream, "");
    let sidecar = Sidecar::start(&config).await;
    each_gets_its_own_answer(&sidecar, &["/before"]).await;
    assert_eq!(upstream.open(), 1);
    for _ in 0..3 {
        sidecar.app.reload().expect("reload");
        each_gets_its_own_answer(&sidecar, &["/after"]).await;
    }
    // The old pools are gone with their runtimes: only the newest pool's connection stays.
    eventually(|| upstream.open() == 1).await;
    assert_eq!(upstream.accepted(), 4);
}

#[tokio::test]
async fn a_burst_never_leaves_more_than_pool_max_idle_open_and_the_sweep_ends() {
    let upstream = Upstream::start(|_, _| Act::EchoAfter(Duration::from_millis(100))).await;
    let sidecar = Sidecar::start(&yaml(
        &upstream,
        "  pool_max_idle: 3\n  pool_idle_timeout: 1s\n",
    ))
    .await;
    let urls: Vec<String> = (0..12).map(|i| sidecar.url(&format!("/b{i}"))).collect();
    let answers = within(futures_util::future::join_all(urls.iter().map(|u| get(u)))).await;
    for (i, (status, _, body)) in answers.into_iter().enumerate() {
        assert_eq!((status, body), (StatusCode::OK, format!("/b{i}")));
    }
    assert_eq!(upstream.accepted(), 12);
    // Well before the idle timeout: only the three kept are open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.open(), 3);
    // Then the sweep closes them, with no request to trigger it.
    eventually(|| upstream.open() == 0).await;
}

#[tokio::test]
async fn a_websocket_on_a_reused_connection_leaves_the_pool_and_plain_requests_go_elsewhere() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/chat" => Act::WebSocket,
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/warm"]).await;
    let (mut ws, resp) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/chat",
        sidecar.addr
    )))
    .await
    .expect("websocket through the sidecar");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        upstream.requests(),
        ["GET /warm #1", "GET /chat #1"],
        "the handshake took the idle connection"
    );
    for text in ["one", "two"] {
        within(ws.send(Message::text(text))).await.unwrap();
        let back = within(ws.next()).await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap(), text);
        // Plain requests meanwhile go on another connection, never into the tunnel.
        each_gets_its_own_answer(&sidecar, &["/beside"]).await;
    }
    within(ws.close(None)).await.unwrap();
    each_gets_its_own_answer(&sidecar, &["/after"]).await;
    eventually(|| upstream.open() == 1).await;
    assert!(
        upstream
            .requests()
            .iter()
            .filter(|r| !r.contains("/warm") && !r.contains("/chat"))
            .all(|r| !r.ends_with("#1")),
        "{:?}",
        upstream.requests()
    );
}

#[tokio::test]
async fn a_client_that_leaves_an_endless_stream_frees_its_upstream_connection() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/events" => Act::Endless,
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    for _ in 0..3 {
        let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
        client
            .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0; 256];
        let n = within(client.read(&mut first)).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        drop(client);
    }
    eventually(|| upstream.open() == 0).await;
    each_gets_its_own_answer(&sidecar, &["/after"]).await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_off_and_its_upstream_connection_released() {
    let big = {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 16777216\r\n\r\n".to_vec();
        out.resize(out.len() + 16 * 1024 * 1024, b'z');
        out
    };
    let upstream = Upstream::start(move |head, _| match head.path.as_str() {
        "/big" => Act::Raw(big.clone()),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "limits:\n  send_timeout: 300ms\n")).await;
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The client keeps its connection but never reads.
    eventually(|| upstream.open() == 0).await;
    drop(client);
    each_gets_its_own_answer(&sidecar, &["/after"]).await;
}

#[tokio::test]
async fn an_early_answer_to_a_stalled_upload_frees_the_connection_when_the_client_goes() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/upload" => Act::AnswerFirst(echo("/upload")),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .unwrap();
    client.write_all(&[b'u'; 100_000]).await.unwrap();
    let mut answer = [0; 256];
    let n = within(client.read(&mut answer)).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    // The upload stalls, then the client goes: the upstream connection ends with it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    eventually(|| upstream.open() == 0).await;
    each_gets_its_own_answer(&sidecar, &["/after"]).await;
    assert_eq!(upstream.count("/upload"), 1);
}

#[tokio::test]
async fn a_streamed_post_after_the_upstream_closed_the_idle_connection_is_sent_once() {
    // Larger than `request_body_buffer`: the body streams, once. The idle connection the
    // pool holds was closed by the upstream; the request goes, whole, on a new one.
    static BODY: [u8; 200 * 1024] = [b's'; 200 * 1024];
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/warm" => Act::EchoThenClose(Duration::from_millis(30)),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/warm"]).await;
    eventually(|| upstream.open() == 0).await;
    let (status, _, body) = within(send(post(&sidecar.url("/stream"), &BODY))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/stream"));
    assert_eq!(upstream.requests(), ["GET /warm #1", "POST /stream #2"]);
}

#[tokio::test]
async fn a_post_written_to_a_new_connection_the_upstream_closed_at_once_is_not_resent() {
    // Connection 1 is accepted and closed before a byte is read (a server at its
    // connection limit does this). The POST was written (hyper says so: the message
    // is not handed back), so the proxy cannot know it was not processed: no resend.
    let upstream = Upstream::start_dropping(|n| n == 1, |_, _| Act::Echo).await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    let (status, _, _) = within(send(post(&sidecar.url("/order"), b"o"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.accepted(), 1, "no second connection carried it");
    // The next request goes on a new connection.
    let (status, _, body) = within(get(&sidecar.url("/get"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/get"));
}

/// Runs curl with these arguments (bounded by its own --max-time); None if curl is absent.
async fn curl(args: Vec<String>) -> Option<std::process::Output> {
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
    });
    match within(run).await.expect("curl task") {
        Ok(out) => Some(out),
        Err(_) => {
            eprintln!("curl is not installed: skipped");
            None
        }
    }
}

#[tokio::test]
async fn curl_uploads_with_expect_continue_and_a_head_keep_answers_in_order() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/up1" | "/up2" => Act::ContinueThenEcho,
        "/head" => Act::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec()),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    let file = support::temp_file("upload.bin", &"c".repeat(2 * 1024 * 1024));
    let data = format!("@{}", file.display());
    // One curl, one client connection: upload, upload, HEAD, GET.
    let args = vec![
        "-H".into(),
        "expect: 100-continue".into(),
        "--data-binary".into(),
        data.clone(),
        sidecar.url("/up1"),
        "--next".into(),
        "-H".into(),
        "expect: 100-continue".into(),
        "--data-binary".into(),
        data,
        sidecar.url("/up2"),
        "--next".into(),
        "-I".into(),
        sidecar.url("/head"),
        "--next".into(),
        sidecar.url("/plain"),
    ];
    let Some(out) = curl(args).await else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("/up1 2097152/up2 2097152HTTP/1.1 200 OK"),
        "{stdout}"
    );
    assert!(stdout.ends_with("\r\n\r\n/plain"), "{stdout}");
    assert_eq!(upstream.count("/up1") + upstream.count("/up2"), 2);
    each_gets_its_own_answer(&sidecar, &["/x", "/y"]).await;
}

// ---- a request that finds every connection busy ----

#[tokio::test]
async fn a_request_that_cannot_connect_takes_a_connection_given_back_meanwhile() {
    // An upstream at its connection limit: it serves its two connections and accepts no
    // more, and its accept queue is full, so a new connection cannot be made (SYNs are
    // dropped; `connect_timeout` ends the try). A third request while both are busy
    // should get one of them when it comes back (100 ms later) rather than fail.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let for_task = Arc::clone(&log);
    let task = tokio::spawn(async move {
        let script: Script = Arc::new(|_, _| Act::EchoAfter(Duration::from_millis(100)));
        let mut conns = Vec::new();
        for n in 1..=2 {
            let (stream, _) = listener.accept().await.unwrap();
            for_task.accepted.fetch_add(1, Ordering::SeqCst);
            let (script, log) = (Arc::clone(&script), Arc::clone(&for_task));
            conns.push(tokio::spawn(async move {
                serve(stream, n, &script, &log).await
            }));
        }
        // No more accepts; the listener stays open.
        std::future::pending::<()>().await;
        drop((listener, conns));
    });
    let upstream = Upstream {
        url: format!("http://{addr}"),
        log,
        task,
    };
    let extra = "  connect_timeout: 300ms\ndefaults:\n  retry:\n    attempts: 1\n";
    let sidecar = Sidecar::start(&yaml(&upstream, extra)).await;
    let warm: Vec<String> = (0..2).map(|i| sidecar.url(&format!("/warm{i}"))).collect();
    within(futures_util::future::join_all(warm.iter().map(|u| get(u)))).await;
    assert_eq!(upstream.accepted(), 2);
    // Fill the accept queue: connections until one cannot be made.
    let mut parked = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => parked.push(stream),
            _ => break,
        }
    }
    assert!(parked.len() < 8, "the accept queue never filled");
    let urls: Vec<String> = (0..3).map(|i| sidecar.url(&format!("/busy{i}"))).collect();
    let answers = within(futures_util::future::join_all(urls.iter().map(|u| get(u)))).await;
    for (i, (status, headers, body)) in answers.into_iter().enumerate() {
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, format!("/busy{i}").as_str()),
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn posts_racing_an_upstream_that_closes_after_each_answer_are_never_sent_twice() {
    // Every answer says keep-alive, then the upstream closes at once: connections come
    // back to the pool and die under the requests that take them. Each POST reaches the
    // upstream at most once, whatever it gets back.
    let upstream = Upstream::start(|_, _| Act::EchoThenClose(Duration::ZERO)).await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    let mut ok = 0;
    for round in 0..5 {
        let urls: Vec<String> = (0..40)
            .map(|i| sidecar.url(&format!("/pay/{round}/{i}")))
            .collect();
        let posts = urls.iter().map(|u| send(post(u, b"once")));
        for (status, _, _) in within(futures_util::future::join_all(posts)).await {
            assert!(
                status == StatusCode::OK || status == StatusCode::BAD_GATEWAY,
                "{status}"
            );
            ok += usize::from(status == StatusCode::OK);
        }
    }
    let mut paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    let all = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), all, "a POST reached the upstream twice");
    assert!(ok > 0);
    eprintln!("{ok} of 200 answered, {all} reached the upstream");
}

#[tokio::test]
async fn reloads_leave_no_pool_tasks_or_connections_behind() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        "/big" => Act::Raw({
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
            out.resize(out.len() + 1024 * 1024, b'z');
            out
        }),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "  pool_idle_timeout: 200ms\n")).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let round = || async {
        for _ in 0..10 {
            // A streamed answer (given back from a task) and a small one, then a reload.
            let (status, _, body) = within(get(&sidecar.url("/big"))).await;
            assert_eq!((status, body.len()), (StatusCode::OK, 1024 * 1024));
            each_gets_its_own_answer(&sidecar, &["/small"]).await;
            sidecar.app.reload().expect("reload");
        }
        // Every pool's idle connections expire and its sweep ends.
        eventually(|| upstream.open() == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        metrics.num_alive_tasks()
    };
    let after_one = round().await;
    let after_two = round().await;
    let after_three = round().await;
    assert!(
        after_three <= after_one && after_two <= after_one,
        "tasks alive after rounds: {after_one}, {after_two}, {after_three}"
    );
}

#[tokio::test]
async fn answers_framed_by_close_or_http_1_0_are_never_followed_on_their_connection() {
    let upstream = Upstream::start(|head, _| match head.path.as_str() {
        // No length: the body ends when the connection does.
        "/until-close" => Act::RawThenClose(b"HTTP/1.1 200 OK\r\n\r\n/until-close".to_vec()),
        // HTTP/1.0 without keep-alive, with a length: still the last on its connection.
        "/old" => Act::Raw(b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\n/old".to_vec()),
        // HTTP/1.0 that asks to be kept: may be reused.
        "/old-kept" => Act::Raw(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 9\r\n\r\n/old-kept"
                .to_vec(),
        ),
        _ => Act::Echo,
    })
    .await;
    let sidecar = Sidecar::start(&yaml(&upstream, "")).await;
    each_gets_its_own_answer(&sidecar, &["/until-close", "/a", "/old", "/b"]).await;
    each_gets_its_own_answer(&sidecar, &["/old-kept", "/c"]).await;
    let requests = upstream.requests();
    assert_eq!(
        requests,
        [
            "GET /until-close #1",
            "GET /a #2",
            "GET /old #2",
            "GET /b #3",
            "GET /old-kept #3",
            "GET /c #3"
        ]
    );
}
