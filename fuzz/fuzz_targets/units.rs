//! Durations, sizes and Retry-After values from untrusted text.
#![no_main]

use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use outrigger::config::units::{parse_duration, parse_size};
use outrigger::resilience::retry::retry_after;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_duration(&text);
    let _ = parse_size(&text);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value);
        let _ = retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers);
    }
});
