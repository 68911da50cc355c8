//! The gRPC parts of `bench/grpc.sh` and `scripts/grpcio-interop.sh`: tonic's health service
//! and the tests' Echo service as a server process, and a unary-call load driver.
//!
//! ```text
//! cargo run --release --example grpc_bench -- serve 127.0.0.1:50051 [SECONDS]
//! cargo run --release --example grpc_bench -- load 127.0.0.1:8080 CALLS CONCURRENCY
//! ```
//!
//! `serve` stops by itself after SECONDS (default 600). `load` makes CALLS unary Echo calls
//! (a 16-byte message each way) over CONCURRENCY h2c channels and prints one line:
//! `calls=N errors=N seconds=S calls_per_s=R p50_us=A p99_us=B`.

#[path = "../tests/grpc/echo.rs"]
mod echo;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use echo::{EchoClient, GrpcServer, Msg};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() >= 2 => {
            let addr: SocketAddr = args[1].parse().expect("serve ADDR");
            let seconds: u64 = args.get(2).map_or(600, |s| s.parse().expect("SECONDS"));
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let _server = GrpcServer::start_on(listener).await;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
        Some("load") if args.len() == 4 => {
            let addr: SocketAddr = args[1].parse().expect("load ADDR");
            let calls: usize = args[2].parse().expect("CALLS");
            let concurrency: usize = args[3].parse().expect("CONCURRENCY");
            load(addr, calls, concurrency.max(1)).await;
        }
        _ => {
            eprintln!("usage: grpc_bench serve ADDR [SECONDS] | load ADDR CALLS CONCURRENCY");
            std::process::exit(2);
        }
    }
}

async fn load(addr: SocketAddr, calls: usize, concurrency: usize) {
    let mut tasks = Vec::new();
    let started = Instant::now();
    for worker in 0..concurrency {
        let mine = calls / concurrency + usize::from(worker < calls % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut client = EchoClient::connect(addr).await;
            let mut latencies = Vec::with_capacity(mine);
            let mut errors = 0usize;
            for _ in 0..mine {
                let req = tonic::Request::new(Msg {
                    text: "0123456789abcdef".to_owned(),
                    ..Msg::default()
                });
                let t = Instant::now();
                match client.unary("Unary", req).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    let mut errors = 0;
    for task in tasks {
        let (latencies, failed) = task.await.expect("worker");
        all.extend(latencies);
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    println!(
        "calls={} errors={errors} seconds={seconds:.3} calls_per_s={:.0} p50_us={} p99_us={}",
        all.len(),
        all.len() as f64 / seconds,
        pct(0.50),
        pct(0.99),
    );
}
