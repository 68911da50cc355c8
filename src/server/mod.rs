//! Serving: the accept loop shared by the proxy and admin listeners, the lifecycle state,
//! and the signal handlers.

pub mod accept;
pub mod lifecycle;
pub mod signals;
