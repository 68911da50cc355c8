//! A deliberately unreliable "legacy" HTTP service for demos and the deployment checks.
//!
//! It stands in for the backend nobody dares to touch: the Compose stack in
//! `deploy/compose/` puts outrigger in front of it, and `deploy/check.sh` drives it to give
//! Prometheus and the dashboard some failures to show.
//!
//! - `GET /healthz` answers 200 unless the service is broken.
//! - `POST /admin/break` makes every other request fail with 503 until `POST /admin/heal`.
//! - Any other request answers 200 with a small JSON body, except that an exact share of
//!   them (`LEGACY_FAIL_PERCENT`, default 20) fail with 503 in a fixed, repeatable
//!   pattern, and a random share (`LEGACY_SLOW_PERCENT`, default 0), failing or not,
//!   first waits `LEGACY_SLOW_MS` (default 2000) milliseconds.
//!
//! It listens on `LEGACY_LISTEN` (default `0.0.0.0:3000`) and exits on SIGTERM or SIGINT,
//! so it behaves as PID 1 in a container.
//!
//! Run it: `cargo run --example legacy_service`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// How the service misbehaves; read once from the environment.
struct Settings {
    fail_percent: u64,
    slow_percent: u64,
    slow: Duration,
}

/// Shared state: the request counter that drives the failure pattern, and the kill switch.
struct Service {
    settings: Settings,
    served: AtomicU64,
    broken: AtomicBool,
}

/// True for exactly `percent` of every 100 consecutive values of `n`, spread evenly.
fn hits(n: u64, percent: u64) -> bool {
    (n + 1) * percent / 100 > n * percent / 100
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{name}: expected a whole number, got {text:?}")),
        Err(_) => Ok(default),
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

impl Service {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::POST, "/admin/break") => {
                self.broken.store(true, Ordering::Relaxed);
                return json(StatusCode::OK, r#"{"broken":true}"#.into());
            }
            (&Method::POST, "/admin/heal") => {
                self.broken.store(false, Ordering::Relaxed);
                return json(StatusCode::OK, r#"{"broken":false}"#.into());
            }
            _ => {}
        }
        if self.broken.load(Ordering::Relaxed) {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"broken on purpose"}"#.into(),
            );
        }
        if path == "/healthz" {
            return json(StatusCode::OK, r#"{"status":"ok"}"#.into());
        }
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        if fastrand::u64(0..100) < self.settings.slow_percent {
            tokio::time::sleep(self.settings.slow).await;
        }
        if hits(n, self.settings.fail_percent) {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"legacy service hiccup"}"#.into(),
            );
        }
        let path = path.replace(['"', '\\'], "");
        json(
            StatusCode::OK,
            format!(r#"{{"path":"{path}","request":{n}}}"#),
        )
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::var("LEGACY_LISTEN")
        .unwrap_or_else(|_| "0.0.0.0:3000".into())
        .parse()
        .map_err(|e| format!("LEGACY_LISTEN: {e}"))?;
    let settings = Settings {
        fail_percent: env_number("LEGACY_FAIL_PERCENT", 20)?.min(100),
        slow_percent: env_number("LEGACY_SLOW_PERCENT", 0)?.min(100),
        slow: Duration::from_millis(env_number("LEGACY_SLOW_MS", 2000)?),
    };
    let service = Arc::new(Service {
        settings,
        served: AtomicU64::new(0),
        broken: AtomicBool::new(false),
    });
    let listener = TcpListener::bind(listen).await?;
    println!("legacy service listening on {}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or a connection aborted while queued: keep serving.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let handler = service_fn(move |request| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(service.handle(request).await) }
            });
            // A client that goes away mid-request is its own business.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
    println!("legacy service stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hits;

    #[test]
    fn failure_share_is_exact() {
        for percent in [0, 1, 20, 33, 100] {
            let count = (0..1000).filter(|&n| hits(n, percent)).count() as u64;
            assert_eq!(count, percent * 10, "percent {percent}");
        }
    }
}
