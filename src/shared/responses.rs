//! Stale and cached copies shared through Redis (`scope: shared` on `stale_if_error` or
//! `cache`).
//!
//! What is shared is exactly what the local store keeps: the store's `insert` hands every
//! copy it accepted (after the privacy rules of SPEC §2, unchanged) to
//! [`SharedResponses::put`], and nothing else is ever written. A copy lives in Redis as
//! long as it is of use: `stale_if_error.max_age` when stale copies are shared, else the
//! copy's fresh time.
//!
//! Redis is read only on a local miss (a fresh miss when the cache is shared, a stale
//! miss when stale copies are), within `shared.timeout`, and counted as a miss when it is
//! slower (as Souin does with its 10 ms Redis timeout). A copy found fills the local
//! store, so the next request for it does not ask Redis again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::time::Instant;

use super::envelope::Envelope;
use super::keys::{self, Kind};
use super::writer::{self, Write};
use super::Shared;
use crate::config::shared::Scope;
use crate::config::Route;
use crate::resilience::store::{ResponseStore, Stored};

/// A route store's shared side.
#[derive(Debug)]
pub struct SharedResponses {
    shared: Arc<Shared>,
    route: Arc<str>,
    /// Fresh copies are shared (`cache.scope: shared`).
    fresh: bool,
    /// `stale_if_error.max_age`, when stale copies are shared.
    stale: Option<Duration>,
}

impl SharedResponses {
    /// The shared side of `route`'s store, when one of its parts is `scope: shared`.
    pub fn for_route(shared: Option<&Arc<Shared>>, route: &Route) -> Option<SharedResponses> {
        let p = &route.policy;
        let fresh = p.cache.as_ref().is_some_and(|c| c.scope == Scope::Shared);
        let stale = p
            .stale_if_error
            .as_ref()
            .filter(|s| s.scope == Scope::Shared)
            .map(|s| s.max_age);
        if !fresh && stale.is_none() {
            return None;
        }
        Some(SharedResponses {
            shared: Arc::clone(shared?),
            route: Arc::from(route.name.as_str()),
            fresh,
            stale,
        })
    }

    /// Whether two sides share the same parts through the same store.
    pub fn same_as(&self, other: &SharedResponses) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
            && self.fresh == other.fresh
            && self.stale == other.stale
            && self.route == other.route
    }

    /// Queues a copy the local store accepted; never waits.
    pub fn put(&self, key: &[u8], stored: &Arc<Stored>) {
        let fresh = if self.fresh {
            stored.fresh_for()
        } else {
            Duration::ZERO
        };
        let ttl = fresh.max(self.stale.unwrap_or_default());
        if ttl.is_zero() || !self.shared.is_up() {
            return;
        }
        writer::queue(
            &self.shared,
            Write {
                route: Arc::clone(&self.route),
                key: key.to_vec(),
                stored: Arc::clone(stored),
                ttl,
            },
        );
    }

    /// The copy another replica stored, with its age; `None` on a miss, an error, or
    /// after `shared.timeout`.
    async fn fetch(&self, key: &[u8]) -> Option<(Envelope, Duration)> {
        if !self.shared.is_up() {
            return None;
        }
        let redis_key = keys::key(self.shared.namespace(), Kind::Response, &self.route, key);
        let deadline = Instant::now() + self.shared.link.timeout();
        let bytes: Option<Vec<u8>> = self
            .shared
            .link
            .run("get", deadline, |mut conn| async move {
                redis::cmd("GET")
                    .arg(redis_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let envelope = Envelope::decode(&bytes?)?;
        let age = SystemTime::now()
            .duration_since(envelope.stored_at)
            .unwrap_or_default();
        Some((envelope, age))
    }
}

/// On a fresh-cache miss: looks in Redis when the route shares fresh copies and fills the
/// local store; `true` when a copy was filled (ask the local store again).
pub async fn fill_fresh(store: Option<&Arc<ResponseStore>>, key: Option<&[u8]>) -> bool {
    let (Some(store), Some(key)) = (store, key) else {
        return false;
    };
    match store.shared() {
        Some(shared) if shared.fresh => fill(store, shared, key).await,
        _ => false,
    }
}

/// Before serving a stale copy: when the route shares stale copies and this replica has
/// none for the request, looks in Redis and fills the local store.
pub async fn fill_stale(
    store: Option<&Arc<ResponseStore>>,
    key: Option<&[u8]>,
    request: &HeaderMap,
) -> bool {
    let (Some(store), Some(key)) = (store, key) else {
        return false;
    };
    match store.shared() {
        Some(shared) if shared.stale.is_some() && store.stale(key, request).is_none() => {
            fill(store, shared, key).await
        }
        _ => false,
    }
}

async fn fill(store: &ResponseStore, shared: &SharedResponses, key: &[u8]) -> bool {
    let Some((envelope, age)) = shared.fetch(key).await else {
        return false;
    };
    store.fill(key.to_vec(), envelope, age);
    true
}
