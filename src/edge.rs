//! The edge: what stands between a connection and the plain async handlers, built from
//! tower and tower-http pieces ("plain async inside, tower at the edge", STYLE).
//!
//! For each listener [`server::accept`](crate::server::accept) is handed a [`Handler`]: a
//! function from the peer's address to the connection's `tower::Service`, and the answer
//! to a request whose serving panicked. The accept loop wraps that service in tower-http's
//! `CatchPanicLayer` and hands it to hyper through hyper-util's `TowerToHyperService`; it
//! knows nothing of the proxy or the admin endpoints.
//!
//! The proxy's stack, outermost first:
//! 1. `map_request(drop_insane_request_id)`: an `x-request-id` that is not 1-128 visible ASCII
//!    characters is dropped (SPEC §3), so the next layer makes a new one;
//! 2. tower-http's `SetRequestIdLayer`: keeps the client's id or generates one
//!    ([`HexId`], 32 hex digits) and records it on the request for the handler;
//! 3. the request's trace (`otel`), when tracing is on and the request is sampled: the
//!    request path runs inside it (an unsampled request only has its `traceparent` set);
//! 4. `Proxy::handle`, the request path, one plain async function.
//!
//! A panic (`CatchPanicLayer`, applied by the accept loop) is answered `500
//! {"error":"internal error"}` by `proxy::respond`, the one place that makes error
//! answers, counted in `outrigger_panics_total` and logged at error; only that request
//! is lost, the connection and every other request carry on.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{MakeRequestId, RequestId, SetRequestIdLayer};

use crate::metrics::Metrics;
use crate::proxy::body::ResponseBody;
use crate::proxy::headers::REQUEST_ID;
use crate::proxy::{respond, Proxy};

/// The future of one proxied request: the request path's own future, boxed where it is
/// made, and answered as a service's `Result`.
pub struct Answer(Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>);

impl Future for Answer {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

/// The proxy listener's service for one connection from `peer`.
pub fn proxy(
    proxy: Arc<Proxy>,
    peer: SocketAddr,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .map_request(drop_insane_request_id)
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), HexId))
        .service_fn(move |mut req: Request<Incoming>| {
            let trace = proxy.traces().start(&mut req, peer);
            let answer = Arc::clone(&proxy).handle(req, peer);
            // Boxed where it is made, with nothing around it: the request path's future is
            // large (about 4.7 KB), and each layer around it (an `async` block, tower's
            // `Oneshot`) would move all of it again.
            Answer(match trace {
                None => Box::pin(answer),
                Some(trace) => Box::pin(crate::otel::scope(trace, Box::pin(answer))),
            })
        })
}

/// Drops an `x-request-id` that SPEC §3 does not keep: empty, longer than 128 bytes, or
/// with anything but visible ASCII.
fn drop_insane_request_id<B>(mut req: Request<B>) -> Request<B> {
    if !sane_request_id(&req) {
        req.headers_mut().remove(&REQUEST_ID);
    }
    req
}

/// Whether the request's `x-request-id`, if any, may be kept (absent counts as sane).
pub fn sane_request_id<B>(req: &Request<B>) -> bool {
    req.headers().get(&REQUEST_ID).is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
    })
}

/// New request ids: 128 random bits as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, Default)]
pub struct HexId;

impl MakeRequestId for HexId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = fastrand::u128(..);
        let mut id = [0u8; 32];
        for byte in id.iter_mut().rev() {
            *byte = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        let value = HeaderValue::from_bytes(&id).expect("hex digits are a valid header value");
        Some(RequestId::new(value))
    }
}

/// The answer to a request whose serving panicked.
#[derive(Clone)]
pub struct OnPanic {
    panics: IntCounter,
    listener: &'static str,
}

impl OnPanic {
    /// Counts in `outrigger_panics_total` (one counter for both listeners).
    pub fn new(metrics: &Metrics, listener: &'static str) -> OnPanic {
        let panics = metrics.plain_counter(
            "outrigger_panics_total",
            "Requests whose serving panicked; each was answered 500.",
        );
        OnPanic { panics, listener }
    }
}

impl tower_http::catch_panic::ResponseForPanic for OnPanic {
    type ResponseBody = ResponseBody;

    fn response_for_panic(
        &mut self,
        panic: Box<dyn Any + Send + 'static>,
    ) -> Response<ResponseBody> {
        self.panics.inc();
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        tracing::error!(
            listener = self.listener,
            panic = message,
            "a request panicked; answered 500"
        );
        respond::refused(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_after(value: Option<&[u8]>) -> Option<HeaderValue> {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.headers_mut()
                .insert(&REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
        }
        drop_insane_request_id(req)
            .headers()
            .get(&REQUEST_ID)
            .cloned()
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_dropped() {
        assert_eq!(id_after(Some(b"abc-123")).unwrap(), "abc-123");
        assert_eq!(id_after(Some(&[b'a'; 128])).unwrap().len(), 128);
        assert!(id_after(Some(&[b'a'; 129])).is_none());
        assert!(id_after(Some(b"has space")).is_none());
        assert!(id_after(Some(b"")).is_none());
        assert!(id_after(None).is_none());
    }

    #[test]
    fn new_ids_are_32_hex_digits() {
        let id = HexId.make_request_id(&Request::new(())).unwrap();
        let v = id.header_value().to_str().unwrap().to_owned();
        assert_eq!(v.len(), 32);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
