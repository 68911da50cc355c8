//! Upgraded connections (WebSocket): the handshake goes through the rate limit and the
//! breaker like any request; tunnels are capped, closed when idle, kept alive at the TCP
//! level on both sides, and counted in `outrigger_tunnels_open` (SPEC §7.8).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use support::servers;
use support::*;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn upgrade_foo(sidecar: &Sidecar) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    get_with(
        &sidecar.url("/ws"),
        &[("connection", "upgrade"), ("upgrade", "foo")],
    )
}

async fn websocket(addr: SocketAddr) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    within(tokio_tungstenite::connect_async(format!(
        "ws://{addr}/chat"
    )))
    .await
    .map(|(ws, _)| ws)
}

async fn round_trip(ws: &mut Ws, text: &str) {
    within(ws.send(Message::text(text))).await.unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap(), text);
}

async fn tunnels_gauge(sidecar: &Sidecar) -> f64 {
    metric(&sidecar.metrics().await, "outrigger_tunnels_open", &[])
}

#[tokio::test]
async fn upgrade_requests_take_rate_limit_tokens() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(
        &backend,
        "defaults:\n  rate_limit: { rate: 1/m, burst: 1 }\n",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(upgrade_foo(&sidecar)).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429]);
    assert_eq!(backend.count(), 1, "only the first reached the upstream");
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "outrigger_rate_limited_total", &[("route", "default")]),
        5.0
    );
}

#[tokio::test]
async fn upgrade_failures_open_the_breaker_and_an_open_breaker_refuses_upgrades() {
    let backend = Backend::start().await;
    backend.set_default(Action::Status(503));
    let yaml = "defaults:\n  retry: { attempts: 1 }\n  circuit_breaker: { min_requests: 3, failure_ratio: 0.5, open_duration: 1m }\n";
    let sidecar = Sidecar::in_front_of(&backend, yaml).await;
    for _ in 0..3 {
        assert_eq!(
            send(upgrade_foo(&sidecar)).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(backend.count(), 3);
    let (status, headers, body) = send(upgrade_foo(&sidecar)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("circuit-open"), "{body}");
    assert_eq!(headers["x-outrigger-attempts"], "0");
    assert_eq!(
        backend.count(),
        3,
        "an open breaker keeps upgrades from the upstream"
    );
}

#[tokio::test]
async fn switching_protocols_is_a_success_for_the_breaker() {
    // Nothing listens on the upstream's port at first: connect failures open the breaker.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "upstream:\n  url: http://127.0.0.1:{port}\ndefaults:\n  retry: {{ attempts: 1 }}\n  circuit_breaker: {{ min_requests: 2, failure_ratio: 0.5, open_duration: 300ms, half_open_requests: 1 }}\n"
    );
    let sidecar = Sidecar::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(send(upgrade_foo(&sidecar)).await.0, StatusCode::BAD_GATEWAY);
    }
    let state = || async {
        metric(
            &sidecar.metrics().await,
            "outrigger_circuit_state",
            &[("route", "default")],
        )
    };
    assert_eq!(state().await, 2.0, "open after two connect failures");
    let _echo = servers::websocket_echo_on(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The half-open probe is a WebSocket handshake: its 101 closes the breaker.
    let mut ws = websocket(sidecar.addr)
        .await
        .expect("the probe is let through");
    round_trip(&mut ws, "hi").await;
    assert_eq!(state().await, 0.0, "closed by the 101");
}

#[tokio::test]
async fn the_tunnel_cap_answers_overloaded_and_the_gauge_counts_tunnels() {
    let echo = servers::websocket_echo().await;
    let yaml = format!(
        "upstream:\n  url: http://{}\nlimits:\n  max_tunnels: 2\n",
        echo.addr
    );
    let sidecar = Sidecar::start(&yaml).await;
    let mut first = websocket(sidecar.addr).await.expect("first");
    let second = websocket(sidecar.addr).await.expect("second");
    assert_eq!(tunnels_gauge(&sidecar).await, 2.0);

    let refused = websocket(sidecar.addr).await.expect_err("over the cap");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = refused else {
        panic!("expected an HTTP answer, got {refused:?}");
    };
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("overloaded"), "{body}");
    assert_eq!(tunnels_gauge(&sidecar).await, 2.0);
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    round_trip(&mut first, "still served").await;

    drop(first);
    drop(second);
    eventually(|| sidecar.app.proxy.tunnels.open() == 0).await;
    assert_eq!(tunnels_gauge(&sidecar).await, 0.0);
    let mut again = websocket(sidecar.addr).await.expect("a slot is free again");
    round_trip(&mut again, "back").await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    let echo = servers::websocket_echo().await;
    let yaml = format!(
        "upstream:\n  url: http://{}\nlimits:\n  tunnel_idle_timeout: 400ms\n",
        echo.addr
    );
    let sidecar = Sidecar::start(&yaml).await;
    let mut busy = websocket(sidecar.addr).await.unwrap();
    let mut idle = websocket(sidecar.addr).await.unwrap();
    round_trip(&mut idle, "once").await;
    // Busy for three timeouts, one message every 150 ms.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        round_trip(&mut busy, &format!("message {i}")).await;
    }
    let next = within(idle.next()).await;
    assert!(
        !matches!(next, Some(Ok(ref m)) if m.is_text()),
        "the idle tunnel was closed: {next:?}"
    );
    assert_eq!(
        tunnels_gauge(&sidecar).await,
        1.0,
        "the busy one is still open"
    );
    round_trip(&mut busy, "still here").await;
    drop(busy);
    eventually(|| sidecar.app.proxy.tunnels.open() == 0).await;
    assert_eq!(tunnels_gauge(&sidecar).await, 0.0);
}

/// TCP keepalive (its idle time, `None` when off) of each socket of this process whose
/// (local, peer) ends pass `wanted`. The sidecar runs in this process, so its sockets are
/// ours to inspect.
fn keepalive_of(wanted: impl Fn(SocketAddr, SocketAddr) -> bool) -> Vec<Option<Duration>> {
    use std::os::fd::BorrowedFd;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: only read while borrowed; a descriptor closed meanwhile just errs.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let ends = (socket.local_addr(), socket.peer_addr());
        let (Ok(local), Ok(peer)) = ends else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        if wanted(local, peer) {
            let on = socket.keepalive().unwrap_or(false);
            found.push(on.then(|| socket.tcp_keepalive_time().unwrap()));
        }
    }
    found
}

#[tokio::test]
async fn both_sides_of_a_tunnel_keep_tcp_keepalive() {
    let echo = servers::websocket_echo().await;
    let sidecar = Sidecar::start(&format!("upstream:\n  url: http://{}\n", echo.addr)).await;
    // Connections the kernel completed before the listener was set up do not inherit it.
    eventually(|| sidecar.app.lifecycle.is_ready()).await;
    let mut ws = websocket(sidecar.addr).await.unwrap();
    round_trip(&mut ws, "hi").await;
    let on = Some(Duration::from_secs(60));
    // The proxy's end of the client's connection...
    assert_eq!(
        keepalive_of(|local, _| local == sidecar.addr),
        [on],
        "client side"
    );
    // ...and of its connection to the upstream (the echo server's own end has it as local).
    assert_eq!(
        keepalive_of(|_, peer| peer == echo.addr),
        [on],
        "upstream side"
    );
}

#[tokio::test]
async fn ready_turns_503_before_the_descriptors_run_out_and_back_once_tunnels_close() {
    use support::process::{free_port, wait_ready, Process};
    let echo = servers::websocket_echo().await;
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "listen: {proxy}\nadmin_listen: {admin}\nupstream:\n  url: http://{}\n",
        echo.addr
    );
    let config = temp_file("outrigger.yaml", &yaml);
    let process = Process::spawn(&["--config", config.to_str().unwrap()], &[]);
    // A soft limit of 160 descriptors: /ready must turn 503 with 64 still free.
    let pid = process.pid().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=160:"])
        .status()
        .expect("prlimit runs");
    assert!(limited.success());
    wait_ready(admin).await;

    let ready = || async { get(&format!("http://{admin}/ready")).await };
    let mut tunnels = Vec::new();
    while ready().await.0 == StatusCode::OK {
        assert!(
            tunnels.len() < 80,
            "still ready with {} tunnels",
            tunnels.len()
        );
        tunnels.push(websocket(proxy).await.expect("a tunnel while ready"));
    }
    let (_, _, body) = ready().await;
    assert!(body.contains("out of file descriptors"), "{body}");
    let (status, _, health) = get(&format!("http://{admin}/health")).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert!(health.contains(r#""status":"degraded""#), "{health}");
    assert!(health.contains(r#""descriptors":"scarce""#), "{health}");
    // Turned away before the limit: the proxy still accepts and serves meanwhile.
    let mut more = websocket(proxy).await.expect("served although not ready");
    round_trip(&mut more, "still accepted").await;
    assert!(tunnels.len() > 20, "{} tunnels", tunnels.len());

    drop(more);
    tunnels.clear();
    within(async {
        while ready().await.0 != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(process);
}

/// Resident memory and open descriptors of a process, from /proc.
fn rss_kib_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// A measurement, not a check: the memory of 1,000 idle WebSocket tunnels in the binary
/// named by `OUTRIGGER_BIN` (build it with `cargo build --release` and run
/// `OUTRIGGER_BIN=target/release/outrigger cargo test --test tunnels -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "a measurement: prints the RSS of 1,000 idle tunnels in the release binary"]
async fn memory_of_a_thousand_idle_tunnels() {
    use support::process::{free_port, wait_ready, Process};
    const TUNNELS: usize = 1000;
    let binary = std::env::var("OUTRIGGER_BIN").unwrap_or(env!("CARGO_BIN_EXE_outrigger").into());
    let echo = servers::websocket_echo().await;
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "listen: {proxy}\nadmin_listen: {admin}\nupstream:\n  url: http://{}\n",
        echo.addr
    );
    let config = temp_file("outrigger.yaml", &yaml);
    let process = Process::spawn_binary(&binary, &["--config", config.to_str().unwrap()], &[]);
    wait_ready(admin).await;
    // One tunnel first, so that what is allocated once is not counted per tunnel.
    let mut tunnels = vec![websocket(proxy).await.unwrap()];
    round_trip(&mut tunnels[0], "warm").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_before, fds_before) = rss_kib_and_fds(process.pid());
    while tunnels.len() < TUNNELS + 1 {
        let mut ws = websocket(proxy).await.unwrap();
        round_trip(&mut ws, "hello").await;
        tunnels.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after, fds_after) = rss_kib_and_fds(process.pid());
    let gauge = metric(
        &get(&format!("http://{admin}/metrics")).await.2,
        "outrigger_tunnels_open",
        &[],
    );
    assert_eq!(gauge, (TUNNELS + 1) as f64);
    let per = (rss_after - rss_before) as f64 / TUNNELS as f64;
    println!(
        "{binary}: {TUNNELS} idle tunnels: RSS {rss_before} KiB -> {rss_after} KiB \
         ({per:.1} KiB per tunnel), descriptors {fds_before} -> {fds_after}"
    );
    drop(tunnels);
    drop(process);
}

#[test]
fn tunnel_limits_have_defaults_and_bad_values_name_their_field() {
    use outrigger::config::{self, Overrides};
    let load = |yaml: &str| {
        let path = temp_file(
            "outrigger.yaml",
            &format!("upstream:\n  url: http://127.0.0.1:1\n{yaml}"),
        );
        config::load(Some(&path), &Overrides::default())
    };
    let limits = load("").expect("defaults").limits;
    assert_eq!(limits.max_tunnels, 1024);
    assert_eq!(limits.tunnel_idle_timeout, Duration::from_secs(3600));
    for (yaml, field) in [
        ("limits:\n  max_tunnels: 0\n", "limits.max_tunnels"),
        (
            "limits:\n  tunnel_idle_timeout: 0s\n",
            "limits.tunnel_idle_timeout",
        ),
    ] {
        let error = load(yaml).expect_err(yaml).to_string();
        assert!(error.contains(field), "{yaml}: {error}");
    }
}
