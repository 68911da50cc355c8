//! Microbenchmarks of the per-request work that is outrigger's own (not hyper's): route
//! matching, header rewriting, retry classification, budget and breaker bookkeeping, and
//! metric updates. `cargo bench --bench hot_path`; the whole-proxy comparison with nginx
//! and haproxy is `bench/compare.sh`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use outrigger::config::{self, Overrides};
use outrigger::metrics::Metrics;
use outrigger::proxy::headers;
use outrigger::resilience::budget::RetryBudget;
use outrigger::resilience::circuit::{Breaker, BreakerMetrics};
use outrigger::resilience::retry;

fn config() -> config::Config {
    let mut yaml = String::from("upstream:\n  url: http://127.0.0.1:3000\nroutes:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: /api/v{i}, methods: [GET, POST] }}\n"
        ));
    }
    config::from_text(&yaml, Some(Path::new("/bench.yaml")), &Overrides::default()).expect("valid")
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("shop.example"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

fn routing(c: &mut Criterion) {
    let cfg = config();
    let headers = client_headers();
    c.bench_function("route: last of 10 prefixes", |b| {
        b.iter(|| black_box(cfg.route_for(&Method::GET, black_box("/api/v9/items/7"), &headers)))
    });
    c.bench_function("route: no match, default", |b| {
        b.iter(|| black_box(cfg.route_for(&Method::GET, black_box("/other"), &headers)))
    });
}

fn header_rewriting(c: &mut Criterion) {
    let cfg = config();
    let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
    let id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    c.bench_function("headers: strip hop-by-hop (none present)", |b| {
        let mut h = client_headers();
        h.remove("connection");
        b.iter(|| headers::strip_hop_by_hop(black_box(&mut h)))
    });
    c.bench_function("headers: full request head rewrite", |b| {
        b.iter(|| {
            let mut req = Request::get("/api/v1/items?page=2").body(()).unwrap();
            *req.headers_mut() = client_headers();
            let (mut parts, _) = req.into_parts();
            let upstream = &cfg.upstream;
            black_box(
                outrigger::proxy::upstream::Head::from_client(
                    &mut parts, upstream, None, peer, &id,
                )
                .unwrap(),
            )
        })
    });
    c.bench_function("edge: request id checked (kept)", |b| {
        let mut req = Request::get("/").body(()).unwrap();
        *req.headers_mut() = client_headers();
        req.headers_mut().insert("x-request-id", id.clone());
        b.iter(|| black_box(outrigger::edge::request_id(black_box(&mut req))))
    });
    c.bench_function("edge: request id generated", |b| {
        let mut req = Request::get("/").body(()).unwrap();
        b.iter(|| black_box(outrigger::edge::request_id(black_box(&mut req))))
    });
}

fn retry_rules(c: &mut Criterion) {
    let cfg = config();
    let policy = &cfg.default_route.policy.retry;
    let h = client_headers();
    c.bench_function("retry: status classification", |b| {
        b.iter(|| {
            black_box(retry::retries_status(
                policy,
                black_box(StatusCode::SERVICE_UNAVAILABLE),
            ))
        })
    });
    c.bench_function("retry: may resend (POST, no key)", |b| {
        b.iter(|| black_box(retry::may_resend(policy, &Method::POST, &h)))
    });
}

fn bookkeeping(c: &mut Criterion) {
    let cfg = config();
    let policy = &cfg.default_route.policy;
    let budget = RetryBudget::new(policy.retry.budget);
    c.bench_function("budget: record a first attempt", |b| {
        b.iter(|| budget.record_request())
    });
    c.bench_function("budget: try a retry", |b| {
        b.iter(|| black_box(budget.try_retry(policy.retry.attempts)))
    });
    let metrics = Metrics::new();
    let to = |s| metrics.circuit_transitions.with_label_values(&["bench", s]);
    let breaker = Breaker::new(
        "bench",
        policy.circuit_breaker.expect("on by default"),
        BreakerMetrics {
            state: metrics.circuit_state.with_label_values(&["bench"]),
            to: [to("closed"), to("half-open"), to("open")],
        },
    );
    c.bench_function("breaker: admit and record success", |b| {
        b.iter(|| {
            if let Some(permit) = breaker.admit() {
                permit.record(false, tokio::time::Instant::now());
            }
        })
    });
    c.bench_function("metrics: request counter with 4 labels", |b| {
        b.iter(|| {
            metrics
                .requests
                .with_label_values(&["default", "GET", "200", "upstream"])
                .inc()
        })
    });
    c.bench_function("metrics: latency histogram observe", |b| {
        b.iter(|| {
            metrics
                .request_duration
                .with_label_values(&["default", "upstream"])
                .observe(0.0012)
        })
    });
}

criterion_group!(benches, routing, header_rewriting, retry_rules, bookkeeping);
criterion_main!(benches);
