//! The connection to Redis and the one way every operation goes through it.
//!
//! The `redis` crate's `ConnectionManager` (multiplexed, reconnects by itself after a
//! broken connection) does the protocol; this file adds what a proxy in front of live
//! traffic needs on top:
//! - every operation is bounded by a deadline (`shared.timeout` from its start): a hung
//!   Redis (`SIGSTOP`) costs a request at most that, never the client's full timeout
//!   (the complaint about envoy's ratelimit service, whose 10 s Redis timeout stalled
//!   requests);
//! - the health gate of [`super::health`]: after repeated errors Redis is skipped and
//!   callers use local state at once, one probe at a time finding out when it is back;
//! - connecting happens off the request path (the announcer task), so a Redis that is down
//!   at start, or refuses our password, never delays a request: requests see "not
//!   connected" and use local state;
//! - errors, latencies and up/down go to `outrigger_shared_store_*`. Error texts are logged
//!   at debug, without the URL: the password never reaches a log.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;
use tokio::time::Instant;

use super::health::{Gate, Health};
use super::metrics::SharedMetrics;
use crate::config::shared::SharedConfig;

/// The link to one Redis.
pub struct Link {
    client: redis::Client,
    /// Set once the first connection worked; the manager reconnects by itself after that.
    conn: ArcSwapOption<ConnectionManager>,
    health: Health,
    timeout: Duration,
    metrics: SharedMetrics,
    /// Whether the last connect failure was logged at error (logged once, then at debug).
    told: AtomicBool,
    /// The URL without its password, for logs.
    shown: String,
}

impl Link {
    /// A link not connected yet; [`Link::connect`] connects it.
    pub fn new(config: &SharedConfig, metrics: SharedMetrics) -> Result<Link, redis::RedisError> {
        let client = redis::Client::open(config.redis.secret())?;
        metrics.set_up(false);
        Ok(Link {
            client,
            conn: ArcSwapOption::empty(),
            health: Health::new(Instant::now()),
            timeout: config.timeout,
            metrics,
            told: AtomicBool::new(false),
            shown: config.redis.redacted(),
        })
    }

    /// The bound on one operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether Redis is in use now (connected and not backing off).
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Whether a connection was ever made.
    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Runs `op` on Redis before `deadline`; `None` when skipped (down, backing off, not
    /// connected), failed or late. Callers then use local state.
    pub async fn run<T, F, Fut>(&self, name: &'static str, deadline: Instant, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn.load_full()?;
        let gate = self.health.gate(Instant::now());
        if gate == Gate::Skip {
            return None;
        }
        // A request may be dropped mid-probe (its client went away): the guard then frees
        // the probe slot, or the link could never come back.
        let mut probe = ProbeGuard((gate == Gate::Probe).then_some(&self.health));
        let start = Instant::now();
        let answer = tokio::time::timeout_at(deadline, op((*conn).clone())).await;
        probe.0 = None;
        match answer {
            Ok(Ok(value)) => {
                self.metrics
                    .duration
                    .with_label_values(&[name])
                    .observe(start.elapsed().as_secs_f64());
                self.success();
                Some(value)
            }
            Ok(Err(e)) => {
                tracing::debug!(op = name, error = %e, "shared store operation failed");
                self.failure(name);
                None
            }
            Err(_) => {
                tracing::debug!(op = name, "shared store operation timed out");
                self.failure(name);
                None
            }
        }
    }

    /// Connects (authenticating, selecting the database); `true` once connected. Called by
    /// the announcer, never on the request path.
    pub async fn connect(&self) -> bool {
        if self.connected() {
            return true;
        }
        let bound = self.timeout.max(Duration::from_secs(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(bound)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let made = tokio::time::timeout(
            bound * 3,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(conn)) => {
                self.conn.store(Some(std::sync::Arc::new(conn)));
                self.told.store(false, Ordering::Relaxed);
                tracing::info!(redis = %self.shown, "shared store connected");
                self.success();
                true
            }
            Ok(Err(e)) => {
                self.connect_failed(&e.to_string());
                false
            }
            Err(_) => {
                self.connect_failed("timed out");
                false
            }
        }
    }

    fn connect_failed(&self, error: &str) {
        self.metrics.errors.with_label_values(&["connect"]).inc();
        if !self.told.swap(true, Ordering::Relaxed) {
            tracing::error!(
                redis = %self.shown,
                error,
                "cannot connect to the shared store; using local state until it works"
            );
        } else {
            tracing::debug!(error, "shared store still unreachable");
        }
    }

    /// Counts an error that is not an operation on Redis (a full write queue).
    pub fn count_error(&self, name: &'static str) {
        self.metrics.errors.with_label_values(&[name]).inc();
    }

    fn success(&self) {
        let was_up = self.health.is_up();
        self.health.success();
        if !was_up {
            self.metrics.set_up(true);
            tracing::info!("shared store in use");
        }
    }

    fn failure(&self, name: &'static str) {
        self.metrics.errors.with_label_values(&[name]).inc();
        let was_up = self.health.is_up();
        self.health.failure(Instant::now());
        if was_up && !self.health.is_up() {
            self.metrics.set_up(false);
            tracing::warn!("shared store unavailable; using local state");
        }
    }
}

/// Frees the probe slot if a probe is dropped before it reports.
struct ProbeGuard<'a>(Option<&'a Health>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(health) = self.0 {
            health.abandon();
        }
    }
}
