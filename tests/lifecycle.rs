//! Shutdown and reload, driven by real signals to the real binary.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::process::{free_port, wait_ready, Process};
use support::*;

struct Running {
    process: Process,
    proxy: String,
    admin: String,
    config: std::path::PathBuf,
}

fn start(backend: &Backend, extra: &str) -> Running {
    let proxy = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "listen: {proxy}\nadmin_listen: {admin}\nupstream:\n  url: {}\n{extra}",
        backend.url()
    );
    let config = temp_file("outrigger.yaml", &yaml);
    let process = Process::spawn(&["--config", config.to_str().unwrap()], &[]);
    Running {
        process,
        proxy,
        admin,
        config,
    }
}

/// Polls `/metrics` until one reload with this result has been counted.
async fn wait_for_reloads(metrics_url: &str, result: &str) {
    within(async {
        loop {
            let text = get(metrics_url).await.2;
            if metric(
                &text,
                "outrigger_config_reloads_total",
                &[("result", result)],
            ) == 1.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn ready_status(admin: &str) -> StatusCode {
    get(&format!("http://{admin}/ready")).await.0
}

#[tokio::test]
async fn sigterm_drains_then_finishes_in_flight_requests_and_exits_0() {
    let backend = Backend::start().await;
    let mut run = start(
        &backend,
        "shutdown:\n  drain_delay: 600ms\n  timeout: 10s\n",
    );
    wait_ready(run.admin.parse().unwrap()).await;

    // A request that will still be running when the listener closes.
    backend.script([Action::Delay(
        Duration::from_millis(1500),
        Box::new(Action::Status(200)),
    )]);
    let slow_url = format!("http://{}/slow", run.proxy);
    let slow = tokio::spawn(async move { get(&slow_url).await });
    eventually(|| backend.count() == 1).await;

    run.process.signal(libc::SIGTERM);
    // Readiness drops at once...
    within(async {
        while ready_status(&run.admin).await != StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // ...but traffic is still served during the drain delay.
    let (status, _, _) = get(&format!("http://{}/during-drain", run.proxy)).await;
    assert_eq!(status, StatusCode::OK);

    // After the drain delay the listener closes: new connections are refused.
    within(async {
        while tokio::net::TcpStream::connect(&run.proxy).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        !run.process.exited(),
        "still waiting for the in-flight request"
    );

    let (status, _, body) = within(slow).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "ok"),
        "in-flight request completed"
    );
    assert!(run.process.wait().await.success());
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_wait_for_in_flight_requests() {
    let backend = Backend::start().await;
    backend.set_default(Action::Hang);
    let mut run = start(&backend, "shutdown:\n  timeout: 300ms\ndefaults:\n  timeout: 60s\n  retry: { attempts: 1, per_try_timeout: 60s }\n");
    wait_ready(run.admin.parse().unwrap()).await;
    let url = format!("http://{}/hang", run.proxy);
    let _hanging = tokio::spawn(async move {
        let req = http::Request::get(url)
            .body(http_body_util::Full::default())
            .unwrap();
        let _ = client().request(req).await;
    });
    eventually(|| backend.count() == 1).await;
    let started = std::time::Instant::now();
    run.process.signal(libc::SIGTERM);
    assert!(run.process.wait().await.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_errors() {
    let first = Backend::start().await;
    let second = Backend::start().await;
    let mut run = start(&first, "");
    wait_ready(run.admin.parse().unwrap()).await;
    let url = format!("http://{}/r", run.proxy);
    // One client with a keep-alive connection across the reload.
    let c = client();
    let fetch = |c: &hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>>| {
        let req = http::Request::get(url.clone())
            .body(http_body_util::Full::default())
            .unwrap();
        let fut = c.request(req);
        async move { within(fut).await.expect("request").status() }
    };
    assert_eq!(fetch(&c).await, StatusCode::OK);

    // Valid: point at the second backend.
    let yaml = format!(
        "listen: {}\nadmin_listen: {}\nupstream:\n  url: {}\n",
        run.proxy,
        run.admin,
        second.url()
    );
    std::fs::write(&run.config, yaml).unwrap();
    run.process.signal(libc::SIGHUP);
    let metrics_url = format!("http://{}/metrics", run.admin);
    wait_for_reloads(&metrics_url, "success").await;
    assert_eq!(
        fetch(&c).await,
        StatusCode::OK,
        "the kept-alive connection still works"
    );
    assert_eq!(second.count(), 1, "new requests use the new config");
    assert_eq!(first.count(), 1);

    // Invalid: logged, counted, old config stays.
    std::fs::write(
        &run.config,
        "upstream:\n  url: http://127.0.0.1:3000\nretyr: 3\n",
    )
    .unwrap();
    run.process.signal(libc::SIGHUP);
    wait_for_reloads(&metrics_url, "failure").await;
    assert_eq!(fetch(&c).await, StatusCode::OK);
    assert_eq!(second.count(), 2, "still the second backend");
    assert_eq!(ready_status(&run.admin).await, StatusCode::OK);
    run.process.signal(libc::SIGTERM);
    assert!(run.process.wait().await.success());
}

#[tokio::test]
async fn reloads_under_steady_load_fail_no_request() {
    let backend = Backend::start().await;
    let mut run = start(&backend, "");
    wait_ready(run.admin.parse().unwrap()).await;
    let base = format!(
        "listen: {}\nadmin_listen: {}\nupstream:\n  url: {}\n",
        run.proxy,
        run.admin,
        backend.url()
    );
    let variants = [
        format!("{base}defaults:\n  retry: {{ attempts: 2 }}\n"),
        "upstream: [not valid\n".to_owned(),
        format!("{base}routes:\n  - name: r\n    match: {{ path_prefix: /load }}\n"),
        format!("{base}retyr: 1\n"),
        base.clone(),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (
            format!("http://{}/load", run.proxy),
            std::sync::Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::default())
                    .unwrap();
                match tokio::time::timeout(LIMIT, c.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let metrics_url = format!("http://{}/metrics", run.admin);
    for (i, yaml) in variants.iter().enumerate() {
        std::fs::write(&run.config, yaml).unwrap();
        run.process.signal(libc::SIGHUP);
        // Wait until this reload has been counted before the next one.
        within(async {
            loop {
                let text = get(&metrics_url).await.2;
                if metric(&text, "outrigger_config_reloads_total", &[]) as usize == i + 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        // Let traffic flow under this config before the next reload.
        let seen = backend.count();
        eventually(|| backend.count() >= seen + 50).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = within(c).await.unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "load kept flowing: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 5 reloads",
        ok + failed
    );
    let text = get(&metrics_url).await.2;
    assert_eq!(
        metric(
            &text,
            "outrigger_config_reloads_total",
            &[("result", "failure")]
        ),
        2.0
    );
    run.process.signal(libc::SIGTERM);
    assert!(run.process.wait().await.success());
}

#[tokio::test]
async fn sigterm_under_steady_load_loses_no_accepted_request() {
    let backend = Backend::start().await;
    backend.set_default(Action::Delay(
        Duration::from_millis(20),
        Box::new(Action::Status(200)),
    ));
    let mut run = start(
        &backend,
        "shutdown:\n  drain_delay: 300ms\n  timeout: 10s\n",
    );
    wait_ready(run.admin.parse().unwrap()).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let url = format!("http://{}/steady", run.proxy);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut broken) = (0u32, 0u32, 0u32);
            // Each request on a new connection, as a load balancer's health-checked pool
            // would send them, until the listener is gone.
            loop {
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::default())
                    .unwrap();
                let fresh: hyper_util::client::legacy::Client<
                    _,
                    http_body_util::Full<bytes::Bytes>,
                > = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .pool_max_idle_per_host(0)
                .build_http();
                match tokio::time::timeout(LIMIT, fresh.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == StatusCode::OK => ok += 1,
                    Ok(Err(e)) if e.is_connect() => {
                        refused += 1;
                        break;
                    }
                    _ => broken += 1,
                }
            }
            (ok, refused, broken)
        }));
    }
    eventually(|| backend.count() >= 100).await;
    run.process.signal(libc::SIGTERM);
    let (mut ok, mut broken) = (0, 0);
    for c in clients {
        let (o, _refused, b) = within(c).await.unwrap();
        ok += o;
        broken += b;
    }
    assert!(run.process.wait().await.success());
    // A connection the kernel takes in at the very moment the listener closes is reset
    // before outrigger ever reads it: such requests never reached the backend. Every
    // request that did reach it was answered.
    assert_eq!(
        ok as usize,
        backend.count(),
        "every request that reached the backend was answered"
    );
    assert!(
        broken <= 8,
        "{broken} requests failed, more than one per client at the close"
    );
}
