//! Token buckets in front of the upstream: the backend never sees more than `rate` (with
//! `burst` to spare) per route, per client address or per header value.
//!
//! Every upstream attempt takes a token, retries included, so retries can never push the
//! backend over its limit. A request without a token is answered at once with 429 and a
//! `Retry-After` saying when the next token is due (REASON `rate-limited`; a fallback can
//! answer instead). The key table is bounded by `max_keys`: when it is full, the key seen
//! least recently is forgotten (and starts again with a full bucket if it returns), so a
//! flood of distinct keys costs bounded memory.
//!
//! A limiter never fails open: the config refuses rates too small to compute with, the
//! arithmetic here saturates instead of panicking, and should a panic ever poison the lock,
//! the next caller takes the table over as it stands and goes on limiting, rather than
//! letting every request through.
//!
//! With `scope: shared` the buckets live in Redis for all replicas together
//! (`crate::shared::limiter`); this limiter then only hands requests over to it, and its
//! own buckets stay empty. The in-memory path takes one `None` check more than before.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::lru::Lru;
use crate::config::{RateKey, RateLimitPolicy};
use crate::shared::SharedLimit;

/// One route's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    policy: RateLimitPolicy,
    buckets: Mutex<Buckets>,
    /// The fleet-wide limiter, with `scope: shared`.
    shared: Option<Arc<SharedLimit>>,
}

/// The buckets by key. With `key: route` there is one key, the empty one, and its bucket
/// is held apart: a keyed table lookup (SipHash, since keys come from clients) cost about
/// 300 instructions per request for a table of one.
#[derive(Debug, Default)]
struct Buckets {
    route: Option<Bucket>,
    keyed: Lru<Vec<u8>, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter with no keys yet.
    pub fn new(policy: RateLimitPolicy) -> RateLimiter {
        RateLimiter {
            policy,
            buckets: Mutex::new(Buckets::default()),
            shared: None,
        }
    }

    /// This limiter, held for all replicas together through `shared`.
    pub fn with_shared(mut self, shared: Option<Arc<SharedLimit>>) -> Self {
        self.shared = shared;
        self
    }

    /// The fleet-wide limiter, with `scope: shared`.
    pub fn shared(&self) -> Option<&Arc<SharedLimit>> {
        self.shared.as_ref()
    }

    /// Takes one token for a request's first attempt: at once in memory, or through the
    /// shared limiter (which waits at most `shared.timeout`).
    pub async fn admit(&self, key: &[u8]) -> Result<(), Duration> {
        match &self.shared {
            None => self.take(key),
            Some(shared) => shared.take(key).await,
        }
    }

    /// The policy this limiter enforces.
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    /// Which bucket a request draws from.
    pub fn key(&self, client: IpAddr, headers: &HeaderMap) -> Vec<u8> {
        match &self.policy.key {
            RateKey::Route => Vec::new(),
            RateKey::ClientIp => client.to_canonical().to_string().into_bytes(),
            RateKey::Header(name) => headers
                .get(name)
                .map(|v| header_key(v.as_bytes()))
                .unwrap_or_default(),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn take(&self, key: &[u8]) -> Result<(), Duration> {
        if let Some(shared) = &self.shared {
            return shared.take_now(key);
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let buckets = &mut *guard;
        let burst = f64::from(self.policy.burst);
        let full = Bucket {
            tokens: burst,
            updated: now,
        };
        let bucket = if matches!(self.policy.key, RateKey::Route) {
            buckets.route.get_or_insert(full)
        } else {
            let keyed = &mut buckets.keyed;
            match keyed.get_mut(key) {
                Some(bucket) => bucket,
                None => {
                    while keyed.len() >= self.policy.max_keys {
                        keyed.pop_oldest();
                    }
                    keyed.insert(key.to_vec(), full);
                    keyed.get_mut(key).expect("just inserted")
                }
            }
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.policy.rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.policy.rate;
        Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
    }

    /// How many keys are tracked.
    pub fn keys(&self) -> usize {
        let buckets = self.lock();
        buckets.keyed.len() + usize::from(buckets.route.is_some())
    }

    /// The key table, taken over as it stands if a panic poisoned the lock: refusing to
    /// limit after a panic would let everything through.
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Header values longer than this are kept as their digest.
const LONGEST_KEPT_WHOLE: usize = 64;

/// The table's key for a header value: the value itself, or for a long one a NUL and its
/// SHA-256 (no header value holds a NUL, so a digest never equals a value). The value is
/// the client's and may be as long as a request head: kept whole, `max_keys` bounded the
/// count of keys but not their bytes (an attack review: 3,000 values of 60 KB took
/// 358 MB; at the default 100,000 keys, about 12 GB).
fn header_key(value: &[u8]) -> Vec<u8> {
    if value.len() <= LONGEST_KEPT_WHOLE {
        return value.to_vec();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value);
    let mut key = Vec::with_capacity(1 + digest.as_ref().len());
    key.push(0);
    key.extend_from_slice(digest.as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limiter(rate: f64, burst: u32, key: RateKey, max_keys: usize) -> RateLimiter {
        RateLimiter::new(RateLimitPolicy {
            rate,
            burst,
            key,
            max_keys,
            scope: Default::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let l = limiter(10.0, 5, RateKey::Route, 10);
        assert_eq!((0..20).filter(|_| l.take(b"").is_ok()).count(), 5, "burst");
        let wait = l.take(b"").unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one token every 100 ms");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.take(b"").is_ok());
        assert!(l.take(b"").is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..20).filter(|_| l.take(b"").is_ok()).count(),
            5,
            "refill stops at burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_poisoned_lock_still_limits() {
        let l = limiter(1.0, 1, RateKey::Route, 10);
        assert!(l.take(b"").is_ok());
        let poisoner = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = l.buckets.lock();
                panic!("poison the key table");
            })
            .join()
        });
        assert!(poisoner.is_err() && l.buckets.is_poisoned());
        assert!(l.take(b"").is_err(), "the bucket is still empty");
        assert_eq!(l.keys(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tiny_rate_waits_instead_of_panicking() {
        let l = limiter(1e-20, 1, RateKey::Route, 10);
        assert!(l.take(b"").is_ok());
        assert_eq!(l.take(b""), Err(Duration::MAX));
        assert_eq!(l.take(b""), Err(Duration::MAX), "and keeps limiting");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_isolated() {
        let l = limiter(1.0, 2, RateKey::ClientIp, 10);
        let a = l.key("10.0.0.1".parse().unwrap(), &HeaderMap::new());
        let b = l.key("10.0.0.2".parse().unwrap(), &HeaderMap::new());
        assert!(l.take(&a).is_ok() && l.take(&a).is_ok());
        assert!(l.take(&a).is_err());
        assert!(l.take(&b).is_ok(), "another client has its own bucket");
    }

    #[tokio::test(start_paused = true)]
    async fn header_keys_and_missing_header() {
        let name = http::HeaderName::from_static("x-api-key");
        let l = limiter(1.0, 1, RateKey::Header(name.clone()), 10);
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static("k1"));
        assert_eq!(l.key("127.0.0.1".parse().unwrap(), &h), b"k1");
        assert_eq!(l.key("127.0.0.1".parse().unwrap(), &HeaderMap::new()), b"");
    }

    #[test]
    fn a_long_header_value_is_kept_as_its_digest() {
        let name = http::HeaderName::from_static("x-api-key");
        let l = limiter(1.0, 1, RateKey::Header(name.clone()), 10);
        let key = |value: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_bytes(value).unwrap());
            l.key("127.0.0.1".parse().unwrap(), &h)
        };
        let short = [b'k'; 64];
        assert_eq!(key(&short), short, "up to 64 bytes, the value itself");
        let (a, b) = ([b'a'; 60_000], [b'b'; 60_000]);
        assert_eq!(key(&a).len(), 33);
        assert_eq!(key(&a)[0], 0);
        assert_eq!(key(&a), key(&a), "the same value, the same bucket");
        assert_ne!(key(&a), key(&b), "another value, another bucket");
    }

    #[tokio::test(start_paused = true)]
    async fn key_table_is_bounded_least_recent_first() {
        let l = limiter(1.0, 1, RateKey::ClientIp, 100);
        for i in 0..1000u32 {
            let _ = l.take(&i.to_be_bytes());
            assert!(l.keys() <= 100);
        }
        assert_eq!(l.keys(), 100);
        assert!(
            l.take(&999u32.to_be_bytes()).is_err(),
            "recent key kept its empty bucket"
        );
        assert!(
            l.take(&0u32.to_be_bytes()).is_ok(),
            "oldest key was forgotten"
        );
    }
}
