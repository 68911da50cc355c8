//! The optional active health check: probe `upstream.health_check.path` every `interval`
//! and decide up or down with consecutive-result thresholds.
//!
//! While the probe finds the upstream down, a request whose route can answer from a stale
//! copy or a fallback gets that at once (REASON `circuit-open`: the probe acts as a breaker
//! for the whole upstream) instead of waiting for a connect timeout. Other requests still
//! try the upstream, so a wrong probe path cannot take down routes that work. The first
//! time the probe sees `healthy_threshold` good answers in a row, traffic flows again.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request};
use tracing::{info, warn};

use super::body::UpstreamBody;
use super::runtime::Runtime;
use super::Proxy;
use crate::config::HealthCheck;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What the probe currently believes.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    state: AtomicU8,
    /// Why the last probe failed, for `/health`.
    last_error: Mutex<String>,
}

impl UpstreamHealth {
    /// True only when a configured probe has found the upstream down.
    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::Relaxed) == DOWN
    }

    /// True when a probe has found the upstream up.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// The last probe error.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
    }
}

/// Runs the probe loop for the life of the process; it follows config reloads.
pub async fn run(proxy: Arc<Proxy>) {
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        let rt = proxy.runtime.load_full();
        let Some(check) = rt.config.upstream.health_check.clone() else {
            // A reload removed the check: what it found is no longer known.
            (good, bad) = (0, 0);
            forget(&proxy);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let result = probe_once(&rt, &check).await;
        drop(rt);
        if proxy.runtime.load().config.upstream.health_check.is_none() {
            continue;
        }
        match result {
            Ok(()) => {
                good += 1;
                bad = 0;
                if good >= check.healthy_threshold && !proxy.health.is_up() {
                    info!("health check: upstream is up");
                    proxy.health.set(UP);
                }
            }
            Err(e) => {
                bad += 1;
                good = 0;
                if let Ok(mut last) = proxy.health.last_error.lock() {
                    *last = e.clone();
                }
                if bad >= check.unhealthy_threshold && !proxy.health.is_down() {
                    warn!(error = %e, "health check: upstream is down");
                    proxy.health.set(DOWN);
                }
            }
        }
        if proxy.health.is_up() || proxy.health.is_down() {
            proxy.metrics.set_upstream_up(proxy.health.is_up());
        }
        wait_interval(&proxy, check.interval).await;
    }
}

/// Forgets what an earlier health check found: unknown, and no `outrigger_upstream_up`.
fn forget(proxy: &Proxy) {
    proxy.health.set(UNKNOWN);
    proxy.metrics.clear_upstream_up();
}

/// Sleeps `interval`, or less when a reload removes the health check meanwhile, so that
/// `/health` and `outrigger_upstream_up` stop reporting a check that no longer exists
/// within a second rather than after a long interval.
async fn wait_interval(proxy: &Proxy, interval: Duration) {
    let until = tokio::time::Instant::now() + interval;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if proxy.runtime.load().config.upstream.health_check.is_none() {
            return;
        }
    }
}

/// One probe of the upstream: `Ok` on a 2xx or 3xx within the check's timeout.
async fn probe_once(rt: &Runtime, check: &HealthCheck) -> Result<(), String> {
    let uri = format!(
        "{}{}{}",
        authority_prefix(&rt.config.upstream.url),
        rt.config.upstream.base_path,
        check.path
    );
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header("user-agent", "outrigger-health-check")
        .body(UpstreamBody::Empty)
        .map_err(|e| format!("health check request is invalid: {e}"))?;
    if let Some(host) = rt.client.default_host() {
        req.headers_mut().insert(http::header::HOST, host.clone());
    }
    match tokio::time::timeout(check.timeout, rt.client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
        Ok(Ok(resp)) => Err(format!("health check answered {}", resp.status().as_u16())),
        Ok(Err(e)) => Err(format!(
            "health check failed: {}",
            super::failure::Failure::from_client_error(&e)
        )),
        Err(_) => Err("health check timed out".to_owned()),
    }
}

fn authority_prefix(url: &http::Uri) -> String {
    format!(
        "{}://{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str())
    )
}
