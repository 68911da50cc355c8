//! RFC 3339 timestamps: moved to [`crate::vocab::time`]; this path stays for code that
//! still names it.

pub use crate::vocab::time::rfc3339;
