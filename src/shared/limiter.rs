//! A rate limit that holds for all replicas together (`rate_limit.scope: shared`).
//!
//! A request first tries its replica's reservation ([`super::gcra::Reserve`]): a reserved
//! token or a remembered denial answers at once, without Redis. Only an empty reservation
//! goes to Redis, and then only one request per key at a time (the others wait for that
//! refill and share it), all within one `shared.timeout` from the moment the request
//! asked. Whatever Redis cannot answer in that time, or while it is down, is decided by a
//! local token bucket at `rate / replicas` and `burst / replicas` (at least 1), the
//! replica count being the one last announced: the fleet then admits about the shared
//! rate, without Redis, and never fails a request because of it (Traefik answers 500 when
//! its Redis errs; Kong's `fault_tolerant` and envoy fail open; we degrade to a share).
//!
//! Retries take their tokens without waiting: a reserved token, or the local share while
//! Redis is down; a retry never waits on Redis.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::gcra::{self, Local, Reserve};
use super::keys::{self, Kind};
use super::Shared;
use crate::config::shared::Scope;
use crate::config::RateLimitPolicy;
use crate::resilience::lru::Lru;
use crate::resilience::rate_limit::RateLimiter;

/// One route's shared limiter.
pub struct SharedLimit {
    shared: Arc<Shared>,
    route: String,
    policy: RateLimitPolicy,
    /// GCRA interval and tolerance, microseconds.
    args: (u64, u64),
    batch: u32,
    keys: Mutex<Lru<Vec<u8>, Arc<KeyState>>>,
    /// The local share while Redis is away, rebuilt when the replica count changes.
    fallback: Mutex<(u32, Arc<RateLimiter>)>,
}

struct KeyState {
    reserve: Mutex<Reserve>,
    /// Held by the one request refilling this key from Redis.
    refill: tokio::sync::Mutex<()>,
}

impl SharedLimit {
    /// A shared limiter for `route`.
    pub fn new(shared: Arc<Shared>, route: &str, policy: &RateLimitPolicy) -> SharedLimit {
        let fallback = local_share(policy, 1);
        SharedLimit {
            shared,
            route: route.to_owned(),
            args: gcra::script_args(policy.rate, policy.burst),
            batch: gcra::batch_size(policy.rate, policy.burst),
            policy: policy.clone(),
            keys: Mutex::new(Lru::default()),
            fallback: Mutex::new((1, Arc::new(fallback))),
        }
    }

    /// The shared store this limiter uses.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Tokens one replica may hold unspent per key (README documents it).
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// Takes a token for a first attempt: from the reservation, else from Redis (one
    /// refill per key in flight), else from the local share. Waits at most
    /// `shared.timeout`.
    pub async fn take(&self, key: &[u8]) -> Result<(), Duration> {
        let state = self.state(key);
        match self.local(&state) {
            Local::Took => return Ok(()),
            Local::Denied(wait) => return Err(wait),
            Local::Empty(_) => {}
        }
        if !self.shared.link.is_up() {
            return self.fallback(key);
        }
        let deadline = Instant::now() + self.shared.link.timeout();
        let Ok(_refilling) = tokio::time::timeout_at(deadline, state.refill.lock()).await else {
            return self.fallback(key);
        };
        // The refill this request waited for may have left a token (or a denial) for it.
        let want = match self.local(&state) {
            Local::Took => return Ok(()),
            Local::Denied(wait) => return Err(wait),
            Local::Empty(want) => want,
        };
        match self.reserve(key, want, deadline).await {
            Some((granted, retry)) => {
                lock(&state.reserve).refilled(Instant::now(), granted, retry);
                self.settle(&state)
            }
            None => self.fallback(key),
        }
    }

    /// Takes a token for a retry without waiting: a reserved one, or the local share while
    /// Redis is away; `Err` when neither (the retry is then skipped as rate-limited).
    pub fn take_now(&self, key: &[u8]) -> Result<(), Duration> {
        let state = self.state(key);
        match self.local(&state) {
            Local::Took => Ok(()),
            Local::Denied(wait) => Err(wait),
            Local::Empty(_) if !self.shared.link.is_up() => self.fallback(key),
            Local::Empty(_) => Err(Duration::from_millis(1)),
        }
    }

    fn local(&self, state: &KeyState) -> Local {
        lock(&state.reserve).take(Instant::now(), self.batch)
    }

    fn settle(&self, state: &KeyState) -> Result<(), Duration> {
        match self.local(state) {
            Local::Took => Ok(()),
            Local::Denied(wait) => Err(wait),
            Local::Empty(_) => Err(Duration::from_millis(1)),
        }
    }

    async fn reserve(&self, key: &[u8], want: u32, deadline: Instant) -> Option<(u32, Duration)> {
        let redis_key = keys::key(self.shared.namespace(), Kind::Rate, &self.route, key);
        let (interval, tolerance) = self.args;
        let script = &self.shared.gcra;
        let (granted, retry_us): (u32, u64) = self
            .shared
            .link
            .run("reserve", deadline, |mut conn| async move {
                script
                    .key(redis_key)
                    .arg(interval)
                    .arg(tolerance)
                    .arg(want)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Some((granted, Duration::from_micros(retry_us)))
    }

    fn fallback(&self, key: &[u8]) -> Result<(), Duration> {
        let replicas = self.shared.replicas();
        let limiter = {
            let mut fallback = lock(&self.fallback);
            if fallback.0 != replicas {
                *fallback = (replicas, Arc::new(local_share(&self.policy, replicas)));
            }
            Arc::clone(&fallback.1)
        };
        limiter.take(key)
    }

    fn state(&self, key: &[u8]) -> Arc<KeyState> {
        let mut keys = lock(&self.keys);
        if let Some(state) = keys.get_mut(key) {
            return Arc::clone(state);
        }
        while keys.len() >= self.policy.max_keys {
            keys.pop_oldest();
        }
        let state = Arc::new(KeyState {
            reserve: Mutex::new(Reserve::new(Instant::now())),
            refill: tokio::sync::Mutex::new(()),
        });
        keys.insert(key.to_vec(), Arc::clone(&state));
        state
    }
}

/// The local bucket that stands in while Redis is away: this replica's share.
fn local_share(policy: &RateLimitPolicy, replicas: u32) -> RateLimiter {
    let n = replicas.max(1);
    RateLimiter::new(RateLimitPolicy {
        rate: policy.rate / f64::from(n),
        burst: (policy.burst / n).max(1),
        scope: Scope::Local,
        ..policy.clone()
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimit")
            .field("route", &self.route)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}
