//! The request path as route matching sees it: normalised, so that one resource has one
//! spelling.
//!
//! Why: a route's rate limit, breaker or fallback must not be escaped by writing the same
//! path differently. `/./quotes`, `//quotes`, `/%71uotes` and `/x/../quotes` all name
//! `/quotes` to a typical backend, so they must all take the `quotes` route. The rules
//! (RFC 3986 section 6.2.2 plus repeated slashes and path parameters), in this order:
//!
//! 1. `%XX` that encodes an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; any
//!    other `%XX` stays encoded, its hex digits upper-cased (`%2f` and `%2F` are one thing,
//!    and neither is a `/`). A `%` not followed by two hex digits is left alone.
//! 2. Runs of `/` become one `/`.
//! 3. Path parameters go: `;` and what follows it within a segment (RFC 3986 section 3.3).
//!    Servlet containers and other upstreams read `/quotes;x/1` as `/quotes/1`, so it must
//!    take the `quotes` route too; and `..;` is `..` to them, so this comes before step 4.
//! 4. Dot segments are removed: `.` goes, `..` removes the segment before it and never
//!    climbs above the root.
//!
//! Only matching uses the result: the upstream receives the path exactly as the client
//! wrote it. Route paths in the config go through the same rules at load, so both sides of
//! the comparison are spelled alike. An already-normal path, the common case, is checked
//! in one pass and borrowed, never copied.

use std::borrow::Cow;

/// The path in its normal form; borrowed when it already is normal.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(remove_dot_segments(&strip_params(&decode_unreserved(path))))
    }
}

/// Whether `normalize` would leave the path as it is. Paths that do not start with `/`
/// (`*` for `OPTIONS *`) are left alone.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return true;
    };
    let bytes = path.as_bytes();
    if bytes.contains(&b';') {
        return false;
    }
    let rewrites_a_triplet = (0..bytes.len())
        .filter(|&i| bytes[i] == b'%')
        .any(|i| triplet(&bytes[i..]).is_some_and(Triplet::changes));
    if rewrites_a_triplet {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// A well-formed `%XX` at the start of `bytes`.
#[derive(Clone, Copy)]
struct Triplet {
    hi: u8,
    lo: u8,
    value: u8,
}

impl Triplet {
    fn unreserved(self) -> bool {
        self.value.is_ascii_alphanumeric() || matches!(self.value, b'-' | b'.' | b'_' | b'~')
    }

    /// Whether normalising rewrites it (decoded, or its hex digits upper-cased).
    fn changes(self) -> bool {
        self.unreserved() || self.hi.is_ascii_lowercase() || self.lo.is_ascii_lowercase()
    }
}

fn triplet(bytes: &[u8]) -> Option<Triplet> {
    let hex = |b: u8| (b as char).to_digit(16);
    match bytes {
        [b'%', hi, lo, ..] => {
            let value = hex(*hi)? * 16 + hex(*lo)?;
            Some(Triplet {
                hi: *hi,
                lo: *lo,
                value: u8::try_from(value).ok()?,
            })
        }
        _ => None,
    }
}

/// Step 1: unreserved characters decoded, other triplets upper-cased.
fn decode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match triplet(tail.as_bytes()) {
            Some(t) if t.unreserved() => out.push(char::from(t.value)),
            Some(t) => {
                out.push('%');
                out.push(char::from(t.hi.to_ascii_uppercase()));
                out.push(char::from(t.lo.to_ascii_uppercase()));
            }
            None => {
                out.push('%');
                rest = &tail[1..];
                continue;
            }
        }
        // A triplet is three ASCII bytes, so this slices on a character boundary.
        rest = &tail[3..];
    }
    out.push_str(rest);
    out
}

/// Step 3: each segment without its parameters (what follows a `;` up to the next `/`).
fn strip_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// Steps 2 and 4, on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    // `out` ends with `/` between segments; `named` says the last segment kept was a name
    // (not `.`, `..` or empty), whose trailing `/` goes again at the end.
    let mut out = String::with_capacity(path.len());
    out.push('/');
    let mut named = false;
    for segment in path.trim_start_matches('/').split('/') {
        named = false;
        match segment {
            "" | "." => {}
            ".." => {
                if out.len() > 1 {
                    out.pop();
                    let keep = out.rfind('/').map_or(1, |i| i + 1);
                    out.truncate(keep);
                }
            }
            name => {
                out.push_str(name);
                out.push('/');
                named = true;
            }
        }
    }
    if named {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/", "/quotes", "/quotes/", "/a/b.c/d", "/a%20b", "/a%2Fb", "/%", "/%zz", "/...", "*",
            "",
        ] {
            assert!(matches!(normalize(p), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn spellings_of_one_path_meet() {
        let cases = [
            ("/./quotes", "/quotes"),
            ("//quotes", "/quotes"),
            ("/%71uotes", "/quotes"),
            ("/x/../quotes", "/quotes"),
            ("/../quotes", "/quotes"),
            ("/quotes/.", "/quotes/"),
            ("/quotes/..", "/"),
            ("/a//b///c/", "/a/b/c/"),
            ("/a/%2e%2E/quotes", "/quotes"),
            ("/a/%2e/b", "/a/b"),
            ("/%7Euser", "/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/../c", "/c"),
            ("/%41%zz%4", "/A%zz%4"),
            ("/é/./x", "/é/x"),
            ("/a/b/../../..", "/"),
            ("/quotes;x/1", "/quotes/1"),
            ("/quotes;jsessionid=1", "/quotes"),
            ("/a/..;/quotes", "/quotes"),
            ("/a;b=c;d/b", "/a/b"),
            ("/a%3Bx/b", "/a%3Bx/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in [
            "/./a//b/%2e%2e/c%2f",
            "/%25%34%31",
            "//..//.%2E/x/",
            "/a;x/..;/b;",
        ] {
            let once = normalize(p).into_owned();
            assert!(
                matches!(normalize(&once), Cow::Borrowed(_)),
                "{p} -> {once}"
            );
        }
    }
}
