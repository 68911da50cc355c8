//! The command line as a user meets it: `check`, config errors, flags over environment over
//! file, zero-config mode. These run the real binary.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::process::{free_port, run, wait_ready, Process};
use support::*;

#[test]
fn check_accepts_the_shipped_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/outrigger.yaml");
    let out = run(&["check", "--config", path], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_reports_file_line_column_field_and_exits_1() {
    let path = temp_file(
        "bad.yaml",
        "upstream:\n  url: http://127.0.0.1:3000\nretyr:\n  attempts: 2\n",
    );
    let out = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:3:1: retyr: unknown field `retyr`", path.display());
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn check_usage_error_exits_2() {
    let out = run(&["check", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let path = temp_file(
        "bad.yaml",
        "upstream:\n  url: http://127.0.0.1:3000\ndefaults:\n  timeout: soon\n",
    );
    let out = run(&["check"], &[("OUTRIGGER_CONFIG", path.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("defaults.timeout: `soon`"));
}

#[test]
fn a_bad_config_exits_1_before_binding_any_port() {
    // Hold the listen port: if outrigger tried to bind before validating, it would
    // report a bind error instead of the config error.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{}\nupstream:\n  url: http://127.0.0.1:3000\n  connect_timeout: 0s\n",
        free_port()
    );
    let path = temp_file("bad.yaml", &yaml);
    let out = run(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.connect_timeout: must be longer than 0s"),
        "{err}"
    );
    assert!(!err.contains("cannot bind"), "{err}");
}

#[test]
fn version_and_help() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = run(&["--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--upstream"));
}

async fn answers(addr: SocketAddr) -> bool {
    let url = format!("http://{addr}/ready");
    let req = http::Request::get(url)
        .body(http_body_util::Full::default())
        .unwrap();
    matches!(tokio::time::timeout(LIMIT, client().request(req)).await, Ok(Ok(r)) if r.status() == 200)
}

#[tokio::test]
async fn flags_beat_environment_beat_file() {
    let backend = Backend::start().await;
    let (file_admin, env_admin, flag_admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{file_admin}\nupstream:\n  url: http://127.0.0.1:1\n",
        free_port()
    );
    let path = temp_file("o.yaml", &yaml);
    let env_admin_s = format!("127.0.0.1:{env_admin}");
    let flag_admin_s = format!("127.0.0.1:{flag_admin}");
    let proxy_port = free_port();
    let listen = format!("127.0.0.1:{proxy_port}");
    let mut p = Process::spawn(
        &[
            "--config",
            path.to_str().unwrap(),
            "--admin-listen",
            &flag_admin_s,
            "--listen",
            &listen,
        ],
        &[
            ("OUTRIGGER_ADMIN_LISTEN", &env_admin_s),
            ("OUTRIGGER_UPSTREAM", &backend.url()),
        ],
    );
    let flag_addr: SocketAddr = flag_admin_s.parse().unwrap();
    wait_ready(flag_addr).await;
    assert!(
        !answers(env_admin_s.parse().unwrap()).await,
        "env lost to the flag"
    );
    assert!(!answers(format!("127.0.0.1:{file_admin}").parse().unwrap()).await);
    // The environment's upstream beat the file's (port 1 would refuse).
    let (status, _, _) = get(&format!("http://{listen}/via-env")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.received()[0].target, "/via-env");
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());
}

#[tokio::test]
async fn zero_config_mode_runs_with_only_an_upstream() {
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
            "--log-format",
            "text",
        ],
        &[],
    );
    wait_ready(admin.parse().unwrap()).await;
    let (status, headers, body) = get(&format!("http://{listen}/hello")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(headers["x-outrigger-attempts"], "1");
    p.signal(libc::SIGINT);
    assert!(p.wait().await.success(), "Ctrl-C exits cleanly");
}

#[tokio::test]
async fn json_logs_have_a_warn_line_per_failed_attempt_and_an_access_line() {
    let backend = Backend::start().await;
    backend.script([Action::Status(503), Action::Status(502)]);
    let (listen, admin) = (free_port(), free_port());
    let config = temp_file(
        "logs.yaml",
        &format!(
            "listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nupstream: {{ url: \"{}\" }}\n\
             defaults:\n  retry: {{ attempts: 3, backoff: {{ base: 5ms, max: 5ms, jitter: none }} }}\n",
            backend.url()
        ),
    );
    let log = config.with_file_name("stdout.log");
    let mut p = Process::spawn_logging(&["--config", config.to_str().unwrap()], &log);
    wait_ready(format!("127.0.0.1:{admin}").parse().unwrap()).await;
    let (status, headers, _) = get(&format!("http://127.0.0.1:{listen}/orders?token=hidden")).await;
    assert_eq!(
        (status, &headers["x-outrigger-attempts"]),
        (StatusCode::OK, &"3".parse().unwrap())
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {e}: {l}"))
        })
        .collect();
    let warns: Vec<&serde_json::Value> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert_eq!(warns.len(), 2, "one per failed attempt: {text}");
    for (w, (attempt, reason)) in warns.iter().zip([(1, "status-503"), (2, "status-502")]) {
        assert_eq!(w["attempt"], attempt, "{w}");
        assert_eq!(w["reason"], reason, "{w}");
        assert_eq!(w["backoff_ms"], 5, "the backoff chosen: {w}");
        assert_eq!(w["route"], "default", "{w}");
        assert!(w["timestamp"].as_str().unwrap().ends_with('Z'), "{w}");
    }
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 1, "{text}");
    assert_eq!(access[0]["path"], "/orders");
    assert_eq!(access[0]["attempts"], 3);
    assert!(
        !text.contains("hidden"),
        "a query's values never reach the log: {text}"
    );
}
