//! How many header fields one message may carry, sized from
//! `limits.max_request_header_bytes`, for both directions.
//!
//! hyper's HTTP/1 parser stops at 100 header fields unless told otherwise, whatever the
//! byte limit: 101 small headers got 431 over HTTP/1.1 although they passed over HTTP/2
//! (which limits bytes only), and an upstream answer with 150 headers became 502
//! `bad-response`. So the count follows the byte limit: HTTP/2 charges each field 32
//! bytes plus its name and value against that limit (RFC 9113 §6.5.2), so `bytes / 32`
//! is more fields than HTTP/2 could ever admit, and HTTP/1 gets that count too.
//!
//! Why a ceiling: above 100 fields hyper allocates room for the whole cap for every head
//! it parses (64 bytes a field), so the cap is paid on the hot path. 1024 fields (64 KiB
//! of scratch, the default limit's count) is far beyond any real client or upstream.

/// hyper's own cap; at or below it hyper parses without allocating.
const HYPER_DEFAULT: usize = 100;
/// The most header fields a message may carry, whatever the byte limit.
const CEILING: usize = 1024;
/// The least a header field is charged against the byte limit (HTTP/2's overhead).
const FIELD_BYTES: usize = 32;

/// The header field count for a byte limit.
pub fn max_headers(max_header_bytes: usize) -> usize {
    (max_header_bytes / FIELD_BYTES).clamp(HYPER_DEFAULT, CEILING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_the_byte_limit_within_bounds() {
        assert_eq!(max_headers(8 << 10), 256);
        assert_eq!(max_headers(16 << 10), 512);
        assert_eq!(max_headers(64 << 10), 1024);
        assert_eq!(max_headers(16 << 20), CEILING);
        assert_eq!(max_headers(1), HYPER_DEFAULT);
    }
}
