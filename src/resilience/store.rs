//! The response store behind both the fresh micro-cache (`cache`) and stale-if-error: one
//! store, two uses. A good `200` to a `GET` is kept per route, client `Host`, path, query and
//! key headers; it is served fresh while younger than the cache `ttl` (or the upstream's
//! shorter `max-age`/`s-maxage`), and served stale on failure while younger than
//! `stale_if_error.max_age`.
//!
//! Privacy comes first, because serving one user's data to another is the worst failure
//! this product can have:
//! - a request carrying `Authorization` or `Cookie` is neither stored nor served unless that
//!   header is one of `key_headers` (and then its value is part of the key);
//! - a response marked `Cache-Control: no-store` or `private`, one that sets a cookie, or one
//!   with `Vary: *` is never stored (`no-cache` ones are kept for stale use only);
//! - headers a response `Vary`s on are remembered with all their request values and must
//!   match, line for line, on lookup (a copy filled from the shared store remembers only
//!   a digest of them, and the request's values must give the same digest);
//! - the key holds the client's host (a backend may serve several tenants by host) and
//!   the exact bytes of each key header, so two different values never share a key;
//! - key, `Vary` values and lookups all read one set of headers: the request head as the
//!   upstream receives it (`proxy::upstream::Head`). A header the upstream never saw (one
//!   that `Connection` names, say) cannot then be in a key, and a `Vary` on a header the
//!   proxy sets (`X-Forwarded-For`) compares the value the upstream answered for.
//!
//! Bounds: `max_entries` and `max_bytes` (least recently used goes first); a response over
//! 1 MiB is never kept, and copies still streaming count against `max_bytes` too. The copy
//! is taken while the body streams to the client (see `proxy::body`), and only a body that
//! completed is stored.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::time::Instant;

use super::lru::Lru;
use crate::config::Policy;

/// A store key: length-prefixed fields, so no two different requests can collide.
pub type Key = Vec<u8>;

thread_local! {
    /// A key buffer given back by a request of this thread whose response was not stored
    /// (most responses of a hot key: see [`ResponseStore::recently_stored`]), for the
    /// next key: one `malloc` and one `free` fewer per request.
    static SPARE_KEY: Cell<Key> = const { Cell::new(Vec::new()) };
}

/// Keys up to this capacity are given back for reuse; a longer one (a long query) is freed.
const SPARE_KEY_MAX: usize = 1024;

/// Gives back a key that nothing keeps, for the next [`ResponseStore::key`] on this thread.
pub fn recycle(key: Key) {
    if key.capacity() <= SPARE_KEY_MAX {
        // `try_with`: a thread being torn down has no spare to keep.
        let _ = SPARE_KEY.try_with(|spare| spare.set(key));
    }
}

fn push_field(key: &mut Key, field: &[u8]) {
    key.extend_from_slice(&(field.len() as u32).to_le_bytes());
    key.extend_from_slice(field);
}

/// The client's host as the proxy forwards it (set or removed on every request).
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The largest response body ever stored.
pub const MAX_STORED_BODY: usize = 1 << 20;

/// A stored response.
#[derive(Debug)]
pub struct Stored {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    /// Until when a new copy of the same response is not worth taking
    /// ([`ResponseStore::recently_stored`]): settled once here, so the check on every
    /// response is one comparison.
    recent_until: Instant,
    /// How long it may be served without asking the upstream (zero: never).
    fresh_for: Duration,
    /// Request headers the response varies on, with what it remembers of their values.
    vary: Vec<(HeaderName, Varied)>,
}

/// The request headers a response varies on, with the request's values of each: what a
/// later request must match to be served its copy. Taken when the response head arrives,
/// so that a copy in the making holds these values rather than the request's whole head.
#[derive(Debug, Default)]
pub struct Vary(Vec<(HeaderName, Varied)>);

impl Vary {
    /// The names `response`'s `Vary` lists, each with `request`'s values of it.
    pub fn of(response: &HeaderMap, request: &HeaderMap) -> Vary {
        let names = response
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
        Vary(
            names
                .map(|name| {
                    let values = request.get_all(&name).iter().cloned().collect();
                    let varied = Varied::Values(values);
                    (name, varied)
                })
                .collect(),
        )
    }
}

/// What a copy remembers of one request header its response varies on.
#[derive(Debug)]
enum Varied {
    /// Every value the request had, in order: copies this replica stored.
    Values(Vec<HeaderValue>),
    /// Their digest: copies filled from the shared store, which never holds the values.
    Digest(crate::shared::VaryDigest),
}

impl Stored {
    /// What this copy holds, under `key`, counted against `max_bytes`: its body, its
    /// headers, the request values it varies on and the key, which the table holds twice
    /// (its map and its recency order). Keys and varied values are the client's, as long
    /// as a request head may be: counted flat, a flood of long URLs held many times
    /// `max_bytes` (an attack review: 3,000 keys of 60 KB, +374 MB under a 64 MiB bound).
    fn size(&self, key: &[u8]) -> u64 {
        self.size_with_key_len(key.len())
    }

    fn size_with_key_len(&self, key_len: usize) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let varied: usize = self
            .vary
            .iter()
            .map(|(name, varied)| {
                let values = match varied {
                    Varied::Values(values) => values.iter().map(|v| v.len() + 32).sum(),
                    Varied::Digest(_) => 32,
                };
                name.as_str().len() + 32 + values
            })
            .sum();
        (self.body.len() + headers + varied + 2 * key_len + 128) as u64
    }

    /// How long it may be served without asking the upstream.
    pub fn fresh_for(&self) -> Duration {
        self.fresh_for
    }

    /// The request headers it varies on, each with the digest of its values, for the copy
    /// stored under `key`: what the shared store may hold of them.
    pub fn vary_digests(&self, key: &[u8]) -> Vec<(HeaderName, crate::shared::VaryDigest)> {
        let digest = crate::shared::vary::digest;
        let digests = self.vary.iter().map(|(name, varied)| match varied {
            Varied::Values(values) => digest(key, name, values.iter()),
            Varied::Digest(d) => *d,
        });
        self.vary
            .iter()
            .map(|(n, _)| n.clone())
            .zip(digests)
            .collect()
    }

    /// Whether `request` (the headers the upstream would receive) has exactly the values
    /// this copy (stored under `key`) was stored with, every line of each `Vary` header
    /// compared, directly or through their digest.
    fn varies_with(&self, key: &[u8], request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, varied)| match varied {
            Varied::Values(values) => request.get_all(name).iter().eq(values.iter()),
            Varied::Digest(d) => {
                crate::shared::vary::digest(key, name, request.get_all(name).iter()) == *d
            }
        })
    }
}

/// What a route's store keeps and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct StorePolicy {
    /// The cache `ttl`, when the route has a fresh cache.
    pub ttl: Option<Duration>,
    /// `stale_if_error.max_age`, when the route serves stale copies.
    pub stale_max_age: Option<Duration>,
    pub max_entries: usize,
    pub max_bytes: u64,
    pub key_headers: Vec<HeaderName>,
}

impl StorePolicy {
    /// The store a route needs, if it has `cache` or `stale_if_error`. Bounds and key
    /// headers come from `stale_if_error` (its defaults when only `cache` is set).
    pub fn for_route(policy: &Policy) -> Option<StorePolicy> {
        let ttl = policy.cache.as_ref().map(|c| c.ttl);
        let stale = policy.stale_if_error.as_ref();
        if ttl.is_none() && stale.is_none() {
            return None;
        }
        Some(StorePolicy {
            ttl,
            stale_max_age: stale.map(|s| s.max_age),
            max_entries: stale.map_or(10_000, |s| s.max_entries),
            max_bytes: stale.map_or(64 << 20, |s| s.max_bytes),
            key_headers: stale.map(|s| s.key_headers.clone()).unwrap_or_default(),
        })
    }

    /// How long an entry is worth keeping at all.
    fn keep_for(&self, stored: &Stored) -> Duration {
        self.keep_for_fresh(stored.fresh_for)
    }

    fn keep_for_fresh(&self, fresh_for: Duration) -> Duration {
        fresh_for.max(self.stale_max_age.unwrap_or_default())
    }

    /// The end of a copy's recent time: a second, or a tenth of the time it is kept when
    /// that is shorter.
    fn recent_until(&self, stored_at: Instant, fresh_for: Duration) -> Instant {
        stored_at + Duration::from_secs(1).min(self.keep_for_fresh(fresh_for) / 10)
    }
}

/// One route's store.
#[derive(Debug)]
pub struct ResponseStore {
    policy: StorePolicy,
    inner: Mutex<Entries>,
    /// Bytes held by copies still streaming; bounded by `max_bytes` too, so a burst of
    /// concurrent large responses cannot hold more memory than the store may.
    pending: AtomicU64,
    /// Where copies are also written and looked for, with `scope: shared` (SPEC §7.4).
    shared: Option<crate::shared::SharedResponses>,
}

#[derive(Debug, Default)]
struct Entries {
    lru: Lru<Key, Arc<Stored>>,
    bytes: u64,
}

impl Entries {
    fn remove(&mut self, key: &[u8]) {
        if let Some(stored) = self.lru.remove(key) {
            self.bytes -= stored.size(key);
        }
    }
}

impl ResponseStore {
    /// An empty store.
    pub fn new(policy: StorePolicy) -> ResponseStore {
        ResponseStore {
            policy,
            inner: Mutex::new(Entries::default()),
            pending: AtomicU64::new(0),
            shared: None,
        }
    }

    /// This store, also shared through Redis.
    pub fn with_shared(mut self, shared: Option<crate::shared::SharedResponses>) -> Self {
        self.shared = shared;
        self
    }

    /// The shared side of this store, if it has one.
    pub fn shared(&self) -> Option<&crate::shared::SharedResponses> {
        self.shared.as_ref()
    }

    /// The policy this store follows.
    pub fn policy(&self) -> &StorePolicy {
        &self.policy
    }

    /// The key for a request, or `None` when privacy rules forbid storing or serving it.
    ///
    /// `headers` must be the request head as the upstream receives it (hop-by-hop headers
    /// and the ones `Connection` names already removed, forwarding headers set), and
    /// `target` the path and query sent: a key made from anything else could file the
    /// upstream's answer for one request under another's key. The client's host is the
    /// `X-Forwarded-Host` the proxy set.
    pub fn key(&self, method: &Method, target: &str, headers: &HeaderMap) -> Option<Key> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        // One pass over the head's dozen names, not three hashed lookups: a private header
        // not in the key forbids a key, and the host is the first `X-Forwarded-Host`.
        let mut host = None;
        for (name, value) in headers {
            if (name == header::AUTHORIZATION || name == header::COOKIE)
                && !self.policy.key_headers.contains(name)
            {
                return None;
            }
            if host.is_none() && name == FORWARDED_HOST {
                host = Some(value.as_bytes());
            }
        }
        let host = host.unwrap_or_default();
        let mut key = SPARE_KEY.try_with(Cell::take).unwrap_or_default();
        key.clear();
        key.reserve(128);
        push_field(&mut key, host);
        push_field(&mut key, target.as_bytes());
        for name in &self.policy.key_headers {
            push_field(&mut key, name.as_str().as_bytes());
            for value in headers.get_all(name) {
                push_field(&mut key, value.as_bytes());
            }
            key.push(b'|');
        }
        Some(key)
    }

    /// Whether a response may be stored at all; checked before its body is copied.
    pub fn storable(status: StatusCode, headers: &HeaderMap) -> bool {
        // `no-cache` responses are still kept: they are never served fresh (see `fresh_for`)
        // but may be served stale, which is what stale-if-error is for.
        if status != StatusCode::OK {
            return false;
        }
        // One pass over the response's few headers: cheaper than four hashed lookups.
        !headers.iter().any(|(name, v)| match *name {
            header::SET_COOKIE => true,
            header::CACHE_CONTROL => v.to_str().map_or(true, |v| {
                v.split(',').map(str::trim).any(|d| {
                    d.eq_ignore_ascii_case("no-store")
                        || d.eq_ignore_ascii_case("private")
                        || d.get(..8)
                            .is_some_and(|p| p.eq_ignore_ascii_case("private="))
                })
            }),
            header::VARY => v
                .to_str()
                .map_or(true, |v| v.split(',').any(|t| t.trim() == "*")),
            header::CONTENT_LENGTH => v
                .to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|n| n > MAX_STORED_BODY),
            _ => false,
        })
    }

    /// Stores a complete response for `key`, sent for a request with these headers: the
    /// tests' shorthand for `insert_varied`.
    #[cfg(test)]
    pub fn insert(&self, key: Key, request: &HeaderMap, headers: HeaderMap, body: Bytes) {
        let vary = Vary::of(&headers, request);
        self.insert_varied(key, vary, headers, body);
    }

    /// Stores a complete response for `key`, with the request values it varies on.
    pub fn insert_varied(&self, key: Key, vary: Vary, headers: HeaderMap, body: Bytes) {
        if body.len() > MAX_STORED_BODY {
            return;
        }
        let vary = vary.0;
        let fresh_for = self
            .policy
            .ttl
            .map_or(Duration::ZERO, |ttl| fresh_for(ttl, &headers));
        let stored_at = Instant::now();
        let stored = Arc::new(Stored {
            headers,
            body,
            stored_at,
            recent_until: self.policy.recent_until(stored_at, fresh_for),
            fresh_for,
            vary,
        });
        if let Some(shared) = &self.shared {
            if !self.policy.keep_for(&stored).is_zero() {
                shared.put(&key, &stored);
            }
        }
        self.keep(key, stored);
    }

    /// Stores a copy that another replica stored (`scope: shared`), `age` old, under the
    /// same rules as [`ResponseStore::insert`] but not written back to the shared store.
    pub fn fill(&self, key: Key, envelope: crate::shared::Envelope, age: Duration) {
        let Some(stored_at) = Instant::now().checked_sub(age) else {
            return;
        };
        if envelope.body.len() > MAX_STORED_BODY {
            return;
        }
        let fresh_for = self
            .policy
            .ttl
            .map_or(Duration::ZERO, |ttl| fresh_for(ttl, &envelope.headers));
        let stored = Arc::new(Stored {
            headers: envelope.headers,
            body: envelope.body,
            stored_at,
            recent_until: self.policy.recent_until(stored_at, fresh_for),
            fresh_for,
            vary: (envelope.vary.into_iter())
                .map(|(name, d)| (name, Varied::Digest(d)))
                .collect(),
        });
        self.keep(key, stored);
    }

    fn keep(&self, mut key: Key, stored: Arc<Stored>) {
        if self.policy.keep_for(&stored).is_zero() {
            return;
        }
        let size = stored.size(&key);
        if size > self.policy.max_bytes {
            // It would push out every other copy, then itself.
            return;
        }
        // A key may be a reused buffer with room for a longer one (`recycle`): the store
        // keeps only its bytes, which is what `size` counts.
        key.shrink_to_fit();
        let Ok(mut entries) = self.inner.lock() else {
            return;
        };
        // One lookup: a copy already under this key is replaced, and its bytes given back
        // (it was stored under the same key, so its size counts the same key length).
        let key_len = key.len();
        if let Some(replaced) = entries.lru.insert(key, stored) {
            entries.bytes -= replaced.size_with_key_len(key_len);
        }
        entries.bytes += size;
        while entries.lru.len() > self.policy.max_entries || entries.bytes > self.policy.max_bytes {
            let Some((key, oldest)) = entries.lru.pop_oldest() else {
                break;
            };
            entries.bytes -= oldest.size(&key);
        }
    }

    /// Whether `key` was stored less than a second ago (or less than a tenth of the time
    /// it is kept): the copy in hand is fresh enough, and skipping the new one spares a
    /// body copy and an insert on every response of a hot key.
    pub fn recently_stored(&self, key: &[u8]) -> bool {
        let Ok(entries) = self.inner.lock() else {
            return false;
        };
        // A peek: asking whether to copy again is not a use of the copy.
        let now = Instant::now();
        entries
            .lru
            .peek(key)
            .is_some_and(|stored| now < stored.recent_until)
    }

    /// A copy that may be served without asking the upstream, with its age.
    pub fn fresh(&self, key: &[u8], request: &HeaderMap) -> Option<(Arc<Stored>, Duration)> {
        self.lookup(key, request)
            .filter(|(s, age)| *age < s.fresh_for)
    }

    /// A copy that may be served because the upstream failed, with its age.
    pub fn stale(&self, key: &[u8], request: &HeaderMap) -> Option<(Arc<Stored>, Duration)> {
        let max_age = self.policy.stale_max_age?;
        self.lookup(key, request).filter(|(_, age)| *age <= max_age)
    }

    fn lookup(&self, key: &[u8], request: &HeaderMap) -> Option<(Arc<Stored>, Duration)> {
        let mut entries = self.inner.lock().ok()?;
        let stored = Arc::clone(entries.lru.get_mut(key)?);
        let age = stored.stored_at.elapsed();
        if age > self.policy.keep_for(&stored) {
            entries.remove(key);
            return None;
        }
        stored.varies_with(key, request).then_some((stored, age))
    }

    /// Reserves room for `n` more bytes of a copy in progress; `false` means give it up.
    pub fn reserve(&self, n: u64) -> bool {
        let before = self.pending.fetch_add(n, Ordering::Relaxed);
        if before + n > self.policy.max_bytes {
            self.pending.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Returns bytes reserved by a copy that finished or was abandoned.
    pub fn release(&self, n: u64) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, u64) {
        self.inner.lock().map_or((0, 0), |e| (e.lru.len(), e.bytes))
    }
}

/// How long a response may be served fresh: the `ttl`, or the upstream's shorter
/// `s-maxage`/`max-age` (`s-maxage` wins, as for any shared cache); zero for `no-cache`.
fn fresh_for(ttl: Duration, headers: &HeaderMap) -> Duration {
    let mut max_age = None;
    let mut s_maxage = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            return Duration::ZERO;
        };
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            let seconds = |name: &str| {
                directive
                    .strip_prefix(name)
                    .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
            };
            if directive == "no-cache" || directive.starts_with("no-cache=") {
                return Duration::ZERO;
            }
            max_age = max_age.or(seconds("max-age="));
            s_maxage = s_maxage.or(seconds("s-maxage="));
        }
    }
    match s_maxage.or(max_age) {
        Some(secs) => ttl.min(Duration::from_secs(secs)),
        None => ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize, max_bytes: u64, key_headers: Vec<HeaderName>) -> ResponseStore {
        ResponseStore::new(StorePolicy {
            ttl: None,
            stale_max_age: Some(Duration::from_secs(60)),
            max_entries,
            max_bytes,
            key_headers,
        })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn private_requests_get_no_key_unless_keyed() {
        let uri = "/me?x=1";
        let plain = store(10, 1 << 20, vec![]);
        assert!(plain.key(&Method::GET, uri, &HeaderMap::new()).is_some());
        let a_host = plain.key(
            &Method::GET,
            uri,
            &headers(&[("x-forwarded-host", "a.example")]),
        );
        let b_host = plain.key(
            &Method::GET,
            uri,
            &headers(&[("x-forwarded-host", "b.example")]),
        );
        assert_ne!(a_host, b_host, "tenants by host never share a copy");
        assert!(plain
            .key(
                &Method::GET,
                uri,
                &headers(&[("authorization", "Bearer a")])
            )
            .is_none());
        assert!(plain
            .key(&Method::GET, uri, &headers(&[("cookie", "s=1")]))
            .is_none());
        assert!(plain.key(&Method::POST, uri, &HeaderMap::new()).is_none());

        let keyed = store(10, 1 << 20, vec![header::AUTHORIZATION]);
        let a = keyed.key(
            &Method::GET,
            uri,
            &headers(&[("authorization", "Bearer a")]),
        );
        let b = keyed.key(
            &Method::GET,
            uri,
            &headers(&[("authorization", "Bearer b")]),
        );
        let none = keyed.key(&Method::GET, uri, &HeaderMap::new());
        assert!(a.is_some() && b.is_some() && none.is_some());
        assert_ne!(a, b);
        assert_ne!(a, none);
    }

    #[test]
    fn a_recycled_key_buffer_holds_nothing_of_the_last_key() {
        let plain = store(10, 1 << 20, vec![]);
        let host = |h: &'static str| headers(&[("x-forwarded-host", h)]);
        let fresh = plain.key(&Method::GET, "/a", &host("a.example")).unwrap();
        let long = plain
            .key(&Method::GET, "/a/much/longer/path?q=1", &host("b.example"))
            .unwrap();
        let buffer = long.as_ptr();
        recycle(long);
        let reused = plain.key(&Method::GET, "/a", &host("a.example")).unwrap();
        assert_eq!(
            reused.as_ptr(),
            buffer,
            "the given-back buffer is used again"
        );
        assert_eq!(reused, fresh);
    }

    #[test]
    fn a_stored_key_keeps_no_room_of_a_recycled_buffer() {
        let plain = store(10, 1 << 20, vec![]);
        let long = "/".repeat(600);
        recycle(plain.key(&Method::GET, &long, &HeaderMap::new()).unwrap());
        let key = plain.key(&Method::GET, "/a", &HeaderMap::new()).unwrap();
        assert!(key.capacity() > 600, "the recycled buffer was taken");
        let body = Bytes::from_static(b"ok");
        plain.insert(key, &HeaderMap::new(), HeaderMap::new(), body);
        let entries = plain.inner.lock().unwrap();
        let kept: Vec<_> = entries
            .lru
            .keys()
            .map(|k| (k.len(), k.capacity()))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].0, kept[0].1,
            "the stored key is shrunk to its bytes"
        );
    }

    #[test]
    fn unstorable_responses() {
        assert!(ResponseStore::storable(StatusCode::OK, &HeaderMap::new()));
        assert!(!ResponseStore::storable(
            StatusCode::CREATED,
            &HeaderMap::new()
        ));
        for h in [
            ("cache-control", "no-store"),
            ("cache-control", "max-age=5, Private"),
            ("set-cookie", "s=1"),
            ("vary", "*"),
            ("content-length", "2000000"),
        ] {
            assert!(
                !ResponseStore::storable(StatusCode::OK, &headers(&[h])),
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_copy_stored_again_under_its_key_is_counted_once() {
        let none = HeaderMap::new();
        let body = || Bytes::from(vec![b'x'; 100]);
        // Each copy counts 100 + 2 * 1 + 128 = 230 bytes: two fit in 500, three do not.
        let s = store(10, 500, vec![]);
        for _ in 0..5 {
            s.insert("a".into(), &none, HeaderMap::new(), body());
        }
        s.insert("b".into(), &none, HeaderMap::new(), body());
        assert!(
            s.stale(b"a", &none).is_some(),
            "a was pushed out by its own copies"
        );
        assert!(s.stale(b"b", &none).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_is_recent_for_a_second_or_a_tenth_of_its_keep() {
        let none = HeaderMap::new();
        let body = || Bytes::from_static(b"1");
        // Kept for a minute (stale_max_age): recent for a second.
        let s = store(10, 1 << 20, vec![]);
        assert!(!s.recently_stored(b"a"), "nothing stored yet");
        s.insert("a".into(), &none, HeaderMap::new(), body());
        assert!(s.recently_stored(b"a"));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(s.recently_stored(b"a"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!s.recently_stored(b"a"));
        // Kept for five seconds: recent for half a second.
        let short = ResponseStore::new(StorePolicy {
            stale_max_age: Some(Duration::from_secs(5)),
            ..s.policy.clone()
        });
        short.insert("a".into(), &none, HeaderMap::new(), body());
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(short.recently_stored(b"a"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!short.recently_stored(b"a"));
    }

    #[test]
    fn long_keys_count_against_max_bytes() {
        let s = store(100, 100_000, vec![]);
        let none = HeaderMap::new();
        for i in 0..5u8 {
            let mut key = vec![b'/'; 20_000];
            key[1] = b'a' + i;
            s.insert(key, &none, HeaderMap::new(), Bytes::from_static(b"1"));
        }
        let (entries, bytes) = s.usage();
        assert_eq!(entries, 2, "each entry holds its 20 KB key twice");
        assert!(bytes <= 100_000, "{bytes}");
        // One copy larger than the whole bound is not kept, and pushes out nothing.
        s.insert(
            vec![b'/'; 60_000],
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"1"),
        );
        assert_eq!(s.usage(), (entries, bytes));
    }

    #[test]
    fn evicts_least_recently_used_within_bounds() {
        let s = store(2, 1 << 20, vec![]);
        let none = HeaderMap::new();
        s.insert(
            "a".into(),
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"1"),
        );
        s.insert(
            "b".into(),
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"2"),
        );
        assert!(
            s.stale(b"a", &none).is_some(),
            "touch a: b is now the oldest"
        );
        s.insert(
            "c".into(),
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"3"),
        );
        assert!(s.stale(b"b", &none).is_none());
        assert!(s.stale(b"a", &none).is_some() && s.stale(b"c", &none).is_some());
        assert_eq!(s.usage().0, 2);
    }

    #[test]
    fn byte_bound_is_never_exceeded() {
        let s = store(1000, 1 << 20, vec![]);
        let none = HeaderMap::new();
        for i in 0..20 {
            s.insert(
                format!("k{i}").into_bytes(),
                &none,
                HeaderMap::new(),
                Bytes::from(vec![0u8; 200_000]),
            );
            assert!(s.usage().1 <= 1 << 20, "after {i}: {:?}", s.usage());
        }
        assert!(s.usage().0 <= 5);
    }

    #[test]
    fn vary_headers_must_match() {
        let s = store(10, 1 << 20, vec![]);
        let gzip = headers(&[("accept-encoding", "gzip")]);
        s.insert(
            "k".into(),
            &gzip,
            headers(&[("vary", "accept-encoding")]),
            Bytes::from_static(b"z"),
        );
        assert!(s.stale(b"k", &gzip).is_some());
        assert!(s.stale(b"k", &HeaderMap::new()).is_none());
    }

    #[test]
    fn a_filled_copy_matches_vary_through_digests() {
        let a = store(10, 1 << 20, vec![]);
        let acme = headers(&[("x-tenant", "acme")]);
        a.insert(
            "k".into(),
            &acme,
            headers(&[("vary", "x-tenant")]),
            Bytes::from_static(b"z"),
        );
        let (stored, _) = a.stale(b"k", &acme).unwrap();
        let vary = stored.vary_digests(b"k");
        assert_eq!(vary.len(), 1);
        let b = store(10, 1 << 20, vec![]);
        b.fill(
            b"k".to_vec(),
            crate::shared::Envelope {
                status: StatusCode::OK,
                stored_at: std::time::SystemTime::now(),
                vary,
                headers: stored.headers.clone(),
                body: stored.body.clone(),
            },
            Duration::ZERO,
        );
        assert!(b.stale(b"k", &acme).is_some());
        assert!(b.stale(b"k", &headers(&[("x-tenant", "evil")])).is_none());
        assert!(b.stale(b"k", &HeaderMap::new()).is_none());
        assert!(b
            .stale(
                b"k",
                &headers(&[("x-tenant", "acme"), ("x-tenant", "acme")])
            )
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_max_age() {
        let s = store(10, 1 << 20, vec![]);
        let none = HeaderMap::new();
        s.insert(
            "k".into(),
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"v"),
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(s.stale(b"k", &none).unwrap().1, Duration::from_secs(59));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.stale(b"k", &none).is_none());
        assert_eq!(s.usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_for_ttl_or_the_upstreams_shorter_max_age() {
        let s = ResponseStore::new(StorePolicy {
            ttl: Some(Duration::from_secs(10)),
            stale_max_age: None,
            max_entries: 10,
            max_bytes: 1 << 20,
            key_headers: vec![],
        });
        let none = HeaderMap::new();
        s.insert(
            b"ttl".to_vec(),
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"a"),
        );
        s.insert(
            b"short".to_vec(),
            &none,
            headers(&[("cache-control", "public, max-age=2")]),
            Bytes::from_static(b"b"),
        );
        s.insert(
            b"shared".to_vec(),
            &none,
            headers(&[("cache-control", "max-age=1, s-maxage=5")]),
            Bytes::from_static(b"c"),
        );
        s.insert(
            b"nocache".to_vec(),
            &none,
            headers(&[("cache-control", "no-cache")]),
            Bytes::from_static(b"d"),
        );
        assert!(s.fresh(b"nocache", &none).is_none());
        assert_eq!(
            s.usage().0,
            3,
            "no-cache with no stale use is not kept at all"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(s.fresh(b"ttl", &none).is_some());
        assert!(s.fresh(b"short", &none).is_none(), "max-age 2 < ttl 10");
        assert!(
            s.fresh(b"shared", &none).is_some(),
            "s-maxage 5 wins over max-age 1"
        );
        assert!(
            s.stale(b"ttl", &none).is_none(),
            "no stale_if_error on this route"
        );
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(s.fresh(b"ttl", &none).is_none());
    }
}
