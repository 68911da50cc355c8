//! A scriptable, flaky HTTP/1.1 backend on a real loopback socket.
//!
//! It speaks just enough HTTP/1.1 by hand (request head, Content-Length and chunked
//! bodies, keep-alive) to misbehave on purpose in ways a real server library would not let
//! us: close without answering, send garbage, stall, stream slowly. Each request takes
//! the next scripted [`Action`] (or the default one) and is recorded for assertions.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the backend does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer this status with a body saying `status N`.
    Status(u16),
    /// Answer in full.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Answer 200 with the request body.
    Echo,
    /// Wait, then do the inner action.
    Delay(Duration, Box<Action>),
    /// Read the request, then close the connection without answering.
    Reset,
    /// Answer with bytes that are not HTTP, then close.
    Garbage,
    /// Answer 200 with a chunked body of `chunks` pieces, `interval` apart.
    Slow { chunks: usize, interval: Duration },
    /// Read the request and never answer (holds the connection until the test ends).
    Hang,
    /// Send headers promising `promised` bytes, send fewer, then close.
    Truncated { promised: usize, sent: usize },
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    /// Fixed actions by exact path; they bypass the script.
    paths: Mutex<Vec<(String, Action)>>,
    script: Mutex<VecDeque<Action>>,
    default: Mutex<Option<Action>>,
    received: Mutex<Vec<Received>>,
}

/// A running backend; stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend on `127.0.0.1:0` that answers `200 ok` unless scripted otherwise.
    pub async fn start() -> Backend {
        Backend::start_on(0).await
    }

    /// Starts a backend on a given loopback port (0: any).
    pub async fn start_on(port: u16) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let shared = Arc::new(Shared::default());
        let for_task = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&for_task);
                conns.push(tokio::spawn(serve_connection(stream, shared)));
                conns.retain(|c: &JoinHandle<()>| !c.is_finished());
            }
        });
        Backend { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues actions for the next requests, in order.
    pub fn script(&self, actions: impl IntoIterator<Item = Action>) {
        self.shared.script.lock().unwrap().extend(actions);
    }

    /// What every request does once the script is used up (default: `200 ok`).
    pub fn set_default(&self, action: Action) {
        *self.shared.default.lock().unwrap() = Some(action);
    }

    /// Answers requests for exactly this path with `action`, leaving the script alone.
    /// Such requests are not recorded (health checks would blur the counts).
    pub fn on_path(&self, path: &str, action: Action) {
        let mut paths = self.shared.paths.lock().unwrap();
        paths.retain(|(p, _)| p != path);
        paths.push((path.to_owned(), action));
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut reader).await else {
            return;
        };
        let fixed = shared
            .paths
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == req.target)
            .map(|(_, a)| a.clone());
        if let Some(action) = fixed {
            if !act(&action, &req, reader.get_mut()).await {
                return;
            }
            continue;
        }
        shared.received.lock().unwrap().push(req.clone());
        let next = shared.script.lock().unwrap().pop_front();
        let action = next
            .or_else(|| shared.default.lock().unwrap().clone())
            .unwrap_or(Action::Status(200));
        if !act(&action, &req, reader.get_mut()).await {
            return;
        }
    }
}

/// Performs an action; `false` when the connection must close.
async fn act(action: &Action, req: &Received, stream: &mut TcpStream) -> bool {
    let mut action = action.clone();
    while let Action::Delay(d, inner) = action {
        tokio::time::sleep(d).await;
        action = *inner;
    }
    match action {
        Action::Status(status) => {
            let body = if status == 200 {
                b"ok".to_vec()
            } else {
                format!("status {status}").into_bytes()
            };
            respond(stream, status, &[], &body).await
        }
        Action::Respond {
            status,
            headers,
            body,
        } => respond(stream, status, &headers, &body).await,
        Action::Echo => respond(stream, 200, &[], &req.body).await,
        Action::Reset => {
            let _ = stream.shutdown().await;
            false
        }
        Action::Garbage => {
            let _ = stream.write_all(b"this is not http at all\r\n\r\n").await;
            let _ = stream.shutdown().await;
            false
        }
        Action::Slow { chunks, interval } => {
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for i in 0..chunks {
                tokio::time::sleep(interval).await;
                let piece = format!("chunk {i}\n");
                let frame = format!("{:x}\r\n{piece}\r\n", piece.len());
                if stream.write_all(frame.as_bytes()).await.is_err() {
                    return false;
                }
            }
            stream.write_all(b"0\r\n\r\n").await.is_ok()
        }
        Action::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            false
        }
        Action::Truncated { promised, sent } => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {promised}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b'x'; sent]).await;
            let _ = stream.flush().await;
            false
        }
        Action::Delay(..) => unreachable!("delays unwrapped above"),
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> bool {
    let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await.is_ok()
}

/// Reads one line; bytes that are not UTF-8 are kept lossily (the proxy may forward opaque
/// header bytes, and the backend must still be able to record the request).
async fn read_line(reader: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    let n = reader.read_until(b'\n', &mut bytes).await?;
    line.push_str(&String::from_utf8_lossy(&bytes));
    Ok(n)
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if read_line(reader, &mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if read_line(reader, &mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            read_line(reader, &mut size).await.ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // Trailers until an empty line.
                loop {
                    let mut t = String::new();
                    read_line(reader, &mut t).await.ok()?;
                    if t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = find("content-length") {
        let mut b = vec![0; len.parse().ok()?];
        reader.read_exact(&mut b).await.ok()?;
        body = b;
    }
    Some(Received {
        method,
        target,
        headers,
        body,
    })
}
