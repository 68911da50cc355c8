//! Validation: every error a user can hit names the file, the position where known, the
//! field path and what is wrong.

use std::path::Path;
use std::time::Duration;

use super::*;

const UP: &str = "upstream:\n  url: http://127.0.0.1:3000\n";

fn load_text(text: &str) -> Result<Config, ConfigError> {
    from_text(
        text,
        Some(Path::new("/etc/outrigger.yaml")),
        &Overrides::default(),
    )
}

fn error(text: &str) -> String {
    load_text(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn the_shipped_example_is_valid_and_warning_free() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outrigger.yaml");
    let config = load(Some(&path), &Overrides::default()).expect("config/outrigger.yaml is valid");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(!config.routes.is_empty(), "the example shows routes");
}

#[test]
fn zero_config_needs_only_an_upstream() {
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:3000".into()),
        ..Overrides::default()
    };
    let config = from_text("", None, &overrides).unwrap();
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9901");
    let p = &config.default_route.policy;
    assert_eq!(p.timeout, Duration::from_secs(10));
    assert_eq!(p.retry.attempts, 3);
    assert_eq!(p.retry.per_try_timeout, Duration::from_secs(3));
    assert_eq!(p.retry.methods.len(), 6);
    assert_eq!(
        p.retry.idempotency_header.as_ref().unwrap(),
        "idempotency-key"
    );
    assert_eq!(config.limits.request_body_buffer, 64 << 10);
    assert_eq!(config.shutdown.timeout, Duration::from_secs(30));
    assert!(p.circuit_breaker.is_some(), "the breaker is on by default");
}

#[test]
fn missing_upstream_is_named() {
    assert_eq!(
        error("listen: 127.0.0.1:8080\n"),
        "/etc/outrigger.yaml: upstream.url: is required (set it in the file, with --upstream or OUTRIGGER_UPSTREAM)"
    );
}

#[test]
fn unknown_keys_are_errors_with_position() {
    let text = format!("{UP}routes:\n  - name: a\n    retyr: {{ attempts: 2 }}\n");
    let e = error(&text);
    assert!(
        e.starts_with("/etc/outrigger.yaml:5:5: routes[0].retyr: unknown field `retyr`"),
        "{e}"
    );
    let e = error(&format!("{UP}limits:\n  max_conections: 3\n"));
    assert!(
        e.starts_with("/etc/outrigger.yaml:4:3: limits.max_conections: unknown field"),
        "{e}"
    );
}

#[test]
fn durations_need_units() {
    let e = error(&format!("{UP}defaults:\n  timeout: 5\n"));
    assert_eq!(
        e,
        "/etc/outrigger.yaml:4:3: defaults.timeout: `5` has no unit (write e.g. `250ms`, `2s`, `5m`)"
    );
}

#[test]
fn sizes_need_known_units() {
    let e = error(&format!("{UP}limits:\n  request_body_buffer: 1TiB\n"));
    assert!(
        e.contains("limits.request_body_buffer: `1TiB` has unknown unit `TiB`"),
        "{e}"
    );
}

#[test]
fn wrong_types_are_named() {
    let e = error(&format!("{UP}  http2: maybe\n"));
    assert!(
        e.contains(":3:10: upstream.http2: invalid type: string \"maybe\", expected a boolean"),
        "{e}"
    );
}

#[test]
fn backoff_max_below_base() {
    let text =
        format!("{UP}routes:\n  - name: a\n    retry:\n      backoff: {{ base: 1s, max: 50ms }}\n");
    assert_eq!(
        error(&text),
        "/etc/outrigger.yaml: routes[0].retry.backoff.max: 50ms is less than base 1s"
    );
}

#[test]
fn attempts_out_of_range() {
    let e = error(&format!("{UP}defaults:\n  retry: {{ attempts: 0 }}\n"));
    assert_eq!(
        e,
        "/etc/outrigger.yaml: defaults.retry.attempts: 0 is outside 1..10"
    );
}

#[test]
fn retry_conditions_are_checked() {
    let e = error(&format!("{UP}defaults:\n  retry: {{ when: [302] }}\n"));
    assert!(
        e.contains("defaults.retry.when[0]: status 302 is not a failure (use 400-599)"),
        "{e}"
    );
    let e = error(&format!("{UP}defaults:\n  retry: {{ when: [soon] }}\n"));
    assert!(e.contains("`soon` is not a known condition"), "{e}");
    let e = error(&format!(
        "{UP}defaults:\n  retry: {{ when: [circuit-open] }}\n"
    ));
    assert!(
        e.contains("defaults.retry.when: CircuitOpen is not a retry condition"),
        "{e}"
    );
}

#[test]
fn route_names_are_required_unique_and_not_default() {
    let e = error(&format!("{UP}routes:\n  - match: {{ path: /a }}\n"));
    assert_eq!(e, "/etc/outrigger.yaml: routes[0].name: is required");
    let e = error(&format!("{UP}routes:\n  - name: a\n  - name: a\n"));
    assert_eq!(
        e,
        "/etc/outrigger.yaml: routes[1].name: `a` is used by an earlier route"
    );
    let e = error(&format!("{UP}routes:\n  - name: default\n"));
    assert!(e.contains("routes[0].name: `default` is reserved"), "{e}");
    let e = error(&format!("{UP}routes:\n  - name: \"has space\"\n"));
    assert!(e.contains("routes[0].name: `has space` must be"), "{e}");
}

#[test]
fn match_paths_are_checked() {
    let e = error(&format!(
        "{UP}routes:\n  - name: a\n    match: {{ path: /a, path_prefix: /b }}\n"
    ));
    assert!(
        e.contains("routes[0].match: give `path` or `path_prefix`, not both"),
        "{e}"
    );
    let e = error(&format!(
        "{UP}routes:\n  - name: a\n    match: {{ path_prefix: api }}\n"
    ));
    assert!(
        e.contains("routes[0].match.path_prefix: `api` must start with /"),
        "{e}"
    );
    let e = error(&format!(
        "{UP}routes:\n  - name: a\n    match: {{ methods: [CONNECT] }}\n"
    ));
    assert!(e.contains("CONNECT is never proxied"), "{e}");
}

#[test]
fn upstream_url_is_checked() {
    let e = error("upstream:\n  url: ftp://files\n");
    assert!(
        e.contains("upstream.url: `ftp://files` must start with http://"),
        "{e}"
    );
    let e = error("upstream:\n  url: not a url\n");
    assert!(e.contains("upstream.url: `not a url` is not a URL"), "{e}");
    assert!(load_text("upstream:\n  url: https://secure:8443\n").is_ok());
    let e = error("upstream:\n  url: http://plain\n  tls: { server_name: x }\n");
    assert!(
        e.contains("upstream.tls: is only used with https:// upstreams"),
        "{e}"
    );
    let e = error("upstream:\n  url: https://s\n  tls: { ca_file: /nonexistent/ca.pem }\n");
    assert!(
        e.contains("upstream.tls.ca_file: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let e = error("upstream:\n  url: https://s\n  tls: { server_name: \"not a name!\" }\n");
    assert!(
        e.contains("upstream.tls.server_name: `not a name!` is not a DNS name"),
        "{e}"
    );
}

#[test]
fn fallback_body_file_is_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("outrigger-unit-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("fallbacks")).unwrap();
    std::fs::write(dir.join("fallbacks/empty.json"), "[]").unwrap();
    let text =
        format!("{UP}defaults:\n  fallback: {{ status: 200, body_file: fallbacks/empty.json }}\n");
    let cfg = from_text(&text, Some(&dir.join("o.yaml")), &Overrides::default()).unwrap();
    assert_eq!(&cfg.default_route.policy.fallback.unwrap().body[..], b"[]");

    let text = format!("{UP}defaults:\n  fallback: {{ body_file: fallbacks/missing.json }}\n");
    let e = from_text(&text, Some(&dir.join("o.yaml")), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("defaults.fallback.body_file: cannot read"),
        "{e}"
    );
    assert!(e.contains("missing.json"), "{e}");
}

#[test]
fn ranges_are_checked() {
    let cases = [
        (
            "defaults:\n  circuit_breaker: { failure_ratio: 1.5 }\n",
            "defaults.circuit_breaker.failure_ratio: 1.5 is outside (0, 1]",
        ),
        (
            "defaults:\n  retry: { budget: { ratio: -1 } }\n",
            "defaults.retry.budget.ratio: -1 is outside 0..1000",
        ),
        (
            "limits:\n  max_concurrent_requests: 0\n",
            "limits.max_concurrent_requests: must be at least 1",
        ),
        (
            "limits:\n  max_request_header_bytes: 1KiB\n",
            "limits.max_request_header_bytes: 1024 bytes is outside 8KiB..16MiB",
        ),
        (
            "defaults:\n  timeout: 0s\n",
            "defaults.timeout: must be longer than 0s",
        ),
        (
            "defaults:\n  fault: { abort: { percent: 120 } }\n",
            "defaults.fault.abort.percent: 120 is outside 0..100",
        ),
        (
            "defaults:\n  rate_limit: { rate: 10/fortnight }\n",
            "`10/fortnight` is not a rate",
        ),
        (
            "defaults:\n  rate_limit: { rate: 1e-20/s }\n",
            "defaults.rate_limit.rate: `1e-20/s` is less than the smallest rate, 1/h",
        ),
        (
            "defaults:\n  rate_limit: { rate: 10/s, key: cookie }\n",
            "defaults.rate_limit.key: `cookie` is not route, client-ip or header:NAME",
        ),
        (
            "defaults:\n  fallback: { status: 99 }\n",
            "defaults.fallback.status: 99 is not a status from 200 to 599",
        ),
        (
            "defaults:\n  stale_if_error: { max_bytes: 1KiB }\n",
            "defaults.stale_if_error.max_bytes: 1024 bytes is less than 1MiB",
        ),
        (
            "upstream:\n  url: http://127.0.0.1:3000\n  health_check: { path: healthz }\n",
            "upstream.health_check.path: `healthz` must start with /",
        ),
    ];
    for (body, expected) in cases {
        let text = if body.starts_with("upstream") {
            body.to_owned()
        } else {
            format!("{UP}{body}")
        };
        let e = error(&text);
        assert!(e.contains(expected), "for {body:?}: got {e}");
    }
}

#[test]
fn rate_limits_go_down_to_one_an_hour() {
    let config = load_text(&format!("{UP}defaults:\n  rate_limit: {{ rate: 1/h }}\n"))
        .expect("1/h is allowed");
    let policy = config.default_route.policy.rate_limit.expect("rate_limit");
    assert!((policy.rate * 3600.0 - 1.0).abs() < 1e-9, "{}", policy.rate);
    let e = error(&format!("{UP}defaults:\n  rate_limit: {{ rate: 0.9/h }}\n"));
    assert!(e.contains("is less than the smallest rate, 1/h"), "{e}");
}

#[test]
fn routes_merge_partial_overrides_over_defaults() {
    let text = format!(
        "{UP}defaults:
  timeout: 8s
  retry: {{ attempts: 2, backoff: {{ base: 50ms, max: 1s }}, budget: {{ ratio: 0.1 }} }}
routes:
  - name: a
    retry: {{ attempts: 4, per_try_timeout: 1s, backoff: {{ max: 500ms }} }}
"
    );
    let cfg = load_text(&text).unwrap();
    let r = &cfg.routes[0].policy;
    assert_eq!(r.timeout, Duration::from_secs(8), "inherited");
    assert_eq!(r.retry.attempts, 4, "overridden");
    assert_eq!(
        r.retry.backoff.base,
        Duration::from_millis(50),
        "inherited from defaults"
    );
    assert_eq!(
        r.retry.backoff.max,
        Duration::from_millis(500),
        "overridden"
    );
    assert!((r.retry.budget.ratio - 0.1).abs() < 1e-9);
    assert_eq!(r.retry.budget.min_per_second, 10, "built-in default");
    assert_eq!(cfg.default_route.policy.retry.attempts, 2);
}

#[test]
fn null_switches_an_inherited_fallback_off() {
    let text = format!(
        "{UP}defaults:\n  fallback: {{ status: 200, body: x }}\nroutes:\n  - name: a\n    fallback: null\n  - name: b\n"
    );
    let cfg = load_text(&text).unwrap();
    assert!(cfg.routes[0].policy.fallback.is_none());
    assert!(cfg.routes[1].policy.fallback.is_some());
}

#[test]
fn idempotency_header_null_disables_it() {
    let cfg = load_text(&format!(
        "{UP}defaults:\n  retry: {{ idempotency_header: null }}\n"
    ))
    .unwrap();
    assert!(cfg.default_route.policy.retry.idempotency_header.is_none());
}

#[test]
fn a_route_whose_attempts_cannot_fit_gets_a_warning() {
    let text = format!("{UP}routes:\n  - name: slow\n    timeout: 2s\n    retry: {{ attempts: 3, per_try_timeout: 1s }}\n");
    let cfg = load_text(&text).unwrap();
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0].starts_with("route `slow`: 3 attempts x per_try_timeout 1s"),
        "{}",
        cfg.warnings[0]
    );
}

#[test]
fn overrides_win_over_the_file() {
    let overrides = Overrides {
        listen: Some("127.0.0.1:1111".parse().unwrap()),
        admin_listen: None,
        upstream: Some("http://127.0.0.1:4000".into()),
        worker_threads: Some(1),
    };
    let text =
        format!("{UP}listen: 127.0.0.1:2222\nadmin_listen: 127.0.0.1:3333\nworker_threads: 4\n");
    let cfg = from_text(&text, None, &overrides).unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:1111");
    assert_eq!(cfg.admin_listen.to_string(), "127.0.0.1:3333");
    assert_eq!(cfg.upstream.url.to_string(), "http://127.0.0.1:4000/");
    assert_eq!(cfg.worker_threads, 1);
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let e = error("upstream:\n  url: [unclosed\n");
    assert!(e.starts_with("/etc/outrigger.yaml:"), "{e}");
    assert!(
        e.split(':').nth(1).unwrap().parse::<u32>().is_ok(),
        "line number in {e}"
    );
}
