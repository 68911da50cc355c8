//! Review of parking idle HTTP/1 connections (`server::accept`): a client must see no
//! difference. Every test talks real HTTP/1 over loopback sockets to the sidecar started
//! in-process, and waits past `PARK_AFTER` at the moments that matter.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrigger::server::accept::PARK_AFTER;
use support::review_conn::{get_request, read_response, RawConn};
use support::{within, Action, Backend, Sidecar};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Long enough for a connection to be parked.
fn past_parking() -> Duration {
    PARK_AFTER * 3
}

/// Everything the peer sends until it closes or `wait` passes with nothing new.
async fn read_for(stream: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(wait, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How many HTTP/1 status lines a byte stream holds.
fn responses_in(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

/// An HTTP/1.1 upstream that answers `200 early` as soon as it has read a request's head,
/// without waiting for its body (as servers that reject or ignore an upload do), then
/// reads and keeps the rest of what the proxy sends on that connection.
struct EarlyUpstream {
    addr: SocketAddr,
    /// Request lines seen at the start of each connection.
    heads: Arc<Mutex<Vec<String>>>,
    /// Everything received after the first head, per connection (appended as it comes).
    after: Arc<Mutex<Vec<u8>>>,
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
        let heads = Arc::new(Mutex::new(Vec::new()));
        let after = Arc::new(Mutex::new(Vec::new()));
        let (h, a) = (Arc::clone(&heads), Arc::clone(&after));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, a) = (Arc::clone(&h), Arc::clone(&a));
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut first = String::new();
                    if reader.read_line(&mut first).await.unwrap_or(0) == 0 {
                        return;
                    }
                    h.lock().unwrap().push(first.trim_end().to_owned());
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
                            Ok(n) => a.lock().unwrap().extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        EarlyUpstream {
            addr,
            heads,
            after,
            task,
        }
    }
}

/// A POST whose upstream answered before its body ended: the rest of the body is still
/// request body once the connection has had no request for `PARK_AFTER`. Parking takes the
/// socket back from hyper in the middle of that body (no request is "in progress" for the
/// watchdog: the response is done), drops hyper's body sender (the upstream gets a
/// truncated body) and hands the remaining body bytes to a new hyper connection, which
/// parses them as a request: a request smuggled inside a body is served. Behind a shared
/// front proxy (an ingress reusing its connections), that answer goes to another client.
async fn body_end_after_early_answer(head: &str, first_part: &str, rest: &str, smuggled: &str) {
    let upstream = EarlyUpstream::start().await;
    let sidecar = Sidecar::start(&format!("upstream:\n  url: http://{}\n", upstream.addr)).await;
    let mut client = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    client
        .write_all(format!("{head}{first_part}").as_bytes())
        .await
        .unwrap();
    // The upstream's early answer comes back while the body is unfinished.
    let mut answer = vec![0u8; 0];
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("early") {
        let n = within(client.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the early answer");
        answer.extend_from_slice(&buf[..n]);
    }
    // The client sends the rest of its body a little later (a slow upload).
    tokio::time::sleep(past_parking()).await;
    client.write_all(rest.as_bytes()).await.unwrap();
    let more = read_for(&mut client, Duration::from_secs(1)).await;
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(
        responses_in(&more),
        0,
        "the end of a request body was answered as a request: {more:?}; upstream saw {heads:?}"
    );
    assert_eq!(heads.len(), 1, "the upstream saw {heads:?}");
    // The upstream got the body whole, as it would without parking.
    let after = String::from_utf8_lossy(&upstream.after.lock().unwrap()).into_owned();
    assert!(
        after.contains(smuggled),
        "the upstream got {after:?} after the head, not the whole body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_body_is_never_read_as_a_new_request() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    let length = 4 + smuggled.len();
    let head = format!("POST /upload HTTP/1.1\r\nHost: test\r\ncontent-length: {length}\r\n\r\n");
    body_end_after_early_answer(&head, "aaaa", smuggled, smuggled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_chunk_is_never_read_as_a_new_request() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    let head = "POST /upload HTTP/1.1\r\nHost: test\r\ntransfer-encoding: chunked\r\n\r\n";
    let first = format!("{:x}\r\naaaa", 4 + smuggled.len());
    let rest = format!("{smuggled}\r\n0\r\n\r\n");
    body_end_after_early_answer(head, &first, &rest, smuggled).await;
}

/// A POST with a body and a pipelined GET behind it, cut in two at every byte: the first
/// part, a pause long enough to park, the rest. Each cut on its own connection, all at
/// once; `warm`: after one request already served (and a park) on that connection.
async fn split_everywhere(warm: bool) {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let sample = |k: usize| {
        let body = format!("body-{k:03}");
        format!(
            "POST /post-{k} HTTP/1.1\r\nHost: test\r\ncontent-length: {}\r\n\r\n{body}\
             GET /after-{k} HTTP/1.1\r\nHost: test\r\n\r\n",
            body.len()
        )
    };
    let len = sample(0).len();
    let mut tasks = Vec::new();
    for k in 1..len {
        let addr = sidecar.addr;
        tasks.push(tokio::spawn(async move {
            let bytes = sample(k).into_bytes();
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut reader = BufReader::new(stream);
            if warm {
                reader
                    .get_mut()
                    .write_all(&get_request("1.1", &format!("/warm-{k}"), ""))
                    .await
                    .unwrap();
                let (head, _) = read_response(&mut reader).await.expect("warm answer");
                assert!(head.starts_with("http/1.1 200"), "{head}");
                tokio::time::sleep(past_parking()).await;
            }
            reader.get_mut().write_all(&bytes[..k]).await.unwrap();
            tokio::time::sleep(past_parking()).await;
            reader.get_mut().write_all(&bytes[k..]).await.unwrap();
            let first = read_response(&mut reader).await;
            let second = read_response(&mut reader).await;
            (k, first, second)
        }));
    }
    for task in tasks {
        let (k, first, second) = within(task).await.unwrap();
        let (head, body) = first.unwrap_or_else(|| panic!("cut at {k}: no answer to the POST"));
        assert!(head.starts_with("http/1.1 200"), "cut at {k}: {head}");
        assert_eq!(body, format!("body-{k:03}"), "cut at {k}");
        let (head, body) = second.unwrap_or_else(|| panic!("cut at {k}: no answer to the GET"));
        assert!(head.starts_with("http/1.1 200"), "cut at {k}: {head}");
        assert_eq!(body, "", "cut at {k}");
    }
    let mut targets: Vec<String> = backend
        .received()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| !t.starts_with("/warm-"))
        .collect();
    targets.sort();
    let mut expected: Vec<String> = (1..len)
        .flat_map(|k| [format!("/post-{k}"), format!("/after-{k}")])
        .collect();
    expected.sort();
    assert_eq!(targets, expected, "each request reached the upstream once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_every_byte_around_a_park_are_each_answered_once() {
    split_everywhere(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_every_byte_after_a_park_are_each_answered_once() {
    split_everywhere(true).await;
}

/// Trickles `head` a byte every `pace` (each pause long enough to park) until the
/// connection closes; how long after the first byte it closed, and whether any answer came.
async fn trickle(addr: SocketAddr, warm: bool, head: &[u8], pace: Duration) -> (Duration, String) {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    if warm {
        stream
            .write_all(&get_request("1.1", "/warm", ""))
            .await
            .unwrap();
        let got = read_for(&mut stream, Duration::from_millis(300)).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        tokio::time::sleep(past_parking()).await;
    }
    let (mut read, mut write) = stream.into_split();
    let start = Instant::now();
    let head = head.to_vec();
    let writer = tokio::spawn(async move {
        for byte in head {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
        // Keep the write side open: the reader decides.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match within(read.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = start.elapsed();
    writer.abort();
    (elapsed, String::from_utf8_lossy(&got).into_owned())
}

/// Slowloris: a head trickled one byte per park interval cannot make every park restart
/// hyper's `header_read_timeout`; it restarts at most once, so the connection is cut
/// about `header_read_timeout` (+ one park) after its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_near_header_read_timeout_despite_parks() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "limits:\n  header_read_timeout: 1s\n").await;
    let mut head = b"GET /slow HTTP/1.1\r\nHost: test\r\nx-pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 200));
    let pace = PARK_AFTER + PARK_AFTER / 2;
    for warm in [false, true] {
        let (elapsed, got) = trickle(sidecar.addr, warm, &head, pace).await;
        assert!(
            !got.contains(" 200 "),
            "warm {warm}: the trickled request was answered: {got}"
        );
        assert!(
            elapsed < Duration::from_millis(1000) + PARK_AFTER * 5,
            "warm {warm}: cut only after {elapsed:?} (header_read_timeout 1s)"
        );
        // A fresh connection gets the whole timeout (a warm one's may count from idle).
        assert!(
            warm || elapsed >= Duration::from_millis(900),
            "cut already after {elapsed:?}"
        );
    }
    assert_eq!(backend.count(), 1, "only the warm-up request went upstream");
}

/// Connects, is answered one GET, and waits long enough to be parked.
async fn parked_conn(addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(&get_request("1.1", "/warm", ""))
        .await
        .unwrap();
    let (head, _) = within(read_response(&mut reader))
        .await
        .expect("warm answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    tokio::time::sleep(past_parking()).await;
    reader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_works_after_a_park() {
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    for method in ["POST", "PUT"] {
        let mut conn = parked_conn(sidecar.addr).await;
        let head = format!(
            "{method} /upload HTTP/1.1\r\nHost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        );
        conn.get_mut().write_all(head.as_bytes()).await.unwrap();
        let mut line = String::new();
        within(conn.read_line(&mut line)).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 100"), "{method}: {line:?}");
        line.clear();
        within(conn.read_line(&mut line)).await.unwrap();
        assert_eq!(line, "\r\n");
        // The body after another pause long enough to park.
        tokio::time::sleep(past_parking()).await;
        conn.get_mut().write_all(b"hello").await.unwrap();
        let (head, body) = within(read_response(&mut conn)).await.expect("answer");
        assert!(head.starts_with("http/1.1 200"), "{method}: {head}");
        assert_eq!(body, "hello", "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_survives_parks() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    for i in 0..3 {
        conn.send(&get_request(
            "1.0",
            &format!("/ka-{i}"),
            "Connection: keep-alive\r\n",
        ))
        .await;
        let (head, body) = conn.response().await.expect("answer");
        assert!(head.starts_with("http/1."), "{head}");
        assert!(head.contains(" 200 "), "{head}");
        assert!(head.contains("connection: keep-alive"), "{i}: {head}");
        assert_eq!(body, "ok");
        tokio::time::sleep(past_parking()).await;
    }
    conn.send(&get_request("1.0", "/last", "")).await;
    let (head, _) = conn.response().await.expect("answer");
    assert!(head.contains(" 200 "), "{head}");
    assert!(conn.closed().await, "HTTP/1.0 without keep-alive is closed");
    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/ka-0", "/ka-1", "/ka-2", "/last"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_after_a_park_tunnels() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws_backend = support::servers::websocket_echo().await;
    let sidecar = Sidecar::start(&format!("upstream:\n  url: http://{}\n", ws_backend.addr)).await;
    // A plain request first (the echo server is no HTTP server: it answers no GET), so
    // the first request is one the sidecar answers itself: a bad method.
    let stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"CONNECT test:443 HTTP/1.1\r\nHost: test:443\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = within(read_response(&mut reader)).await.expect("answer");
    assert!(head.starts_with("http/1.1 405"), "{head}");
    tokio::time::sleep(past_parking()).await;
    let stream = reader.into_inner();
    let (mut ws, resp) = within(tokio_tungstenite::client_async(
        format!("ws://{}/chat", sidecar.addr),
        stream,
    ))
    .await
    .expect("upgrade after a park");
    assert_eq!(resp.status(), 101);
    for text in ["one", "two"] {
        within(ws.send(Message::text(text))).await.unwrap();
        let back = within(ws.next()).await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap(), text);
        tokio::time::sleep(past_parking()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_while_parked_is_closed() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let conn = parked_conn(sidecar.addr).await;
    let mut stream = conn.into_inner();
    stream.shutdown().await.unwrap();
    let started = Instant::now();
    let got = read_for(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(got, "");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "still open {:?} after the client's FIN",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_then_half_close_while_parked_is_answered_as_without_parking() {
    // hyper (half_close off) may drop a request whose client half-closed; what matters
    // here is that parking does not change it. Compared with a connection never parked.
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(50),
        Box::new(Action::Status(200)),
    ));
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let mut outcomes = Vec::new();
    for park in [false, true] {
        let stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(&get_request("1.1", "/warm", ""))
            .await
            .unwrap();
        within(read_response(&mut reader)).await.expect("warm");
        if park {
            tokio::time::sleep(past_parking()).await;
        }
        let mut stream = reader.into_inner();
        stream
            .write_all(&get_request("1.1", "/then-fin", ""))
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let got = read_for(&mut stream, Duration::from_secs(2)).await;
        outcomes.push(got.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "never parked / parked: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_parked_connection_on_time() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "limits:\n  idle_timeout: 1s\n").await;
    for extra_parks in [false, true] {
        let stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(&get_request("1.1", "/a", ""))
            .await
            .unwrap();
        within(read_response(&mut reader)).await.expect("answer");
        let answered = Instant::now();
        if extra_parks {
            // A request at 0.5 s restarts the idle time.
            tokio::time::sleep(Duration::from_millis(500)).await;
            reader
                .get_mut()
                .write_all(&get_request("1.1", "/b", ""))
                .await
                .unwrap();
            within(read_response(&mut reader)).await.expect("answer");
        }
        let last = Instant::now();
        let mut byte = [0u8; 1];
        let n = within(reader.read(&mut byte)).await.unwrap_or(0);
        assert_eq!(n, 0, "closed without sending anything");
        let idle = last.elapsed();
        assert!(
            idle >= Duration::from_millis(900) && idle < Duration::from_millis(1600),
            "closed {idle:?} after the last answer ({:?} after the first)",
            answered.elapsed()
        );
    }
}

/// POST /shutdown (drain_delay 0) while many connections are parked and each sends a
/// request at that very moment: every request the upstream saw is answered whole, and a
/// connection not answered is closed without a byte (never a cut answer, never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_unparking_loses_no_answer() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(50),
        Box::new(Action::Status(200)),
    ));
    let sidecar = Sidecar::in_front_of(&backend, "shutdown:\n  timeout: 5s\n").await;
    let admin = sidecar.admin;
    let addr = sidecar.addr;
    let opening: Vec<_> = (0..60)
        .map(|_| tokio::spawn(async move { parked_conn(addr).await }))
        .collect();
    let mut conns = Vec::new();
    for conn in opening {
        conns.push(within(conn).await.unwrap());
    }
    tokio::time::sleep(past_parking()).await;
    let warm = backend.count();
    let shutdown = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let shutdown = http::Request::post(format!("http://{admin}/shutdown"))
            .body(Default::default())
            .unwrap();
        support::send(shutdown).await.0
    });
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // Spread over the moment the drain begins; half of them send their head in
            // two parts.
            tokio::time::sleep(Duration::from_micros(500 * i as u64)).await;
            let req = get_request("1.1", &format!("/during-{i}"), "");
            if i % 2 == 0 {
                let _ = conn.get_mut().write_all(&req).await;
            } else {
                let _ = conn.get_mut().write_all(&req[..10]).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let _ = conn.get_mut().write_all(&req[10..]).await;
            }
            let mut all = Vec::new();
            let _ = within(conn.read_to_end(&mut all)).await;
            String::from_utf8_lossy(&all).into_owned()
        }));
    }
    let status = within(shutdown).await.unwrap();
    assert!(status.is_success(), "{status}");
    let mut answered = 0;
    for task in tasks {
        let got = within(task).await.unwrap();
        if got.is_empty() {
            continue;
        }
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("ok") && responses_in(&got) == 1,
            "{got:?}"
        );
        answered += 1;
    }
    assert_eq!(
        backend.count() - warm,
        answered,
        "requests the upstream saw / answers the clients got"
    );
    eprintln!("{answered} of 60 answered during the drain");
}

/// Which TCP state the sidecar's end of a client connection is in (`/proc/net/tcp`):
/// "01" established, "04" FIN_WAIT1 (closed by the sidecar, data still queued), ...
fn server_side_state(server: SocketAddr, client: SocketAddr) -> Option<String> {
    let hex = |a: SocketAddr| {
        let SocketAddr::V4(v4) = a else {
            panic!("v4 only")
        };
        let ip = u32::from_le_bytes(v4.ip().octets());
        format!("{ip:08X}:{:04X}", v4.port())
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1] == local && f[2] == remote).then(|| f[3].to_owned())
    })
}

/// A client that never reads a response whose body the proxy has finished taking from
/// the upstream: the bytes left sit in hyper's write buffer (no response body "waits"
/// any more for the watchdog). `send_timeout` must still cut it, and `idle_timeout` close
/// it: after both, the sidecar's end of the connection is no longer established.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_client_is_let_go_even_once_its_body_ended_in_hyper() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(
        &backend,
        "limits:\n  send_timeout: 1s\n  idle_timeout: 2s\n",
    )
    .await;
    let mut stuck = Vec::new();
    let mut conns = Vec::new();
    for len in [256usize << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20] {
        backend.set_default(Action::Respond {
            status: 200,
            headers: vec![],
            body: vec![b'x'; len],
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = within(socket.connect(sidecar.addr)).await.unwrap();
        stream
            .write_all(&get_request("1.1", "/big", ""))
            .await
            .unwrap();
        // Let the upstream answer reach the proxy before the next one is scripted.
        tokio::time::sleep(Duration::from_millis(300)).await;
        conns.push((len, stream));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (len, stream) in &conns {
        let state = server_side_state(sidecar.addr, stream.local_addr().unwrap());
        if state.as_deref() == Some("01") {
            stuck.push(*len);
        }
    }
    assert!(
        stuck.is_empty(),
        "still established 5 s after the answer with send_timeout 1s, idle_timeout 2s \
         although the client read nothing: bodies of {stuck:?} bytes"
    );
}

/// 2,000 connections, each sending 4 POSTs (each cut in two) with pauses around the park
/// moment between them, parking and unparking all at about the same time: every answer is its own request's (bodies are
/// unique), each request reached the upstream once, and a bystander on its own connection
/// keeps being served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_park_and_unpark_without_mixing_answers() {
    const CONNS: usize = 2000;
    // Client, proxy and upstream sockets all live in this process.
    support::raise_descriptor_limit();
    const REQUESTS: usize = 4;
    let backend = Backend::start().await;
    backend.set_default(Action::Echo);
    let sidecar = Sidecar::start(&format!(
        "upstream:\n  url: {}\n  pool_max_idle: 512\nlimits:\n  max_concurrent_requests: 8192\n",
        backend.url()
    ))
    .await;
    let addr = sidecar.addr;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let bystander = tokio::spawn(async move {
        let mut conn = RawConn::connect(addr).await;
        let mut worst = Duration::ZERO;
        let mut served = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && served < 2000 {
            let asked = Instant::now();
            conn.send(&get_request("1.1", "/bystander", "")).await;
            let (head, _) = conn.response().await.expect("bystander answer");
            assert!(head.starts_with("http/1.1 200"), "{head}");
            worst = worst.max(asked.elapsed());
            served += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (served, worst)
    });
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        tasks.push(tokio::spawn(async move {
            // Connect in waves of 200 so the listen backlog is not the test.
            tokio::time::sleep(Duration::from_millis((c / 200) as u64 * 20)).await;
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut reader = BufReader::new(stream);
            for r in 0..REQUESTS {
                let body = format!("conn-{c}-req-{r}");
                let req = format!(
                    "POST /c{c}/r{r} HTTP/1.1\r\nHost: test\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                // Cut somewhere (a different place each time), 0-2 ms apart; not the
                // first request unless CUT_FIRST is set: during this connect burst a few
                // fresh connections whose first request comes in two pieces are closed
                // unanswered, with or without parking (seen on 6c63fb9 too; not a
                // parking defect, not investigated further).
                let cut_first = std::env::var_os("CUT_FIRST").is_some();
                let cut = if r == 0 && !cut_first {
                    0
                } else {
                    (c * 31 + r * 17) % req.len()
                };
                reader
                    .get_mut()
                    .write_all(&req.as_bytes()[..cut])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(((c + r) % 3) as u64)).await;
                reader
                    .get_mut()
                    .write_all(&req.as_bytes()[cut..])
                    .await
                    .unwrap();
                let asked = Instant::now();
                let Some((head, echoed)) = read_response(&mut reader).await else {
                    let mut byte = [0u8; 1];
                    let how = reader.read(&mut byte).await;
                    return Err(format!(
                        "conn {c} request {r}: closed ({how:?}) after {:?}, cut at {cut}",
                        asked.elapsed()
                    ));
                };
                if !head.starts_with("http/1.1 200") || echoed != body {
                    return Err(format!("conn {c} request {r}: {head} {echoed:?}"));
                }
                // Around the park moment: 80-120 ms.
                let pause = PARK_AFTER - Duration::from_millis(20)
                    + Duration::from_millis(((c * 7 + r * 13) % 41) as u64);
                tokio::time::sleep(pause).await;
            }
            Ok(())
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("bounded")
            .unwrap()
        {
            failures.push(e);
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, worst) = within(bystander).await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut targets: Vec<String> = backend
        .received()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| t != "/bystander")
        .collect();
    targets.sort();
    targets.dedup();
    assert_eq!(
        targets.len(),
        CONNS * REQUESTS,
        "each request upstream once"
    );
    let bystanders = backend
        .received()
        .iter()
        .filter(|r| r.target == "/bystander")
        .count();
    assert_eq!(bystanders, served);
    eprintln!("bystander: {served} requests, worst {worst:?}");
    assert!(worst < Duration::from_secs(5), "bystander waited {worst:?}");
}

/// The same with no misbehaving upstream at all: a client that stalls its upload gets 408
/// after the route's `timeout`; if the upload's end then arrives after a park, it must not
/// be served as a request. (Without parking hyper either reads it as the body's end or
/// closes the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_body_after_a_408_is_never_read_as_a_new_request() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "defaults:\n  timeout: 1s\n").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    let first_part = "aaaa";
    let length = first_part.len() + smuggled.len();
    let mut client = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: test\r\ncontent-length: {length}\r\n\r\n");
    client
        .write_all(format!("{head}{first_part}").as_bytes())
        .await
        .unwrap();
    let answer = read_for(&mut client, Duration::from_millis(4000)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    tokio::time::sleep(past_parking()).await;
    // The connection may have been closed (then this write may fail): that is fine.
    let _ = client.write_all(smuggled.as_bytes()).await;
    let more = read_for(&mut client, Duration::from_secs(1)).await;
    let targets: Vec<String> = backend.received().into_iter().map(|r| r.target).collect();
    assert_eq!(
        responses_in(&more),
        0,
        "the end of a request body was answered as a request: {more:?}; upstream saw {targets:?}"
    );
    assert!(!targets.contains(&"/smuggled".to_owned()), "{targets:?}");
}

/// Not a pass/fail test (run with `--ignored --nocapture`): the CPU this process spends
/// while 2,000 HTTP/1 connections each wait 7 s for a slow upstream answer (a long poll),
/// i.e. while nothing at all happens. Each connection's watchdog now looks again every
/// `PARK_AFTER` whatever the state, so this is about 20,000 timer wake-ups a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a measurement"]
async fn cpu_while_long_polls_wait() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_secs(7),
        Box::new(Action::Status(200)),
    ));
    let sidecar = Sidecar::start(&format!(
        "upstream:\n  url: {}\n  pool_max_idle: 4096\nlimits:\n  max_concurrent_requests: 8192\n\
         defaults:\n  timeout: 15s\n  retry:\n    per_try_timeout: 10s\n",
        backend.url()
    ))
    .await;
    let mut conns = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        s.write_all(&get_request("1.1", "/poll", "")).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = std::process::id();
    let before = support::review_conn::cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = support::review_conn::cpu_time(pid) - before;
    eprintln!("2000 waiting long polls: {used:?} CPU in 3 s of wall time");
    for s in conns {
        let mut reader = BufReader::new(s);
        let (head, _) = within(read_response(&mut reader)).await.expect("answer");
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
}

/// README ("Slow clients and uploads", `limits.idle_timeout`): "hyper also applies
/// `limits.header_read_timeout` to an HTTP/1.1 connection waiting for its next request, so
/// an idle HTTP/1.1 connection is closed after the shorter of the two." Parking drops
/// hyper's connection (and its header timer) after `PARK_AFTER`, so a parked connection now
/// lives for `idle_timeout` alone: with the defaults, 60 s instead of 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_is_closed_after_the_shorter_of_the_two_timeouts() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(
        &backend,
        "limits:\n  header_read_timeout: 1s\n  idle_timeout: 5s\n",
    )
    .await;
    let mut conn = RawConn::connect(sidecar.addr).await;
    conn.send(&get_request("1.1", "/", "")).await;
    conn.response().await.expect("answer");
    let answered = Instant::now();
    assert!(conn.closed().await);
    let idle = answered.elapsed();
    assert!(
        idle < Duration::from_millis(2500),
        "an idle HTTP/1.1 connection was closed after {idle:?}, not after \
         header_read_timeout (1s), the shorter of the two"
    );
}

/// A WebSocket upgrade whose head (large: more than hyper's first read) is cut by a park,
/// with the first frame sent right behind the head: the frame crosses the carried-over
/// bytes, hyper's leftover and the upgraded socket in order, and comes back echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_head_cut_by_a_park_with_a_frame_behind_it_tunnels() {
    let ws_backend = support::servers::websocket_echo().await;
    let sidecar = Sidecar::start(&format!("upstream:\n  url: http://{}\n", ws_backend.addr)).await;
    for pad in [10usize, 12_000, 30_000] {
        let head = format!(
            "GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             x-pad: {}\r\n\r\n",
            "p".repeat(pad)
        );
        // A masked text frame "hello" (mask 1,2,3,4).
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 5];
        frame.extend_from_slice(&mask);
        frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&frame);
        let cut = bytes.len() - frame.len() - 20;
        let mut stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
        stream.write_all(&bytes[..cut]).await.unwrap();
        tokio::time::sleep(past_parking()).await;
        stream.write_all(&bytes[cut..]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let expected_tail = [0x81u8, 5, b'h', b'e', b'l', b'l', b'o'];
        while !got.ends_with(&expected_tail) {
            let n = within(stream.read(&mut buf)).await.unwrap();
            assert!(
                n > 0,
                "pad {pad}: closed; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101"), "pad {pad}");
    }
}

/// The header size limit still holds when a head is cut by a park (the carried-over
/// bytes count): 431, as without parking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_cut_by_a_park_is_still_431() {
    let backend = Backend::start().await;
    let sidecar =
        Sidecar::in_front_of(&backend, "limits:\n  max_request_header_bytes: 16KiB\n").await;
    let head = format!(
        "GET /big HTTP/1.1\r\nHost: test\r\nx-pad: {}\r\n\r\n",
        "p".repeat(40_000)
    );
    let mut stream = within(TcpStream::connect(sidecar.addr)).await.unwrap();
    stream.write_all(&head.as_bytes()[..12_000]).await.unwrap();
    tokio::time::sleep(past_parking()).await;
    let _ = stream.write_all(&head.as_bytes()[12_000..]).await;
    let got = read_for(&mut stream, Duration::from_secs(2)).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
    assert_eq!(backend.count(), 0);
}

/// The admin listener shares the accept loop: a keep-alive admin connection parks and
/// serves on, `POST /shutdown` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connection_serves_across_parks() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;
    let mut conn = RawConn::connect(sidecar.admin).await;
    for path in ["/live", "/ready", "/health"] {
        conn.send(&get_request("1.1", path, "")).await;
        let (head, _) = conn.response().await.expect("answer");
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        tokio::time::sleep(past_parking()).await;
    }
    conn.send(b"POST /shutdown HTTP/1.1\r\nHost: test\r\ncontent-length: 0\r\n\r\n")
        .await;
    let (head, _) = conn.response().await.expect("answer");
    assert!(head.starts_with("http/1.1 2"), "{head}");
}
