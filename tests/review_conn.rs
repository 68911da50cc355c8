//! Connection handling found wanting in review: a partial HTTP/2 preface, telling clients
//! to leave during the drain, HTTP/1.0 keep-alive, and hyper's header count cap.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::process::{free_port, wait_ready, Process};
use support::review_conn::{cpu_time, get_request, h2_client, h2_get, RawConn};
use support::*;

/// Long enough that a drain never ends inside a test: the listener keeps accepting.
const LONG_DRAIN: &str = "shutdown:\n  drain_delay: 60s\n  timeout: 1s\n";

#[tokio::test]
async fn partial_http2_prefaces_cost_no_cpu_and_are_cut_at_header_read_timeout() {
    let backend = Backend::start().await;
    let (proxy, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{proxy}\nadmin_listen: 127.0.0.1:{admin}\nupstream:\n  url: {}\n\
         limits:\n  header_read_timeout: 4s\n",
        backend.url()
    );
    let config = temp_file("outrigger.yaml", &yaml);
    let process = Process::spawn(&["--config", config.to_str().unwrap()], &[]);
    let addr = format!("127.0.0.1:{proxy}").parse().unwrap();
    wait_ready(format!("127.0.0.1:{admin}").parse().unwrap()).await;

    let mut stalled = Vec::new();
    for _ in 0..400 {
        let mut conn = RawConn::connect(addr).await;
        conn.send(b"PRI * HTTP/2").await;
        stalled.push(conn);
    }
    let (cpu_before, wall) = (cpu_time(process.pid()), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu, wall) = (cpu_time(process.pid()) - cpu_before, wall.elapsed());
    assert!(
        cpu < wall / 10,
        "{cpu:?} of CPU in {wall:?} for 400 idle partial prefaces"
    );

    // Others are served meanwhile, and the stalled connections are cut in time.
    let (status, _, body) = get(&format!("http://{addr}/other")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    for conn in &mut stalled {
        assert!(conn.closed().await, "a stalled preface is closed");
    }
}

#[tokio::test]
async fn a_partial_http2_preface_then_end_of_stream_is_closed_at_once_and_costs_no_cpu() {
    let backend = Backend::start().await;
    let (proxy, admin) = (free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{proxy}\nadmin_listen: 127.0.0.1:{admin}\nupstream:\n  url: {}\n\
         limits:\n  header_read_timeout: 30s\n",
        backend.url()
    );
    let config = temp_file("outrigger.yaml", &yaml);
    let process = Process::spawn(&["--config", config.to_str().unwrap()], &[]);
    let addr = format!("127.0.0.1:{proxy}").parse().unwrap();
    wait_ready(format!("127.0.0.1:{admin}").parse().unwrap()).await;

    // Part of the preface, then FIN: the rest can never come.
    let mut half = RawConn::connect(addr).await;
    half.send(b"PRI * HTTP/2.0\r\n\r\n").await;
    half.end_writing().await;
    assert!(
        half.closed().await,
        "closed well before header_read_timeout"
    );

    let (cpu_before, wall) = (cpu_time(process.pid()), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, wall) = (cpu_time(process.pid()) - cpu_before, wall.elapsed());
    assert!(
        cpu < wall / 10,
        "{cpu:?} of CPU in {wall:?} after the client left"
    );
    let (status, _, body) = get(&format!("http://{addr}/other")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test]
async fn during_the_drain_http1_answers_say_close_and_clients_reconnect() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, LONG_DRAIN).await;

    // An idle keep-alive connection, and one whose request is in flight at the drain.
    let mut idle = RawConn::connect(sidecar.addr).await;
    idle.send(&get_request("1.1", "/idle", "")).await;
    let (head, _) = idle.response().await.expect("answered");
    assert!(!head.contains("connection: close"), "{head}");
    backend.script([Action::Delay(
        Duration::from_secs(1),
        Box::new(Action::Status(200)),
    )]);
    let mut busy = RawConn::connect(sidecar.addr).await;
    busy.send(&get_request("1.1", "/busy", "")).await;
    eventually(|| backend.count() == 2).await;

    sidecar.app.lifecycle.begin_shutdown();
    let (head, body) = busy
        .response()
        .await
        .expect("the in-flight request is answered");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    assert!(head.contains("connection: close"), "{head}");
    assert!(busy.closed().await, "closed after the answer");
    assert!(
        idle.closed().await,
        "idle keep-alive connections are closed"
    );

    // The listener still accepts during the drain: a new connection is answered once,
    // told to leave, and a pooled client's next request works on a fresh connection.
    let mut fresh = RawConn::connect(sidecar.addr).await;
    fresh.send(&get_request("1.1", "/fresh", "")).await;
    let (head, _) = fresh.response().await.expect("answered during the drain");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(fresh.closed().await);
    let pooled = client();
    for _ in 0..2 {
        let req = get_with(&sidecar.url("/pooled"), &[]);
        let resp = within(pooled.request(req)).await.expect("pooled request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["connection"], "close");
    }
}

#[tokio::test]
async fn during_the_drain_http2_clients_get_goaway_and_reconnect() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, LONG_DRAIN).await;
    let url = sidecar.url("/h2");

    let (send, conn) = h2_client(sidecar.addr).await;
    assert_eq!(h2_get(&send, &url).await, 200);
    sidecar.app.lifecycle.begin_shutdown();
    // GOAWAY, then the server closes the connection, with no request in flight.
    within(conn).await.expect("connection task");

    // A new connection during the drain is served, then told to leave too.
    let (send, conn) = h2_client(sidecar.addr).await;
    assert_eq!(h2_get(&send, &url).await, 200);
    within(conn).await.expect("connection task");
}

#[tokio::test]
async fn http10_keep_alive_keeps_the_connection() {
    let backend = Backend::start().await;
    let sidecar = Sidecar::in_front_of(&backend, "").await;

    let mut conn = RawConn::connect(sidecar.addr).await;
    for path in ["/first", "/second"] {
        conn.send(&get_request("1.0", path, "Connection: keep-alive\r\n"))
            .await;
        let (head, body) = conn
            .response()
            .await
            .expect("answered on the same connection");
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert_eq!(body, "ok");
    }

    // Without asking, HTTP/1.0 still closes after one answer.
    let mut once = RawConn::connect(sidecar.addr).await;
    once.send(&get_request("1.0", "/once", "")).await;
    let (head, _) = once.response().await.expect("answered");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(once.closed().await);
    assert_eq!(backend.count(), 3);
}

#[tokio::test]
async fn header_counts_follow_the_byte_limit_both_ways() {
    let backend = Backend::start().await;
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-r-{i}"), i.to_string()))
        .collect();
    backend.on_path(
        "/many-back",
        Action::Respond {
            status: 200,
            headers: many,
            body: b"ok".to_vec(),
        },
    );
    let sidecar = Sidecar::in_front_of(&backend, "").await;

    // 150 small request headers: far under 64 KiB, so they pass over HTTP/1.1 too.
    let names: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-h-{i}"), i.to_string()))
        .collect();
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (status, _, _) = send(get_with(&sidecar.url("/many"), &pairs)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.received()[0].header("x-h-149"), Some("149"));

    // An upstream answer with 150 headers reaches the client whole.
    // (Read by hand: a hyper client would stop at 100 headers itself.)
    let mut conn = RawConn::connect(sidecar.addr).await;
    conn.send(&get_request("1.1", "/many-back", "")).await;
    let (head, body) = conn.response().await.expect("answered");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nx-r-149: 149\r\n"), "{head}");
    assert_eq!(body, "ok");

    // The count is bounded by the byte limit: 8 KiB admits 256 fields.
    let small = Sidecar::in_front_of(&backend, "limits:\n  max_request_header_bytes: 8KiB\n").await;
    let fields: String = (0..300).map(|i| format!("h{i}:\r\n")).collect();
    let mut conn = RawConn::connect(small.addr).await;
    conn.send(&get_request("1.1", "/too-many", &fields)).await;
    let (head, _) = conn.response().await.expect("answered");
    assert!(head.starts_with("http/1.1 431"), "{head}");
}
