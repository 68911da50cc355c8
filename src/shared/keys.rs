//! Redis key names. Every key is `NAMESPACE:KIND:HASH`, the hash a SHA-256 over the route
//! name and the local key: client addresses, header values (an API key used as a
//! rate-limit key, an `Authorization` in `key_headers`) and paths never reach Redis as
//! they are. Route names are part of the hash, so two routes never share a bucket or a copy.

use ring::digest::{digest, SHA256};

/// The kinds of key.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A rate-limit bucket (GCRA state).
    Rate,
    /// A stored response (envelope).
    Response,
}

/// `namespace:kind:sha256(route NUL key)` in hex.
pub fn key(namespace: &str, kind: Kind, route: &str, local: &[u8]) -> String {
    let mut input = Vec::with_capacity(route.len() + 1 + local.len());
    input.extend_from_slice(route.as_bytes());
    input.push(0);
    input.extend_from_slice(local);
    let hash = digest(&SHA256, &input);
    let kind = match kind {
        Kind::Rate => "rl",
        Kind::Response => "rs",
    };
    let mut out = String::with_capacity(namespace.len() + 4 + 64);
    out.push_str(namespace);
    out.push(':');
    out.push_str(kind);
    out.push(':');
    for half in hash.as_ref().chunks_exact(16) {
        let half = u128::from_be_bytes(half.try_into().expect("a SHA-256 digest is 32 bytes"));
        let digits = crate::hex::u128_digits(half);
        out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    }
    out
}

/// The sorted set where replicas announce themselves.
pub fn replicas(namespace: &str) -> String {
    format!("{namespace}:replicas")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hide_what_they_hash() {
        let k = key("ns", Kind::Rate, "quotes", b"203.0.113.9");
        assert!(k.starts_with("ns:rl:") && k.len() == 6 + 64, "{k}");
        assert!(!k.contains("203.0.113.9"));
        assert_ne!(k, key("ns", Kind::Rate, "other", b"203.0.113.9"));
        assert_ne!(
            key("ns", Kind::Rate, "a", b"bc"),
            key("ns", Kind::Rate, "ab", b"c"),
            "the separator keeps route and key apart"
        );
    }

    #[test]
    fn the_digest_is_written_a_byte_at_a_time_in_lowercase_hex() {
        // Replicas of different builds share these keys: the spelling must never change.
        let k = key("ns", Kind::Response, "r", b"k");
        let hash = digest(&SHA256, b"r\0k");
        let expected: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(k, format!("ns:rs:{expected}"));
    }
}
