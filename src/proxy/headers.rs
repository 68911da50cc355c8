//! Header rewriting in both directions: hop-by-hop headers out, forwarding headers in,
//! request ids kept or made, and the client's `Host` checked before it is repeated.
//!
//! Hop-by-hop headers describe one connection (RFC 9110 §7.6.1), so they never cross the
//! proxy: not the fixed list, and not the ones the `Connection` header names. Forwarding
//! them would let a client steer the proxy-to-upstream connection (for example ask it to
//! upgrade) or smuggle a framing header past us. `Trailer` is not on the list: it is
//! end-to-end, and hyper only writes trailers for the fields a `Trailer` header announces,
//! so dropping it would lose trailers both ways.
//!
//! Forwarding lists (`X-Forwarded-For`, `Forwarded`, `Via`) each get this hop at the end,
//! on one line, so the last element is always the one the proxy wrote and can be trusted
//! as far as the proxy is. `X-Forwarded-For` and `Via` are always sent; `Forwarded` is
//! extended only when the client sent one (an upstream that reads it then never sees a
//! list made only by the client), because building it for every request would cost an
//! allocation for a header few upstreams read. Client addresses are canonical: an IPv4
//! client of a dual-stack (`[::]`) listener is `127.0.0.1`, not `::ffff:127.0.0.1`.

use std::net::{IpAddr, Ipv6Addr};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::vocab::list;

/// The request id header, kept from the client or generated, sent both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Header telling the upstream which attempt this is (1 for the first).
pub static ATTEMPT: HeaderName = HeaderName::from_static("x-outrigger-attempt");

// `static`s, not names made where they are used: `HeaderName::from_static` outside a
// constant checks its argument each time it runs.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A `static`, not a `const`: a `const` array of names is built and dropped at each use.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A small count as a header value (`x-outrigger-attempts`, `x-outrigger-attempt`):
/// 0-9 from a table, since `HeaderValue::from(u32)` allocates twice on every request.
pub fn count(n: u32) -> HeaderValue {
    static DIGITS: [HeaderValue; 10] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
        HeaderValue::from_static("4"),
        HeaderValue::from_static("5"),
        HeaderValue::from_static("6"),
        HeaderValue::from_static("7"),
        HeaderValue::from_static("8"),
        HeaderValue::from_static("9"),
    ];
    match DIGITS.get(n as usize) {
        Some(value) => value.clone(),
        None => HeaderValue::from(n),
    }
}

/// Which of the request headers this hop reads (and most requests lack) the client sent,
/// from one pass over the head: looking up a name that is absent still hashes it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Present {
    pub te: bool,
    pub cookie: bool,
    pub forwarded: bool,
    /// `Connection`, which may name any of the others as hop-by-hop: after those are
    /// removed, look again.
    pub connection: bool,
}

impl Present {
    pub fn of(headers: &HeaderMap) -> Present {
        let mut present = Present::default();
        for name in headers.keys() {
            match *name {
                header::TE => present.te = true,
                header::COOKIE => present.cookie = true,
                header::FORWARDED => present.forwarded = true,
                header::CONNECTION => present.connection = true,
                _ => {}
            }
        }
        present
    }
}

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names says which of the fixed list are here (most messages carry
    // none, a response from a keep-alive upstream `Connection` alone): each removal
    // hashes, so only those are removed.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection: keep-alive` or `close`, the usual ones, name nothing beyond the fixed
    // list: no need to collect (and allocate) the names.
    let names_others = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(names_beyond_fixed);
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(list::tokens)
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Cleans a request's trailers for the upstream: no hop-by-hop names, and none of the
/// names this hop sets in the head (`Host`, the `X-Forwarded-*`, `Forwarded`, `Via`, the
/// request id, the attempt), which an upstream reading trailers could otherwise take
/// from the client. A client's trailers are end-to-end data only (RFC 9110 §6.5.1).
pub fn strip_from_trailers(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    for name in [
        &header::HOST,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &header::FORWARDED,
        &header::VIA,
        &REQUEST_ID,
        &ATTEMPT,
    ] {
        trailers.remove(name);
    }
}

/// Whether a `Connection` value names a header beyond the fixed list (or `close`). The
/// usual whole values, `keep-alive` and `close`, are answered without splitting: the
/// split and the token comparisons cost about 600 instructions for each response from a
/// keep-alive upstream.
fn names_beyond_fixed(value: &HeaderValue) -> bool {
    let whole = value.as_bytes();
    if whole.eq_ignore_ascii_case(b"keep-alive") || whole.eq_ignore_ascii_case(b"close") {
        return false;
    }
    list::tokens(value).any(|token| {
        !token.is_empty()
            && !token.eq_ignore_ascii_case(b"close")
            && !HOP_BY_HOP
                .iter()
                .any(|name| name.as_str().as_bytes().eq_ignore_ascii_case(token))
    })
}

/// Where `name` is in `HOP_BY_HOP`. A `match` on the spelling: it sorts by length first,
/// where comparing with each of the six names cost ten times as much per header.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        _ => None,
    }
}

/// Whether the client's `TE` offers `trailers`, the one `TE` value HTTP/2 allows and the
/// one a gRPC server insists on. `TE` is hop-by-hop, so it is stripped with the rest; the
/// request head puts back `te: trailers` alone when this is true (nothing else of `TE`:
/// transfer codings are this hop's business).
pub fn offers_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .flat_map(list::tokens)
        .any(|token| {
            let name = token.split(|&b| b == b';').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
}

/// The headers as the upstream will see them end to end: borrowed as they are when the
/// request names nothing in `Connection` (the common case, no copy), else a copy without
/// the hop-by-hop headers. Route matching reads this, so a header the upstream never
/// receives cannot pick a route (and that route's store) either.
pub fn end_to_end(headers: &HeaderMap) -> std::borrow::Cow<'_, HeaderMap> {
    if !headers.contains_key(header::CONNECTION) {
        return std::borrow::Cow::Borrowed(headers);
    }
    let mut stripped = headers.clone();
    strip_hop_by_hop(&mut stripped);
    std::borrow::Cow::Owned(stripped)
}

/// Sets `X-Forwarded-For` (appending the client to any earlier hops), `X-Forwarded-Proto`
/// and `X-Forwarded-Host`, and appends this hop to a `Forwarded` the client sent.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<&HeaderValue>,
    present: Present,
) {
    let client = client.to_canonical();
    // `entry`: one hash of the name where `contains_key` then `insert` took two.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(_) => extend_list(headers, &X_FORWARDED_FOR, &client.to_string()),
        Entry::Vacant(slot) => {
            slot.insert(client_value(client));
        }
    }
    if present.forwarded {
        extend_list(
            headers,
            &header::FORWARDED,
            &forwarded_element(client, host),
        );
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host {
        Some(h) => headers.insert(&X_FORWARDED_HOST, h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// This hop as a `Forwarded` element (RFC 7239 §4): an IPv6 `for` is bracketed and quoted,
/// and `host` is always quoted (a valid host may hold `:`, `;`, `,` or `=`).
fn forwarded_element(client: IpAddr, host: Option<&HeaderValue>) -> String {
    let mut element = match client {
        IpAddr::V4(ip) => format!("for={ip};proto=http"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto=http"),
    };
    // `host` passed `valid_host`: it holds no `"` or `\` to escape.
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=\"");
        element.push_str(h);
        element.push('"');
    }
    element
}

/// Adds `Via` for this hop, after any the client sent (RFC 9110 §7.6.3: a proxy must),
/// under the pseudonym `outrigger` and the protocol the request arrived with.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let ours = match version {
        Version::HTTP_10 => "1.0 outrigger",
        Version::HTTP_2 => "2 outrigger",
        Version::HTTP_3 => "3 outrigger",
        _ => "1.1 outrigger",
    };
    match headers.entry(header::VIA) {
        Entry::Occupied(_) => extend_list(headers, &header::VIA, ours),
        Entry::Vacant(slot) => {
            slot.insert(HeaderValue::from_static(ours));
        }
    }
}

/// Replaces every line of the list header `name` with one line: the earlier elements, then
/// `ours`. One line, because some readers look at the first line only.
fn extend_list(headers: &mut HeaderMap, name: &HeaderName, ours: &str) {
    let mut line = String::new();
    for earlier in headers.get_all(name).iter() {
        // A value that is not visible ASCII cannot be a list element anyone parses.
        let Ok(earlier) = earlier.to_str() else {
            continue;
        };
        let earlier = earlier.trim();
        if !earlier.is_empty() {
            line.push_str(earlier);
            line.push_str(", ");
        }
    }
    line.push_str(ours);
    if let Ok(value) = HeaderValue::from_str(&line) {
        headers.insert(name, value);
    }
}

/// Joins HTTP/2 cookie crumbs into one `cookie` line with `"; "` (RFC 9113 §8.2.3): an
/// HTTP/1.1 upstream must see one `Cookie` (RFC 6265 §5.4), and an HTTP/2 one accepts it.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE).iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    let value = HeaderValue::from_bytes(&joined).expect("valid values joined by \"; \"");
    headers.insert(header::COOKIE, value);
}

/// Whether a `Host` value (or a request target's authority without userinfo) is
/// `host [ ":" port ]` as RFC 3986 §3.2.2 spells it: a reg-name (which covers IPv4) or an
/// IP-literal in brackets, then at most five digits. Anything else is a request we refuse:
/// repeating it would hand the upstream a host we never understood ourselves.
pub fn valid_host(value: &[u8]) -> bool {
    if value.first() != Some(&b'[') {
        // A reg-name (which covers IPv4) holds no `:`: the usual host is read in one pass.
        return reg_name_then_port(value);
    }
    // A port's `:` comes after an IP-literal's closing bracket.
    let from = value.iter().rposition(|&b| b == b']').map_or(0, |i| i + 1);
    let (host, port) = match value[from..].iter().position(|&b| b == b':') {
        Some(i) => (&value[..from + i], &value[from + i + 1..]),
        None => (value, &[][..]),
    };
    valid_port(port) && ip_literal(host)
}

/// At most five digits (none: no port).
fn valid_port(port: &[u8]) -> bool {
    port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// `reg-name [ ":" port ]`, the reg-name not empty, in one pass.
fn reg_name_then_port(value: &[u8]) -> bool {
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b':' => return i > 0 && valid_port(&value[i + 1..]),
            b'%' => {
                let hex = value.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if unreserved_or_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    i > 0
}

/// `"[" ( IPv6address / IPvFuture ) "]"`.
fn ip_literal(host: &[u8]) -> bool {
    let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) else {
        return false;
    };
    match inner.split_first() {
        Some((b'v' | b'V', future)) => match future.iter().position(|&b| b == b'.') {
            Some(dot) if dot > 0 && dot + 1 < future.len() => {
                future[..dot].iter().all(u8::is_ascii_hexdigit)
                    && future[dot + 1..]
                        .iter()
                        .all(|&b| unreserved_or_sub_delim(b) || b == b':')
            }
            _ => false,
        },
        _ => std::str::from_utf8(inner).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok()),
    }
}

fn unreserved_or_sub_delim(b: u8) -> bool {
    HOST_BYTES[usize::from(b)]
}

/// Which bytes are `unreserved / sub-delims`: a table, since every request's `Host` is
/// checked byte by byte (a search of the seventeen punctuation bytes cost that for each).
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    table
};

thread_local! {
    /// The last client address as a header value: a keep-alive connection (or a sidecar's
    /// one local client) sends many requests from one address, so format it once.
    static LAST_CLIENT: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
}

fn client_value(client: IpAddr) -> HeaderValue {
    LAST_CLIENT.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((ip, value)) if *ip == client => value.clone(),
            _ => {
                let value = HeaderValue::from_str(&client.to_string())
                    .expect("an IP address is a valid header value");
                *last = Some((client, value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_their_decimal_digits() {
        for n in [0u32, 1, 9, 10, 42, 1000] {
            assert_eq!(count(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn the_index_of_each_hop_by_hop_name_is_its_place_in_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::HOST), None);
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn only_connection_values_naming_other_headers_name_beyond_the_fixed_list() {
        for (value, beyond) in [
            ("keep-alive", false),
            ("Keep-Alive", false),
            ("close", false),
            ("CLOSE", false),
            ("keep-alive, Upgrade", false),
            (" te , close ", false),
            ("", false),
            ("x-secret", true),
            ("keep-alive, X-Secret", true),
            ("close,,x-other", true),
        ] {
            let v = HeaderValue::from_str(value).unwrap();
            assert_eq!(names_beyond_fixed(&v), beyond, "{value:?}");
        }
    }

    #[test]
    fn a_non_ascii_connection_token_does_not_hide_the_names_beside_it() {
        let mut h = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"x-secret, \xc3\xa9, keep-alive").unwrap();
        assert!(names_beyond_fixed(&value));
        h.insert(header::CONNECTION, value);
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn appends_client_to_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let present = Present::of(&h);
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(&HeaderValue::from_static("shop.example")),
            present,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn trailer_is_end_to_end() {
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::TRAILER], "x-checksum");
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn only_trailers_is_offered_from_te() {
        let mut h = HeaderMap::new();
        assert!(!offers_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
        assert!(offers_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailersx"));
        assert!(!offers_trailers(&h));
        // An element that is not visible ASCII does not hide the others.
        let odd = HeaderValue::from_bytes(b"\xc3\xa9, trailers").unwrap();
        h.insert(header::TE, odd);
        assert!(offers_trailers(&h));
    }

    #[test]
    fn ipv4_mapped_clients_are_canonical_everywhere() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        let present = Present::of(&h);
        set_forwarded(&mut h, mapped, None, present);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        h.insert(header::FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        let present = Present::of(&h);
        set_forwarded(
            &mut h,
            mapped,
            Some(&HeaderValue::from_static("a.example:81")),
            present,
        );
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.1, for=127.0.0.1;proto=http;host=\"a.example:81\""
        );
        assert_eq!(
            h["x-forwarded-for"], "127.0.0.1, 127.0.0.1",
            "opaque bytes are no element"
        );
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=unknown"));
        let present = Present::of(&h);
        set_forwarded(&mut h, "2001:db8::1".parse().unwrap(), None, present);
        assert_eq!(
            h[header::FORWARDED],
            "for=unknown, for=\"[2001:db8::1]\";proto=http"
        );
    }

    #[test]
    fn via_names_this_hop_last() {
        let mut h = HeaderMap::new();
        add_via(&mut h, Version::HTTP_2);
        assert_eq!(h[header::VIA], "2 outrigger");
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_static("1.0 fred"));
        h.append(header::VIA, HeaderValue::from_static("1.1 p.example"));
        add_via(&mut h, Version::HTTP_11);
        assert_eq!(h.get_all(header::VIA).iter().count(), 1);
        assert_eq!(h[header::VIA], "1.0 fred, 1.1 p.example, 1.1 outrigger");
    }

    #[test]
    fn cookie_crumbs_become_one_line() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
    }

    #[test]
    fn hosts_are_rfc_3986_host_and_port() {
        for good in [
            "shop.example",
            "shop.example:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "host:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good} refused");
        }
        for bad in [
            "a/b?c@d e",
            "user@host",
            "",
            ":80",
            "host:80:80",
            "host:123456",
            "host:8o",
            "[::1",
            "[not-ip]",
            "[::1]x",
            "[v.x]",
            "a%2",
            "a%zz",
            "two words",
            "a\"b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad} accepted");
        }
    }
}
