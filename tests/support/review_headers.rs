//! Peers for the header and framing review tests: a raw HTTP/1.1 upstream that records
//! requests byte for byte (trailers included, which [`super::Backend`] reads past) and
//! answers canned bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A raw HTTP/1.1 upstream; stops when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    /// Every request as received: head, then the body as framed on the wire.
    pub seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// Answers request n with `answers[n]` (the last one once they run out).
    pub async fn start(answers: Vec<&'static str>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, answers) = (Arc::clone(&log), answers.clone());
                tokio::spawn(serve(stream, log, answers));
            }
        });
        RawUpstream { addr, seen, task }
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(stream: TcpStream, log: Arc<Mutex<Vec<String>>>, answers: Vec<&'static str>) {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader).await {
        let n = {
            let mut log = log.lock().unwrap();
            log.push(request);
            log.len() - 1
        };
        let answer = answers[n.min(answers.len() - 1)];
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_line(reader: &mut BufReader<TcpStream>, out: &mut String) -> Option<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    out.push_str(&line);
    Some(line)
}

/// One request, head and body as sent (chunk sizes and trailers included).
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut raw = String::new();
    let (mut chunked, mut length) = (false, 0usize);
    loop {
        let line = read_line(reader, &mut raw).await?;
        let lower = line.to_ascii_lowercase();
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if line.trim().is_empty() {
            break;
        }
    }
    if !chunked {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.ok()?;
        raw.push_str(&String::from_utf8_lossy(&body));
        return Some(raw);
    }
    loop {
        let size = read_line(reader, &mut raw).await?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            break;
        }
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).await.ok()?;
        raw.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Trailer lines until the empty one.
    while !read_line(reader, &mut raw).await?.trim().is_empty() {}
    Some(raw)
}
