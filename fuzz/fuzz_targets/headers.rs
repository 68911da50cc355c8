//! Header rewriting on arbitrary client headers: hop-by-hop removal (including names listed
//! in `Connection`), forwarding headers, request ids, cache keys and storability.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use outrigger::proxy::headers;
use outrigger::resilience::store::{ResponseStore, StorePolicy};

fuzz_target!(|data: &[u8]| {
    // Lines of `name: value`; invalid ones are skipped, as hyper would refuse them.
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    let mut request = http::Request::new(());
    *request.headers_mut() = map.clone();
    let id = outrigger::edge::request_id(&mut request);
    // An id is kept only when sane; one that is not is gone from the request.
    assert!(request
        .headers()
        .get("x-request-id")
        .is_none_or(|kept| *kept == id));
    let store = ResponseStore::new(StorePolicy {
        ttl: Some(std::time::Duration::from_secs(1)),
        stale_max_age: Some(std::time::Duration::from_secs(60)),
        max_entries: 16,
        max_bytes: 1 << 20,
        key_headers: vec![http::header::AUTHORIZATION],
    });
    let _ = store.key(&Method::GET, "/fuzz?x=1", &map);
    let _ = ResponseStore::storable(StatusCode::OK, &map);
    let mut rewritten = map.clone();
    headers::strip_hop_by_hop(&mut rewritten);
    assert!(!rewritten.contains_key(http::header::CONNECTION));
    assert!(!rewritten.contains_key(http::header::TRANSFER_ENCODING));
    let present = headers::Present::of(&rewritten);
    headers::set_forwarded(
        &mut rewritten,
        "127.0.0.1".parse().unwrap(),
        map.get(http::header::HOST),
        present,
    );
    assert!(rewritten.contains_key("x-forwarded-for"));
});
