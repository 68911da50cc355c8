//! Configuration that cannot half-work (issue 20, items 10-19), through the real binary:
//! every mistake is refused with exit 1 (the file) or 2 (a flag or variable), naming where
//! it came from, before any port is bound; reloads and early signals cannot stall or kill it.

mod support;

use std::time::{Duration, Instant};

use support::process::{free_port, run, wait_ready, Process};
use support::*;

const UP: &str = "upstream:\n  url: http://127.0.0.1:3000\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check_file(yaml: &str) -> (Option<i32>, String, String) {
    let path = temp_file("c.yaml", yaml);
    let out = run(&["check", "--config", path.to_str().unwrap()], &[]);
    (out.status.code(), stderr(&out), path.display().to_string())
}

#[test]
fn a_mistyped_log_level_exits_2_listing_the_levels() {
    for level in ["warning", "verbose", "err", "outrigger"] {
        let out = run(
            &["--log-level", level, "--upstream", "http://127.0.0.1:1"],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{level}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("--log-level: `{level}` is not a log level")),
            "{err}"
        );
        assert!(err.contains("error, warn, info, debug, trace"), "{err}");
    }
    let out = run(
        &["--upstream", "http://127.0.0.1:1"],
        &[("OUTRIGGER_LOG_LEVEL", "verbose")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("OUTRIGGER_LOG_LEVEL: `verbose`"),
        "{}",
        stderr(&out)
    );
    // Filters still work, and `check` refuses a bad level too.
    let ok = run(
        &[
            "check",
            "--log-level",
            "info,access=off",
            "--upstream",
            "http://h:1",
        ],
        &[],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = run(
        &[
            "check",
            "--log-level",
            "warning",
            "--upstream",
            "http://h:1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn upstream_userinfo_is_refused_and_never_echoed() {
    let (code, err, path) = check_file("upstream:\n  url: http://user:s3cret@127.0.0.1:3000\n");
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!(
            "{path}: upstream.url: `http://***@127.0.0.1:3000` has user information"
        )),
        "{err}"
    );
    assert!(!err.contains("s3cret") && !err.contains("user:s"), "{err}");
    let out = run(&["check", "--upstream", "http://user:s3cret@h:1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
}

#[test]
fn impossible_upstream_ports_are_refused() {
    for port in ["0", "99999", ""] {
        let (code, err, _) =
            check_file(&format!("upstream:\n  url: \"http://127.0.0.1:{port}\"\n"));
        assert_eq!(code, Some(1), "port {port:?}: {err}");
        assert!(
            err.contains(&format!("has port `{port}`; a port is 1 to 65535")),
            "{err}"
        );
    }
    let (code, err, _) = check_file("upstream:\n  url: http://[::1]:8080\n");
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let path = temp_file("o.yaml", UP);
    let p = path.to_str().unwrap();
    let envs = [
        ("OUTRIGGER_UPSTREAM", ""),
        ("OUTRIGGER_LISTEN", ""),
        ("OUTRIGGER_ADMIN_LISTEN", ""),
        ("OUTRIGGER_LOG_LEVEL", ""),
        ("OUTRIGGER_LOG_FORMAT", ""),
    ];
    let out = run(&["check", "--config", p], &envs);
    assert!(out.status.success(), "{}", stderr(&out));
    // An empty OUTRIGGER_CONFIG is no file at all, not a flag the user never passed.
    let out = run(
        &["check", "--upstream", "http://h:1"],
        &[("OUTRIGGER_CONFIG", "")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A bad value from the environment is blamed on the variable, not on the file.
    let out = run(
        &["check", "--config", p],
        &[("OUTRIGGER_UPSTREAM", "ftp://x")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: OUTRIGGER_UPSTREAM: `ftp://x` must start with http://"),
        "{err}"
    );
    assert!(!err.contains(p), "{err}");
}

#[test]
fn threads_are_bounded_with_a_clear_error() {
    let started = Instant::now();
    let out = run(
        &["--threads", "100000", "--upstream", "http://127.0.0.1:1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("to 1024"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, err, path) = check_file(&format!("{UP}worker_threads: 5000\n"));
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("{path}: worker_threads: 5000 is over 1024")),
        "{err}"
    );
}

#[test]
fn flags_work_after_check_as_before_it() {
    let out = run(&["check", "--upstream", "http://127.0.0.1:3000"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &[
            "check",
            "--threads",
            "2",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "http://h:1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_duplicate_top_level_key_is_reported_at_its_own_line() {
    let (code, err, path) = check_file(&format!(
        "{UP}listen: 127.0.0.1:1\n\nupstream:\n  url: http://x:1\n"
    ));
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("{path}:5:1: upstream: `upstream` is given twice")),
        "{err}"
    );
    let (code, err, path) =
        check_file("upstream:\n  url: http://x:1\n  http2: true\n  url: http://y:1\n");
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("{path}:4:3: upstream.url: `url` is given twice")),
        "{err}"
    );
}

#[test]
fn merge_keys_negative_durations_and_sizes_say_what_is_wrong() {
    let yaml = format!("{UP}defaults: &d\n  timeout: 1s\nroutes:\n  - name: a\n    <<: *d\n");
    let (code, err, path) = check_file(&yaml);
    assert_eq!(code, Some(1));
    assert!(err.starts_with(&format!("{path}:7:5:")), "{err}");
    assert!(err.contains("merge keys (`<<`) are not supported"), "{err}");
    let (_, err, _) = check_file(&format!("{UP}defaults:\n  timeout: -1s\n"));
    assert!(
        err.contains(":4:3: defaults.timeout: `-1s` is negative"),
        "{err}"
    );
    let (_, err, _) = check_file(&format!("{UP}limits:\n  request_body_buffer: -1\n"));
    assert!(
        err.contains(":4:3: limits.request_body_buffer: `-1` is negative"),
        "{err}"
    );
    let (_, err, _) = check_file(&format!("{UP}defaults:\n  timeout: -1\n"));
    assert!(err.contains("defaults.timeout: `-1` is negative"), "{err}");
}

#[test]
fn pathological_nesting_and_size_fail_fast() {
    let deep = format!(
        "{UP}routes: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let started = Instant::now();
    let (code, err, path) = check_file(&deep);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("{path}:3:1: nesting is deeper than 64")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let huge = format!("{UP}# {}\n", "x".repeat(9 << 20));
    let (code, err, _) = check_file(&huge);
    assert_eq!(code, Some(1));
    assert!(err.contains("over 8388608 bytes"), "{err}");
}

#[tokio::test]
async fn a_sighup_right_after_start_does_not_kill_the_process() {
    // Thousands of routes make start-up take a while before any listener exists; the
    // hangup lands in that window.
    let admin = free_port();
    let mut yaml = format!(
        "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{admin}\n{UP}routes:\n",
        free_port()
    );
    for i in 0..3000 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: /p{i} }}\n"
        ));
    }
    let path = temp_file("o.yaml", &yaml);
    let mut p = Process::spawn(&["--config", path.to_str().unwrap()], &[]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    p.signal(libc::SIGHUP);
    wait_ready(format!("127.0.0.1:{admin}").parse().unwrap()).await;
    assert!(!p.exited());
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());
}

#[tokio::test]
async fn a_reload_of_a_big_file_does_not_stall_the_one_worker() {
    // Start small (so /metrics and /health stay cheap), then reload a file with 10k routes
    // whose first route answers 418 by itself: the proxy port shows when the reload is in.
    let (listen, admin) = (free_port(), free_port());
    let head = format!("listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\n{UP}");
    let path = temp_file("o.yaml", &head);
    let mut yaml = format!("{head}routes:\n  - name: first\n    match: {{ path: /first }}\n    fault: {{ abort: {{ percent: 100, status: 418 }} }}\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match:\n      path_prefix: /p{i}\n      methods: [GET]\n"
        ));
    }
    let mut p = Process::spawn(&["--threads", "1", "--config", path.to_str().unwrap()], &[]);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_ready(admin).await;
    std::fs::write(&path, yaml).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    // Probes /live every 10 ms for the whole reload; returns the slowest answer.
    let prober = tokio::spawn(async move {
        let (mut worst, mut probes) = (Duration::ZERO, 0u32);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let (status, _, _) = get(&format!("http://{admin}/live")).await;
            assert_eq!(status, 200);
            worst = worst.max(t.elapsed());
            probes += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (worst, probes)
    });
    let started = Instant::now();
    p.signal(libc::SIGHUP);
    within(async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (status, _, _) = get(&format!("http://127.0.0.1:{listen}/first")).await;
            if status == 418 {
                break;
            }
        }
    })
    .await;
    let reload = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, probes) = within(prober).await.unwrap();
    eprintln!("reload took {reload:?}; {probes} /live probes, the slowest {worst:?}");
    assert!(
        reload > Duration::from_millis(500),
        "the file is too small to show a stall"
    );
    assert!(
        worst < reload / 3,
        "/live waited {worst:?} during a {reload:?} reload"
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait().await.success());
}

#[test]
fn a_malformed_otlp_endpoint_is_refused_without_its_userinfo() {
    for endpoint in [
        "ftp://otel:s3cret-pw@collector:4318",
        "http://otel:s3cret-pw@collector:4318/?x=1",
        "otel:s3cret-pw@collector:4318",
        "http://otel:s3cret-pw@",
    ] {
        let yaml = format!("{UP}tracing:\n  otlp_endpoint: \"{endpoint}\"\n");
        let (code, err, path) = check_file(&yaml);
        assert_eq!(code, Some(1), "{endpoint}: {err}");
        assert!(
            err.contains(&path) && err.contains("tracing.otlp_endpoint"),
            "{endpoint}: {err}"
        );
        assert!(err.contains("not an OTLP/HTTP endpoint"), "{err}");
        assert!(!err.contains("s3cret-pw"), "userinfo shown: {err}");
        assert!(
            err.contains("***@"),
            "where the userinfo was is shown: {err}"
        );
    }
    // The same from OTEL_EXPORTER_OTLP_ENDPOINT.
    let path = temp_file("c.yaml", &format!("{UP}tracing: {{}}\n"));
    let out = run(
        &["check", "--config", path.to_str().unwrap()],
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://otel:s3cret-pw@collector:4318",
        )],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    assert!(!err.contains("s3cret-pw"), "userinfo shown: {err}");
}
