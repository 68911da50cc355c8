//! The resilience policies, each a small piece of state or arithmetic with no knowledge of
//! sockets: backoff delays, the retry budget and the retry rules. The request path in
//! `proxy::attempts` calls them in the order things happen.

pub mod backoff;
pub mod budget;
pub mod retry;
