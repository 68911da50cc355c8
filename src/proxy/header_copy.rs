//! A header map written out into one buffer, to rebuild the map from later.
//!
//! Every attempt sends its own `HeaderMap` (the client takes the request by value). The
//! first attempt sends the head's own map; what a later attempt (a retry, a hedge) or a
//! reader after the first attempt (a store write keeping the request's `Vary` values, a
//! stale lookup) needs is rebuilt from this copy. Writing the copy is one allocation and a
//! few byte copies per field, a little less than cloning the map, and no second map is
//! dropped after the attempt (`docs/benchmarks.md`). A rebuild costs more than a clone did:
//! one allocation for its values, one per name outside the standard list, and a hash per
//! field. Most requests never rebuild.
//!
//! Each field is its name's length and its value's length (4 bytes each, little-endian;
//! the value's top bit is HPACK's never-indexed flag, [`HeaderValue::is_sensitive`]), then
//! the name and the value. Fields keep the map's order, so a rebuilt map iterates as the
//! original did, repeated names included.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

const SENSITIVE: u32 = 1 << 31;

/// A header map's fields, in order, in one buffer.
#[derive(Debug, Default)]
pub struct HeaderCopy {
    bytes: Vec<u8>,
    /// Distinct names, for the rebuilt map's capacity (not fields: a map may hold more
    /// values of one name than any map can be sized for).
    names: usize,
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
            names: map.keys_len(),
        }
    }

    /// The map again, field for field.
    pub fn rebuild(&self) -> HeaderMap {
        let mut map = HeaderMap::try_with_capacity(self.names).unwrap_or_default();
        // The values are slices of one shared buffer: one allocation, not one per value.
        let shared = Bytes::copy_from_slice(&self.bytes);
        for field in self.fields() {
            let value = shared.slice(field.value_at..field.value_at + field.value.len());
            // Both were a valid name and value when written, so both parse again. Values
            // pass `HeaderValue`'s check (tab, space to `~`, bytes from 0x80): h2's decoder
            // applies it, and hyper's parser allows exactly the same bytes.
            match (
                HeaderName::from_bytes(field.name),
                HeaderValue::from_maybe_shared(value),
            ) {
                (Ok(name), Ok(mut value)) => {
                    value.set_sensitive(field.sensitive);
                    map.append(name, value);
                }
                _ => debug_assert!(false, "a header copy holds an invalid field"),
            }
        }
        map
    }

    /// Every value of `name`, in order, without rebuilding the map: what a stored copy's
    /// `Vary` keeps of the request.
    pub fn values(&self, name: &HeaderName) -> Vec<HeaderValue> {
        let name = name.as_str().as_bytes();
        let found = self.fields().filter(|field| field.name == name);
        found
            .filter_map(|field| {
                let mut value = HeaderValue::from_bytes(field.value).ok()?;
                value.set_sensitive(field.sensitive);
                Some(value)
            })
            .collect()
    }

    fn fields(&self) -> Fields<'_> {
        Fields {
            whole: &self.bytes,
            rest: &self.bytes,
        }
    }
}

/// One field of a copy, borrowed from its buffer.
struct Field<'c> {
    name: &'c [u8],
    value: &'c [u8],
    /// Where `value` starts in the buffer.
    value_at: usize,
    sensitive: bool,
}

struct Fields<'c> {
    whole: &'c [u8],
    rest: &'c [u8],
}

impl<'c> Iterator for Fields<'c> {
    type Item = Field<'c>;

    fn next(&mut self) -> Option<Field<'c>> {
        let (lens, tail) = self.rest.split_first_chunk::<8>()?;
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
            return None;
        };
        let value_at = self.whole.len() - tail.len() + name_len;
        self.rest = &tail[name_len + value_len..];
        Some(Field {
            name,
            value,
            value_at,
            sensitive,
        })
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
    fn values_of_a_name_come_in_order_with_their_flags() {
        let mut map = HeaderMap::new();
        map.append("accept", HeaderValue::from_static("a"));
        map.append("x-tenant", HeaderValue::from_static("blue"));
        let mut secret = HeaderValue::from_static("green");
        secret.set_sensitive(true);
        map.append("x-tenant", secret);
        let copy = HeaderCopy::of(&map);
        let tenant = copy.values(&HeaderName::from_static("x-tenant"));
        assert_eq!(tenant, ["blue", "green"]);
        assert!(!tenant[0].is_sensitive() && tenant[1].is_sensitive());
        assert!(copy.values(&HeaderName::from_static("x-tenan")).is_empty());
        assert!(copy.values(&http::header::COOKIE).is_empty());
    }

    #[test]
    fn an_empty_map_rebuilds_empty() {
        assert!(HeaderCopy::of(&HeaderMap::new()).rebuild().is_empty());
    }

    #[test]
    fn more_values_of_one_name_than_a_map_can_be_sized_for_rebuild() {
        // HTTP/2 takes any number of fields up to the header list size, and `HeaderMap`
        // refuses a capacity above 24,576.
        let mut map = HeaderMap::new();
        for i in 0..30_000u32 {
            map.append("x-a", HeaderValue::from(i));
        }
        map.append("x-b", HeaderValue::from_static("last"));
        let rebuilt = HeaderCopy::of(&map).rebuild();
        assert_eq!(rebuilt.len(), 30_001);
        assert_eq!(fields(&rebuilt), fields(&map));
    }
}
