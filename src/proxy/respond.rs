//! Every answer the proxy makes itself, in one place.
//!
//! Nothing on the request path returns an error to hyper (hyper would close the connection
//! without an answer); every failure ends here as a response with a JSON body
//! `{"error": "...", "reason": "REASON"}` (SPEC §3), so clients and tests can tell a
//! proxy-made 502 from one the upstream sent.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use super::failure::Failure;

/// The answer when the upstream gave none.
pub fn failure(failure: Failure) -> Response<ResponseBody> {
    let mut resp = json(
        failure.status(),
        format!(
            "{{\"error\":\"{}\",\"reason\":\"{}\"}}",
            failure,
            failure.reason()
        ),
    );
    // Read by `grpc::answer`, which gives a gRPC call the gRPC form of this answer.
    resp.extensions_mut().insert(failure);
    resp
}

/// The answer to a request the proxy will not forward (malformed, CONNECT, ...).
pub fn refused(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json(status, format!("{{\"error\":\"{}\"}}", escape(message)))
}

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Escapes a string for a JSON string literal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// Appends `text` escaped for a JSON string literal (as is when nothing needs escaping).
pub fn escape_into(out: &mut String, text: &str) {
    use std::fmt::Write as _;
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}
