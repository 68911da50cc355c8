//! Serving: the accept loop shared by the proxy and admin listeners, telling connections
//! to leave (drain), HTTP/1.0 keep-alive, the lifecycle state, and the
//! signal handlers.

pub mod accept;
pub mod drain;
pub mod keep_alive;
pub mod lifecycle;
pub mod signals;
