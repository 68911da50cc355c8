//! The shared vocabulary: words every layer speaks and that belong to none of them, kept
//! below all of them so that no layer imports another to name them.
//!
//! - [`reason`]: `Failure` and `Reason`, the REASON of SPEC §3 (policies in `resilience`
//!   decide on them; the request path produces them);
//! - [`json`]: escaping for the JSON written by hand;
//! - [`time`]: RFC 3339 timestamps.
//!
//! Nothing here imports anything of the crate.

pub mod json;
pub mod reason;
pub mod time;
