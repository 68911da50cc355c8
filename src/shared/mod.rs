//! State shared by the replicas of one service through Redis (SPEC §7.4): a rate limit
//! that holds for the fleet together, and stale/cached copies that a replica which never
//! saw a response (or was just restarted) can serve.
//!
//! ```text
//!  request ──▶ rate_limit::RateLimiter::admit ──▶ limiter (reserved token? else one
//!                                                   refill per key via gcra, else the
//!                                                   local share at rate / replicas)
//!  local miss ─▶ responses::fill_* ──▶ GET within shared.timeout ──▶ envelope ──▶ store
//!  stored copy ─▶ responses::SharedResponses::put ──▶ writer (bounded queue) ──▶ SET PX
//!  every 1 s ──▶ replicas (announce, count, connect, probe while down)
//!                  all Redis traffic through link (deadline, health, metrics)
//! ```
//!
//! Nothing here runs for a route whose policies are `scope: local` (the default): the
//! only cost there is a `None` checked by the limiter and the store.
//!
//! One [`Shared`] exists per `shared:` block in force; a reload that keeps the block keeps
//! it (and its connection), a changed block starts a new one and the old one's tasks end
//! when the last request using it is done.

pub mod envelope;
pub mod gcra;
pub mod health;
pub mod keys;
pub mod limiter;
pub mod link;
pub mod metrics;
pub mod replicas;
pub mod responses;
pub mod vary;
pub mod writer;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub use envelope::Envelope;
pub use limiter::SharedLimit;
pub use metrics::SharedMetrics;
pub use responses::{fill_fresh, fill_stale, SharedResponses};
pub use vary::VaryDigest;

use crate::config::shared::{Scope, SharedConfig};
use crate::config::Route;
use crate::resilience::rate_limit::RateLimiter;
use crate::resilience::store::ResponseStore;

/// The link to Redis and what the replica shares through it.
pub struct Shared {
    config: SharedConfig,
    link: link::Link,
    /// The GCRA reservation script (sent by hash, loaded once per Redis).
    gcra: redis::Script,
    /// Replicas that announced themselves in the last few seconds, this one included.
    replicas: AtomicU32,
    /// This replica's name in the announcement set: random, so restarts count afresh.
    id: String,
    writes: writer::Queue,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("up", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Starts the link (connected in the background) and its tasks. Needs a tokio runtime.
    fn start(config: &SharedConfig, metrics: SharedMetrics) -> Option<Arc<Shared>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let link = match link::Link::new(config, metrics) {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(redis = %config.redis, error = %e, "shared store not usable");
                return None;
            }
        };
        if config.namespace == crate::config::shared::DEFAULT_NAMESPACE {
            // SPEC's default; two services that keep it on one Redis share keys.
            tracing::warn!(
                namespace = %config.namespace,
                "shared.namespace is the default: every service using this Redis with it \
                 shares rate-limit buckets and stored copies with this one (same route \
                 names and paths); give each service its own namespace"
            );
        }
        let (writes, queue) = writer::channel();
        let shared = Arc::new(Shared {
            config: config.clone(),
            link,
            gcra: redis::Script::new(gcra::SCRIPT),
            replicas: AtomicU32::new(1),
            id: format!("{:016x}", fastrand::u64(..)),
            writes,
        });
        runtime.spawn(writer::run(Arc::downgrade(&shared), queue));
        runtime.spawn(replicas::run(Arc::downgrade(&shared)));
        Some(shared)
    }

    /// The key prefix.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// The replica count last seen (at least 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// Whether Redis is in use now.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

/// The shared store for the `shared:` block in force: `previous` when the block did not
/// change, a new one when it did, `None` without one.
pub fn for_config(
    config: Option<&SharedConfig>,
    previous: Option<&Arc<Shared>>,
    metrics: &SharedMetrics,
) -> Option<Arc<Shared>> {
    let config = config?;
    match previous {
        Some(p) if p.config == *config => Some(Arc::clone(p)),
        _ => Shared::start(config, metrics.clone()),
    }
}

/// The shared limiter of a route whose `rate_limit.scope` is `shared`.
pub fn limit_for(shared: Option<&Arc<Shared>>, route: &Route) -> Option<Arc<SharedLimit>> {
    let policy = route.policy.rate_limit.as_ref()?;
    if policy.scope != Scope::Shared {
        return None;
    }
    Some(Arc::new(SharedLimit::new(
        Arc::clone(shared?),
        &route.name,
        policy,
    )))
}

/// Whether a reload may keep a route's limiter (its policy, scope included, unchanged):
/// not when it is shared through a store that is no longer the one in force.
pub fn kept(old: &RateLimiter, shared: Option<&Arc<Shared>>) -> bool {
    match (old.shared(), shared) {
        (None, _) => true,
        (Some(l), Some(s)) => Arc::ptr_eq(l.shared(), s),
        (Some(_), None) => false,
    }
}

/// Whether a reload may keep a route's store (its policy unchanged): only when it would
/// share the same parts through the same Redis store.
pub fn store_kept(old: &ResponseStore, shared: Option<&Arc<Shared>>, route: &Route) -> bool {
    let new = SharedResponses::for_route(shared, route);
    match (old.shared(), new) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(&b),
        _ => false,
    }
}
