//! Helpers for the connection-handling tests: raw HTTP/1 on one connection, a bare HTTP/2
//! connection whose end can be awaited, and a process's CPU time.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::within;

/// One client connection spoken to by hand.
pub struct RawConn {
    reader: BufReader<TcpStream>,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    /// Wraps a stream connected by the caller.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        within(self.reader.get_mut().write_all(bytes))
            .await
            .expect("write");
    }

    /// Ends the writing side (the client sends FIN) and keeps reading.
    pub async fn end_writing(&mut self) {
        within(self.reader.get_mut().shutdown())
            .await
            .expect("shutdown");
    }

    /// Reads one response with a `content-length` body: its head (names lowercased) and
    /// body, or `None` if the server closed the connection first.
    pub async fn response(&mut self) -> Option<(String, String)> {
        within(read_response(&mut self.reader)).await
    }

    /// Whether the server closed the connection (EOF or reset) without sending more.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(within(self.reader.read(&mut byte)).await, Ok(0) | Err(_))
    }
}

/// Reads one response with a `content-length` body from a buffered stream (or read half): its head (names
/// lowercased) and body, or `None` if the server closed first. No time limit of its own.
pub async fn read_response<R>(reader: &mut R) -> Option<(String, String)>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.trim_end().is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET in HTTP/1.x with extra header lines (each ending in CRLF).
pub fn get_request(version: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n").into_bytes()
}

/// An HTTP/2 (prior knowledge) connection; the handle ends when the connection does.
pub async fn h2_client(
    addr: SocketAddr,
) -> (h2::client::SendRequest<bytes::Bytes>, JoinHandle<()>) {
    let tcp = within(TcpStream::connect(addr)).await.expect("connect");
    let (send, conn) = within(h2::client::handshake(tcp)).await.expect("h2");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// One GET over an HTTP/2 connection; its status.
pub async fn h2_get(send: &h2::client::SendRequest<bytes::Bytes>, url: &str) -> u16 {
    within(async {
        let mut send = send.clone().ready().await.expect("ready");
        let req = http::Request::get(url).body(()).expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        let resp = resp.await.expect("response");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body");
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        status
    })
    .await
}

/// User plus system CPU time a process has used so far (from `/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}
