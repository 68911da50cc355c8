//! What a shared copy remembers of the request headers its response `Vary`s on: a digest of
//! their values, never the values.
//!
//! The local store matches a copy's `Vary` headers against every request, so a copy must
//! carry them; but `Vary: Authorization` (with `key_headers: [authorization]`), `Cookie` or
//! an API key header would then put a user's credential into Redis as it is, readable by
//! anyone who can read the Redis. So the envelope carries, per header named by `Vary`, a
//! SHA-256 over all its request values (count first, each length-prefixed, in order: two
//! different lists never share an input), and a replica that fills a copy from Redis
//! compares the digest of the request's values with it. Equal digests mean equal values,
//! so a shared copy is served to exactly the requests a local one would be.
//!
//! The digest also covers the copy's local key (host, path, query, key headers): the same
//! token on two paths gives two unrelated digests, so a reader of Redis cannot even tell
//! which copies belong to one user. It is not a secret keyed hash: a value with little
//! entropy (`x-tenant: acme`) can be guessed by trying candidates, as for the hashed keys
//! (see `keys`).

use http::header::{HeaderName, HeaderValue};
use ring::digest::{Context, SHA256};

/// SHA-256 of one `Vary` header's request values, bound to the copy's local key.
pub type VaryDigest = [u8; 32];

/// Tells this hash's input from any other SHA-256 input in the project.
const DOMAIN: &[u8] = b"outrigger vary v1\0";

/// The digest of `values` (every value of `name` in the request, in order) for the copy
/// stored under the local `key`.
pub fn digest<'a>(
    key: &[u8],
    name: &HeaderName,
    values: impl Iterator<Item = &'a HeaderValue>,
) -> VaryDigest {
    let mut ctx = Context::new(&SHA256);
    ctx.update(DOMAIN);
    let field = |ctx: &mut Context, bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(&mut ctx, key);
    field(&mut ctx, name.as_str().as_bytes());
    let values: Vec<&HeaderValue> = values.collect();
    ctx.update(&(values.len() as u64).to_be_bytes());
    for value in values {
        field(&mut ctx, value.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(key: &[u8], values: &[&'static str]) -> VaryDigest {
        let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
        digest(key, &HeaderName::from_static("x-tenant"), values.iter())
    }

    #[test]
    fn equal_values_only() {
        assert_eq!(d(b"k", &["acme"]), d(b"k", &["acme"]));
        assert_ne!(d(b"k", &["acme"]), d(b"k", &["evil"]));
        assert_ne!(d(b"k", &["acme"]), d(b"k", &[]), "absent is not a value");
        assert_ne!(d(b"k", &[""]), d(b"k", &[]), "empty is not absent");
        assert_ne!(d(b"k", &["a", "b"]), d(b"k", &["b", "a"]), "order counts");
        assert_ne!(d(b"k", &["ab"]), d(b"k", &["a", "b"]), "lines stay apart");
        assert_ne!(d(b"k1", &["acme"]), d(b"k2", &["acme"]), "bound to the key");
    }
}
