//! The resilience policies, each a small piece of state or arithmetic with no knowledge of
//! sockets: backoff delays, the retry budget and rules, the circuit breaker, fallbacks and
//! the stale store. The request path in `proxy` calls them in the order things happen.

pub mod backoff;
pub mod budget;
pub mod circuit;
pub mod coalesce;
pub mod concurrency;
pub mod fallback;
pub mod fault;
pub mod hedge;
pub mod lru;
pub mod rate_limit;
pub mod retry;
pub mod slots;
pub mod store;
pub mod window;
pub mod yield_budget;
