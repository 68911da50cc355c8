//! The elements of a list header's value (`Connection`, `TE`; RFC 9110 §5.6.1).

use http::HeaderValue;

/// The comma-separated elements of `value`, trimmed, as bytes: a value with a byte that is
/// not visible ASCII still holds the elements beside it. Read as a `str`, the whole value
/// failed, and a header `Connection` named was forwarded (an attack review, 2026-12-01).
pub fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
}
