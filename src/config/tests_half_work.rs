//! Configs that used to load and then half-work (issue 20, items 11-16): each is now
//! refused with the field at fault, or loads with a warning that names the route.

use std::path::Path;

use super::*;

const UP: &str = "upstream:\n  url: http://127.0.0.1:3000\n";

fn load_text(text: &str) -> Result<Config, ConfigError> {
    from_text(text, Some(Path::new("/etc/o.yaml")), &Overrides::default())
}

fn error(text: &str) -> String {
    load_text(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn fallback_framing_and_hop_by_hop_headers_are_refused() {
    for name in [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        let e = error(&format!(
            "{UP}defaults:\n  fallback:\n    body: hello world\n    headers: {{ {name}: '3' }}\n"
        ));
        let lower = name.to_ascii_lowercase();
        assert!(
            e.starts_with(&format!(
                "/etc/o.yaml: defaults.fallback.headers.{lower}: is set by the proxy"
            )),
            "{e}"
        );
    }
    let ok = load_text(&format!(
        "{UP}defaults:\n  fallback:\n    headers: {{ content-type: text/plain, cache-control: no-store }}\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn upstream_userinfo_is_refused_without_repeating_it() {
    let e = error("upstream:\n  url: https://admin:s3cret@api.internal:8443/base\n");
    assert!(
        e.contains("upstream.url: `https://***@api.internal:8443/base` has user information"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
    // Even a URL that fails for another reason does not echo a password.
    let e = error("upstream:\n  url: ftp://u:s3cret@h/\n");
    assert!(!e.contains("s3cret") && e.contains("ftp://***@h/"), "{e}");
}

#[test]
fn health_check_path_must_be_a_valid_uri_path() {
    for bad in ["/health z", "/health\\tz", "/a#b"] {
        let e = error(&format!("{UP}  health_check:\n    path: \"{bad}\"\n"));
        assert!(e.contains("upstream.health_check.path: `"), "{e}");
        assert!(e.contains("is not a valid URI path"), "{e}");
    }
    let ok = load_text(&format!(
        "{UP}  health_check:\n    path: /health%20z?full=1\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn empty_methods_are_refused() {
    let e = error(&format!(
        "{UP}routes:\n  - name: a\n    match: {{ methods: [] }}\n"
    ));
    assert!(
        e.contains("routes[0].match.methods: `[]` matches no request"),
        "{e}"
    );
}

#[test]
fn routes_after_a_catch_all_are_warned_about() {
    let cfg = load_text(&format!(
        "{UP}routes:\n  - name: gets\n    match: {{ path_prefix: /, methods: [GET] }}\n  - name: api\n    match: {{ path_prefix: /api }}\n  - name: exact\n    match: {{ path: /api/v1/x }}\n  - name: all\n    match: {{ path_prefix: / }}\n  - name: late\n    match: {{ path: /z }}\n  - name: later\n  - name: fine\n    match: {{ path_prefix: /apis }}\n"
    ))
    .unwrap();
    let w = &cfg.warnings;
    assert_eq!(w.len(), 4, "{w:?}");
    assert!(
        w[0].starts_with("route `exact` can never match: route `api` before it"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("route `late` can never match: route `all` before it"),
        "{w:?}"
    );
    assert!(
        w[2].starts_with("route `later` can never match: route `all`"),
        "{w:?}"
    );
    assert!(
        w[3].starts_with("route `fine` can never match: route `all`"),
        "{w:?}"
    );
}

#[test]
fn route_paths_with_query_marks_or_spaces_are_warned_about() {
    let cfg = load_text(&format!(
        "{UP}routes:\n  - name: q\n    match: {{ path_prefix: /search?q= }}\n  - name: s\n    match: {{ path: '/a b' }}\n  - name: ok\n    match: {{ path_prefix: /search }}\n"
    ))
    .unwrap();
    let w = &cfg.warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("route `q` can never match: its path contains '?'"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("route `s` can never match: its path contains ' '"),
        "{w:?}"
    );
}

#[test]
fn worker_threads_in_the_file_are_bounded() {
    let e = error(&format!("{UP}worker_threads: 100000\n"));
    assert!(e.contains("worker_threads: 100000 is over 1024"), "{e}");
    assert!(load_text(&format!("{UP}worker_threads: 1024\n")).is_ok());
}

#[test]
fn a_repeated_nested_key_is_reported_at_its_line() {
    let e = error("upstream:\n  url: http://a:1\n  http2: true\n  url: http://b:1\n");
    assert!(
        e.starts_with("/etc/o.yaml:4:3: upstream.url: `url` is given twice"),
        "{e}"
    );
}

#[test]
fn deep_flow_nesting_is_refused_before_parsing() {
    let started = std::time::Instant::now();
    let e = error(&format!(
        "{UP}routes: {}{}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    ));
    assert!(
        e.starts_with("/etc/o.yaml:3:1: nesting is deeper than 64 levels"),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Brackets inside quotes or comments do not count.
    let quoted = format!(
        "{UP}defaults:\n  fallback:\n    body: '{}' # {}\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    assert!(load_text(&quoted).is_ok());
}
