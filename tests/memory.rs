//! Memory stays bounded while large bodies stream: a 1 GiB upload and a 1 GiB download pass
//! through the real binary, whose resident memory is read from /proc while they flow.

mod support;

use std::time::Duration;

use support::process::{free_port, wait_ready, Process};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 << 10;

/// A backend that discards request bodies (counting them) and can stream `GIB` bytes back.
async fn sink_and_source() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.starts_with("put") {
                    let mut left = GIB;
                    while left > 0 {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nreceived")
                        .await;
                } else {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {GIB}\r\n\r\n");
                    let _ = s.write_all(head.as_bytes()).await;
                    let data = vec![b'x'; CHUNK];
                    for _ in 0..(GIB / CHUNK as u64) {
                        if s.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test]
async fn a_gibibyte_each_way_streams_in_bounded_memory() {
    let (upstream, _task) = sink_and_source().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut p = Process::spawn(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--log-level",
            "warn",
        ],
        &[("OUTRIGGER_LOG_FORMAT", "text")],
    );
    wait_ready(admin.parse().unwrap()).await;
    let pid = p.pid();
    let peak = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let watcher = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let now = rss_mib(pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Upload: PUT with a 1 GiB Content-Length, written in chunks.
    let mut s = tokio::net::TcpStream::connect(&listen).await.unwrap();
    let head = format!("PUT /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {GIB}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let data = vec![b'u'; CHUNK];
    tokio::time::timeout(Duration::from_secs(240), async {
        for _ in 0..(GIB / CHUNK as u64) {
            s.write_all(&data).await.unwrap();
        }
    })
    .await
    .expect("upload finished");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).contains("received"));

    // Download: 1 GiB read and counted.
    let mut s = tokio::net::TcpStream::connect(&listen).await.unwrap();
    s.write_all(b"GET /download HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    tokio::time::timeout(Duration::from_secs(240), async {
        // Headers plus body; stop once the whole body has arrived.
        while total < GIB {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {total} bytes");
            total += n as u64;
        }
    })
    .await
    .expect("download finished");

    watcher.abort();
    let peak = *peak.lock().unwrap();
    eprintln!("outrigger peak RSS while streaming 1 GiB each way: {peak:.1} MiB");
    assert!(peak > 0.0);
    assert!(
        peak < 64.0,
        "peak RSS {peak:.1} MiB while streaming 1 GiB each way"
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());
}

#[tokio::test]
async fn ten_thousand_idle_keep_alive_connections_stay_under_a_bound() {
    // 10,000 unless this machine's descriptor limit is lower (then as many as it allows).
    let n = 10_000.min(support::raise_descriptor_limit().saturating_sub(1_000) as usize);
    assert!(n >= 1_000, "too few descriptors for this test: {n}");
    let backend = Backend::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut p = Process::spawn(
        &[
            "--upstream",
            &backend.url(),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--log-level",
            "warn",
            "--threads",
            "1",
        ],
        &[],
    );
    wait_ready(admin.parse().unwrap()).await;
    let before = rss_mib(p.pid());
    let mut idle = Vec::with_capacity(n);
    let mut buf = [0u8; 1024];
    for _ in 0..n {
        let mut s = within(tokio::net::TcpStream::connect(&listen))
            .await
            .expect("connect");
        s.write_all(b"GET /idle HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let n = within(s.read(&mut buf)).await.unwrap();
        assert!(n > 0);
        idle.push(s);
    }
    // Idle connections are parked (`server::accept`) once they have had no request for
    // `PARK_AFTER`: give the last ones that long.
    tokio::time::sleep(outrigger::server::accept::PARK_AFTER * 5).await;
    let after = rss_mib(p.pid());
    eprintln!("RSS {before:.1} MiB idle, {after:.1} MiB with {n} idle keep-alive connections");
    // Parked, a connection is its task, its socket's registration and its clock, about
    // 2 KiB (a release build measures 46.6 MiB for 10,000 in all, `bench/compare.sh`);
    // unparked it was about 29 KiB of hyper's buffers and state. The bound, 8 KiB each plus
    // 32 MiB, leaves room for a debug build and fails if parking stops working.
    let bound = 32.0 + n as f64 * 8.0 / 1024.0;
    assert!(
        after < bound,
        "{after:.1} MiB with {n} connections, bound {bound:.0} MiB"
    );
    drop(idle);
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());
}
