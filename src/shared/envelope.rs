//! How a stored response travels through Redis: a small versioned binary envelope.
//!
//! ```text
//! "ORS" 0x02                       magic and version
//! u16 status                       always 200 today; kept so the format need not change
//! u64 stored_at                    Unix milliseconds of the replica that stored it
//! u16 n, n × (name, 32 bytes)      each request header the response varies on, with the
//!                                  SHA-256 of its values (`vary::digest`), never the values
//! u16 n, n × (name, value)         the end-to-end response headers
//! u32 len, body
//! ```
//! Names carry a u16 length and values a u32 length, all big-endian. A reader refuses any
//! other magic or version (a replica of an older build then simply misses), truncated
//! input and anything over [`MAX_ENVELOPE`]: nothing over 1 MiB is shared.
//!
//! The `Vary` headers travel with the copy because the local store matches them on every
//! lookup: a copy filled from Redis is held to exactly the rule a local copy is. Their
//! request values travel only as digests: `Vary: Authorization` or `Cookie` must not put a
//! credential into Redis (see `vary`). Version 1 carried the raw values; this build refuses
//! it, so a copy an older build wrote is a miss.
//!
//! Bodies are not compressed: no compressor is in the dependency tree today, the
//! stale-copy bodies this serves are mostly small JSON, and a body the upstream already
//! compressed (`content-encoding`) would gain nothing. The version byte leaves room to add
//! it where measurements say it pays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::vary::VaryDigest;

/// The largest envelope written or read.
pub const MAX_ENVELOPE: usize = 1 << 20;

const MAGIC: &[u8; 4] = b"ORS\x02";

/// A response as stored in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub status: StatusCode,
    /// When it was stored, on the storing replica's clock.
    pub stored_at: SystemTime,
    /// Each request header the response varies on, with the digest of its values.
    pub vary: Vec<(HeaderName, VaryDigest)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Envelope {
    /// The bytes to store; `None` when they would be over [`MAX_ENVELOPE`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.body.len() + 512);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        let millis = self
            .stored_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out.extend_from_slice(&millis.to_be_bytes());
        out.extend_from_slice(&u16::try_from(self.vary.len()).ok()?.to_be_bytes());
        for (name, digest) in &self.vary {
            push_name(&mut out, name)?;
            out.extend_from_slice(digest);
        }
        out.extend_from_slice(&u16::try_from(self.headers.len()).ok()?.to_be_bytes());
        for (name, value) in &self.headers {
            push_name(&mut out, name)?;
            push_bytes(&mut out, value.as_bytes())?;
        }
        push_bytes(&mut out, &self.body)?;
        (out.len() <= MAX_ENVELOPE).then_some(out)
    }

    /// Reads an envelope; `None` for anything this build did not write.
    pub fn decode(bytes: &[u8]) -> Option<Envelope> {
        if bytes.len() > MAX_ENVELOPE {
            return None;
        }
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return None;
        }
        let status = StatusCode::from_u16(r.u16()?).ok()?;
        let stored_at = UNIX_EPOCH + Duration::from_millis(r.u64()?);
        let mut vary = Vec::new();
        for _ in 0..r.u16()? {
            let name = r.name()?;
            vary.push((name, r.take(32)?.try_into().ok()?));
        }
        let mut headers = HeaderMap::new();
        for _ in 0..r.u16()? {
            let name = r.name()?;
            headers.append(name, HeaderValue::from_bytes(r.bytes()?).ok()?);
        }
        let body = Bytes::copy_from_slice(r.bytes()?);
        r.0.is_empty().then_some(Envelope {
            status,
            stored_at,
            vary,
            headers,
            body,
        })
    }
}

fn push_name(out: &mut Vec<u8>, name: &HeaderName) -> Option<()> {
    let bytes = name.as_str().as_bytes();
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn name(&mut self) -> Option<HeaderName> {
        let len = usize::from(self.u16()?);
        HeaderName::from_bytes(self.take(len)?).ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: usize) -> Envelope {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        Envelope {
            status: StatusCode::OK,
            stored_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            vary: vec![(HeaderName::from_static("accept-encoding"), [9u8; 32])],
            headers,
            body: Bytes::from(vec![7u8; body]),
        }
    }

    #[test]
    fn round_trip() {
        let e = sample(1000);
        assert_eq!(Envelope::decode(&e.encode().unwrap()), Some(e));
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let bytes = sample(10).encode().unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(Envelope::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[3] = 1;
        assert_eq!(
            Envelope::decode(&other),
            None,
            "version 1 (raw Vary values)"
        );
        other[3] = 3;
        assert_eq!(Envelope::decode(&other), None, "another version");
        let mut trailing = bytes;
        trailing.push(0);
        assert_eq!(Envelope::decode(&trailing), None);
    }

    #[test]
    fn nothing_over_one_mebibyte() {
        assert!(sample(MAX_ENVELOPE).encode().is_none());
        assert!(sample(MAX_ENVELOPE - 200).encode().is_some());
    }
}
