//! A header map written out into one buffer, to rebuild the map from later.
//!
//! Every attempt sends its own `HeaderMap` (the client takes the request by value). The
//! first attempt sends the head's own map; what a later attempt (a retry, a hedge) or a
//! reader after the first attempt needs is rebuilt from this copy. Writing the copy is one
//! allocation and a few byte copies; cloning the map was an allocation for each of its
//! tables and, for each value, a reference count (or a new shared block) to take and,
//! when the copy went, to give back: about three times the instructions per request, for
//! a map only a failed attempt ever reads again (`docs/benchmarks.md`).
//!
//! Each field is its name's length and its value's length (4 bytes each, little-endian;
//! the value's top bit is HPACK's never-indexed flag, [`HeaderValue::is_sensitive`]), then
//! the name and the value. Fields keep the map's order, so a rebuilt map iterates as the
//! original did, repeated names included.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

const SENSITIVE: u32 = 1 << 31;

/// A header map's fields, in order, in one buffer.
#[derive(Debug, Default)]
pub struct HeaderCopy {
    bytes: Vec<u8>,
    /// Fields, for the rebuilt map's capacity.
    fields: usize,
}

impl HeaderCopy {
    /// Writes out `map`.
    pub fn of(map: &HeaderMap) -> HeaderCopy {
        // Room for a usual forwarded head; a larger one grows the buffer once or twice.
        let mut bytes = Vec::with_capacity(512);
        for (name, value) in map {
            let (name, value_bytes) = (name.as_str().as_bytes(), value.as_bytes());
            // Both lengths fit: hyper and h2 cap a whole head far below 2 GiB.
            let mut value_len = value_bytes.len() as u32;
            if value.is_sensitive() {
                value_len |= SENSITIVE;
            }
            let lens = (name.len() as u64) | (u64::from(value_len) << 32);
            bytes.extend_from_slice(&lens.to_le_bytes());
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value_bytes);
        }
        HeaderCopy {
            bytes,
            fields: map.len(),
        }
    }

    /// The map again, field for field.
    pub fn rebuild(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields);
        let mut rest = self.bytes.as_slice();
        while let Some((lens, tail)) = rest.split_first_chunk::<8>() {
            let lens = u64::from_le_bytes(*lens);
            let name_len = (lens & u64::from(u32::MAX)) as usize;
            let value_len = (lens >> 32) as u32;
            let sensitive = value_len & SENSITIVE != 0;
            let value_len = (value_len & !SENSITIVE) as usize;
            let (Some(name), Some(value)) = (
                tail.get(..name_len),
                tail.get(name_len..name_len + value_len),
            ) else {
                debug_assert!(false, "a header copy ends inside a field");
                break;
            };
            rest = &tail[name_len + value_len..];
            // Both were a valid name and value when written, so both parse again: the
            // checks are `HeaderName`'s and `HeaderValue`'s own, the same hyper's parser
            // and h2's decoder applied (visible ASCII, tab, bytes from 0x80).
            match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                (Ok(name), Ok(mut value)) => {
                    value.set_sensitive(sensitive);
                    map.append(name, value);
                }
                _ => debug_assert!(false, "a header copy holds an invalid field"),
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>, bool)> {
        map.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
            .collect()
    }

    #[test]
    fn a_rebuilt_map_has_every_field_in_order_with_its_flags() {
        let mut map = HeaderMap::new();
        map.append("host", HeaderValue::from_static("example.test"));
        map.append("x-custom-name", HeaderValue::from_static("one"));
        map.append("accept", HeaderValue::from_static("text/html"));
        map.append("x-custom-name", HeaderValue::from_static("two"));
        map.append("accept", HeaderValue::from_static(""));
        // Tab and obs-text are valid value bytes (RFC 9110 §5.5).
        map.append("x-odd", HeaderValue::from_bytes(b"a\tb \xe9\xff").unwrap());
        let mut secret = HeaderValue::from_static("Bearer t0ken");
        secret.set_sensitive(true);
        map.append("authorization", secret);
        let long = "v".repeat(70_000);
        map.append("x-long", HeaderValue::from_str(&long).unwrap());

        let rebuilt = HeaderCopy::of(&map).rebuild();

        assert_eq!(fields(&rebuilt), fields(&map));
        assert_eq!(rebuilt.len(), map.len());
        assert_eq!(rebuilt.keys_len(), map.keys_len());
        assert!(rebuilt.get("authorization").unwrap().is_sensitive());
        assert!(!rebuilt.get("host").unwrap().is_sensitive());
    }

    #[test]
    fn an_empty_map_rebuilds_empty() {
        assert!(HeaderCopy::of(&HeaderMap::new()).rebuild().is_empty());
    }

    #[test]
    fn each_rebuild_is_a_map_of_its_own() {
        let mut map = HeaderMap::new();
        map.insert("x-attempt", HeaderValue::from_static("1"));
        let copy = HeaderCopy::of(&map);
        let mut first = copy.rebuild();
        first.insert("x-attempt", HeaderValue::from_static("2"));
        assert_eq!(copy.rebuild()["x-attempt"], "1");
    }
}
