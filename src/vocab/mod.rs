//! The shared vocabulary: words every layer speaks and that belong to none of them, kept
//! below all of them so that no layer imports another to name them.
//!
//! - [`reason`]: `Failure` and `Reason`, the REASON of SPEC §3 (policies in `resilience`
//!   decide on them; the request path produces them);
//! - [`json`]: escaping for the JSON written by hand;
//! - [`list`]: the elements of a list header's value;
//! - [`time`]: RFC 3339 timestamps.
//!
//! Nothing here imports anything of the crate.

pub mod json;
pub mod list;
pub mod reason;
pub mod time;
