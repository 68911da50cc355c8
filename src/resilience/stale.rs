//! The stale-if-error store: the last good `200` to a `GET`, kept per route, path, query and
//! key headers, served when the upstream fails.
//!
//! Privacy comes first, because serving one user's data to another is the worst failure
//! this product can have:
//! - a request carrying `Authorization` or `Cookie` is neither stored nor served unless that
//!   header is one of `key_headers` (and then its value is part of the key);
//! - a response marked `Cache-Control: no-store` or `private`, one that sets a cookie, or one
//!   with `Vary: *` is never stored;
//! - headers a response `Vary`s on are remembered with their request values and must match
//!   on lookup;
//! - the key holds the client's `Host` (a backend may serve several tenants by host) and
//!   the exact bytes of each key header, so two different values never share a key.
//!
//! Bounds: `max_entries` and `max_bytes` (least recently used goes first); a response over
//! 1 MiB is never kept. The copy is taken while the body streams to the client (see
//! `proxy::body`), and only a body that completed is stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use tokio::time::Instant;

use crate::config::StalePolicy;

/// A store key: length-prefixed fields, so no two different requests can collide.
pub type Key = Vec<u8>;

fn push_field(key: &mut Key, field: &[u8]) {
    key.extend_from_slice(&(field.len() as u32).to_le_bytes());
    key.extend_from_slice(field);
}

/// The largest response body ever stored.
pub const MAX_STORED_BODY: usize = 1 << 20;

/// A stored response.
#[derive(Debug)]
pub struct Stored {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    /// Request headers the response varies on, with the values they had.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl Stored {
    fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 128) as u64
    }

    fn varies_with(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }
}

/// One route's store.
#[derive(Debug)]
pub struct StaleStore {
    policy: StalePolicy,
    inner: Mutex<Lru>,
    /// Bytes held by copies still streaming; bounded by `max_bytes` too, so a burst of
    /// concurrent large responses cannot hold more memory than the store may.
    pending: AtomicU64,
}

#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<Key, (Arc<Stored>, u64)>,
    /// Recency tick to key; the smallest tick is the least recently used.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    fn touch(&mut self, key: &[u8]) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, old)) = self.entries.get_mut(key) {
            self.order.remove(old);
            *old = tick;
            self.order.insert(tick, key.to_vec());
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some((stored, tick)) = self.entries.remove(key) {
            self.order.remove(&tick);
            self.bytes -= stored.size();
        }
    }
}

impl StaleStore {
    /// An empty store.
    pub fn new(policy: StalePolicy) -> StaleStore {
        StaleStore {
            policy,
            inner: Mutex::new(Lru::default()),
            pending: AtomicU64::new(0),
        }
    }

    /// The policy this store follows.
    pub fn policy(&self) -> &StalePolicy {
        &self.policy
    }

    /// The key for a request, or `None` when privacy rules forbid storing or serving it.
    pub fn key(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Key> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        for private in [header::AUTHORIZATION, header::COOKIE] {
            if headers.contains_key(&private) && !self.policy.key_headers.contains(&private) {
                return None;
            }
        }
        let host = headers
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()))
            .unwrap_or_default();
        let mut key = Vec::with_capacity(128);
        push_field(&mut key, host);
        push_field(
            &mut key,
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
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
        if status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
            return false;
        }
        let forbidden = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .any(|d| d == "no-store" || d == "private" || d.starts_with("private="))
            })
        });
        let vary_all = headers.get_all(header::VARY).iter().any(|v| {
            v.to_str()
                .map_or(true, |v| v.split(',').any(|t| t.trim() == "*"))
        });
        let too_big = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n > MAX_STORED_BODY);
        !(forbidden || vary_all || too_big)
    }

    /// Stores a complete response for `key`.
    pub fn insert(&self, key: Key, request: &HeaderMap, headers: HeaderMap, body: Bytes) {
        if body.len() > MAX_STORED_BODY {
            return;
        }
        let vary = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .map(|name| {
                let value = request.get(&name).cloned();
                (name, value)
            })
            .collect();
        let stored = Arc::new(Stored {
            headers,
            body,
            stored_at: Instant::now(),
            vary,
        });
        let size = stored.size();
        let Ok(mut lru) = self.inner.lock() else {
            return;
        };
        lru.remove(&key);
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key.clone());
        lru.entries.insert(key, (stored, tick));
        lru.bytes += size;
        while lru.entries.len() > self.policy.max_entries || lru.bytes > self.policy.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some((s, _)) = lru.entries.remove(&oldest) {
                lru.bytes -= s.size();
            }
        }
    }

    /// A stored response for `key` no older than `max_age`, with its age.
    pub fn get(&self, key: &[u8], request: &HeaderMap) -> Option<(Arc<Stored>, Duration)> {
        let mut lru = self.inner.lock().ok()?;
        let stored = Arc::clone(&lru.entries.get(key)?.0);
        let age = stored.stored_at.elapsed();
        if age > self.policy.max_age {
            lru.remove(key);
            return None;
        }
        if !stored.varies_with(request) {
            return None;
        }
        lru.touch(key);
        Some((stored, age))
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
        self.inner
            .lock()
            .map_or((0, 0), |l| (l.entries.len(), l.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize, max_bytes: u64, key_headers: Vec<HeaderName>) -> StaleStore {
        StaleStore::new(StalePolicy {
            max_age: Duration::from_secs(60),
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
        let uri: Uri = "/me?x=1".parse().unwrap();
        let plain = store(10, 1 << 20, vec![]);
        assert!(plain.key(&Method::GET, &uri, &HeaderMap::new()).is_some());
        let a_host = plain.key(&Method::GET, &uri, &headers(&[("host", "a.example")]));
        let b_host = plain.key(&Method::GET, &uri, &headers(&[("host", "b.example")]));
        assert_ne!(a_host, b_host, "tenants by host never share a copy");
        assert!(plain
            .key(
                &Method::GET,
                &uri,
                &headers(&[("authorization", "Bearer a")])
            )
            .is_none());
        assert!(plain
            .key(&Method::GET, &uri, &headers(&[("cookie", "s=1")]))
            .is_none());
        assert!(plain.key(&Method::POST, &uri, &HeaderMap::new()).is_none());

        let keyed = store(10, 1 << 20, vec![header::AUTHORIZATION]);
        let a = keyed.key(
            &Method::GET,
            &uri,
            &headers(&[("authorization", "Bearer a")]),
        );
        let b = keyed.key(
            &Method::GET,
            &uri,
            &headers(&[("authorization", "Bearer b")]),
        );
        let none = keyed.key(&Method::GET, &uri, &HeaderMap::new());
        assert!(a.is_some() && b.is_some() && none.is_some());
        assert_ne!(a, b);
        assert_ne!(a, none);
    }

    #[test]
    fn unstorable_responses() {
        assert!(StaleStore::storable(StatusCode::OK, &HeaderMap::new()));
        assert!(!StaleStore::storable(
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
                !StaleStore::storable(StatusCode::OK, &headers(&[h])),
                "{h:?}"
            );
        }
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
        assert!(s.get(b"a", &none).is_some(), "touch a: b is now the oldest");
        s.insert(
            "c".into(),
            &none,
            HeaderMap::new(),
            Bytes::from_static(b"3"),
        );
        assert!(s.get(b"b", &none).is_none());
        assert!(s.get(b"a", &none).is_some() && s.get(b"c", &none).is_some());
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
        assert!(s.get(b"k", &gzip).is_some());
        assert!(s.get(b"k", &HeaderMap::new()).is_none());
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
        assert_eq!(s.get(b"k", &none).unwrap().1, Duration::from_secs(59));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.get(b"k", &none).is_none());
        assert_eq!(s.usage(), (0, 0));
    }
}
