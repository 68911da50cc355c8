//! Serving: the accept loop shared by the proxy and admin listeners, telling connections
//! to leave (drain), HTTP/1.0 keep-alive, the lifecycle state, the
//! signal handlers, and the per-connection send and idle timers (watchdog).

pub mod accept;
pub mod conn_io;
pub mod drain;
pub mod keep_alive;
pub mod lifecycle;
pub mod per_request;
pub mod signals;
pub mod watchdog;
pub mod woken;
