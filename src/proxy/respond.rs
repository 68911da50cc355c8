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

pub use crate::vocab::json::{escape, escape_into};
