//! The edge: what stands between a connection and the plain async handlers.
//!
//! For each listener [`server::accept`](crate::server::accept) is handed a `Handler`: a
//! function from the peer's address to the connection's service (a
//! `hyper::service::Service`: called with `&self`, always ready), and the answer to a
//! request whose serving panicked ([`OnPanic`]). The accept loop wraps that service in
//! `server::per_request` (the watchdog's bookkeeping, panics caught) and hands it to
//! hyper; it knows nothing of the proxy or the admin endpoints.
//!
//! The proxy's service is one `service_fn`, in the order things happen:
//! 1. the request id ([`request_id`]): the client's `x-request-id` when it is 1-128 visible
//!    ASCII characters (SPEC §3), else a new one ([`new_request_id`], 32 hex digits),
//!    handed to the handler as an argument;
//! 2. the request's trace (`otel`), when tracing is on and the request is sampled: the
//!    request path runs inside it (an unsampled request only has its `traceparent` set);
//! 3. `Proxy::handle`, the request path, one plain async function, its future boxed.
//!
//! The request id was tower-http's `SetRequestIdLayer` until issue 17: it records the id
//! as a request extension (two allocations for the extension map, one for the id's copy)
//! and puts a `MapRequest` and its own future around the handler's (callgrind: about 2,100
//! instructions per request inside its `call`, and four allocations). An argument does the
//! same job for none of that (`docs/benchmarks.md`, "What each change bought").
//!
//! A panic (caught by `server::per_request`) is answered `500
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

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use prometheus::IntCounter;

use crate::metrics::Metrics;
use crate::proxy::body::ResponseBody;
use crate::proxy::headers::REQUEST_ID;
use crate::proxy::{respond, Proxy};
use crate::server::per_request::PanicAnswer;

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
> + Send
       + 'static {
    service_fn(move |mut req: Request<Incoming>| {
        let request_id = request_id(&mut req);
        let trace = proxy.traces().start(&mut req, peer);
        // Boxed where it is made, with nothing around it: the request path's future is
        // large (2.6 KB), and each layer around it would move all of it again. The box is
        // allocated before the future is made, so that the optimiser builds it in place
        // (Rust does not promise that; the release build does it, and
        // `bench/per_request.sh` would show a copy coming back): `Box::pin(future)` builds
        // it on the stack and copies all of it into the box. Written out at each large
        // future rather than in a helper: a helper taking a closure that makes the future
        // saved this copy but added three copies of the request (`docs/benchmarks.md`).
        let room = Box::new_uninit();
        let answer = Box::write(room, Arc::clone(&proxy).handle(req, peer, request_id));
        Answer(match trace {
            None => Box::into_pin(answer),
            Some(trace) => Box::pin(crate::otel::scope(trace, Box::into_pin(answer))),
        })
    })
}

/// The request's id: the client's `x-request-id` when SPEC §3 keeps it, else a new one.
/// Sent to the upstream and back to the client either way. An id that is not kept is
/// removed from the request too: routes match on what the upstream will receive, and it
/// will never receive that one.
pub fn request_id<B>(req: &mut Request<B>) -> HeaderValue {
    match req.headers().get(&REQUEST_ID) {
        Some(id) if sane(id) => id.clone(),
        Some(_) => {
            req.headers_mut().remove(&REQUEST_ID);
            new_request_id()
        }
        None => new_request_id(),
    }
}

/// Whether a client's request id may be kept: 1-128 bytes, all visible ASCII.
fn sane(id: &HeaderValue) -> bool {
    let b = id.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

/// A new request id: 128 random bits as 32 lowercase hex digits. Held in one shared
/// allocation (`Bytes::from_owner`), so the copies for the upstream and the client are
/// reference counts, not the second allocation a `Vec`'s first clone would make.
pub fn new_request_id() -> HeaderValue {
    let id = crate::hex::u128_digits(fastrand::u128(..));
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .expect("hex digits are a valid header value")
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

impl PanicAnswer for OnPanic {
    type Body = ResponseBody;

    fn answer(&self, panic: Box<dyn Any + Send + 'static>) -> Response<ResponseBody> {
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

    fn id_for(value: Option<&[u8]>) -> HeaderValue {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.headers_mut()
                .insert(&REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
        }
        let id = request_id(&mut req);
        // One not kept is gone from the request, so no route can match on it.
        let left = req.headers().get(&REQUEST_ID);
        assert!(
            left.is_none_or(|left| *left == id),
            "{left:?} left beside {id:?}"
        );
        id
    }

    fn is_new(id: &HeaderValue) -> bool {
        id.len() == 32 && id.as_bytes().iter().all(u8::is_ascii_hexdigit)
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        assert_eq!(id_for(Some(b"abc-123")), "abc-123");
        assert_eq!(id_for(Some(&[b'a'; 128])).len(), 128);
        assert!(is_new(&id_for(Some(&[b'a'; 129]))));
        assert!(is_new(&id_for(Some(b"has space"))));
        assert!(is_new(&id_for(Some(b""))));
        assert!(is_new(&id_for(None)));
    }

    #[test]
    fn new_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert!(is_new(&a) && is_new(&b), "{a:?} {b:?}");
        assert_ne!(a, b);
    }
}
