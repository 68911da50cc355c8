//! What every request on a served connection goes through around its listener's handler,
//! in the order things happen:
//!
//! 1. it counts as active for the connection's watchdog from here (a request in its
//!    handler is not idle), and so does its body while it is being read;
//! 2. the handler is called and its future polled, each inside `catch_unwind`: a panic
//!    becomes that request's answer ([`PanicAnswer`]), the connection and every other
//!    request carry on;
//! 3. an HTTP/1.0 client that asked for keep-alive is told it got it (unless the
//!    connection is draining), and the response body takes over the request's `Active`,
//!    so the watchdog sees a client that stops reading.
//!
//! [`PerRequest`] is the `hyper::service::Service` the accept loop hands to hyper, and
//! [`Served`] its future. Until issue 17 these were a `tower::service_fn` with an `async`
//! block, tower-http's `CatchPanicLayer` and hyper-util's `TowerToHyperService`. That
//! stack cost, per request: two `Oneshot`s, each holding a clone of the service and the
//! 264-byte request until first polled, so the request was moved three times more; an
//! allocation to box every response body into `UnsyncBoxBody` (CatchPanic's answer type)
//! and a dynamic call with an error mapping on every body frame. One service and one
//! future do the same steps without them (`docs/benchmarks.md`, "What each change
//! bought"). The handler is a `hyper::service::Service`: it is called with `&self` and is
//! always ready, so nothing waits for readiness and nothing is cloned per request.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use pin_project_lite::pin_project;
use tokio::sync::watch;

use super::keep_alive;
use super::watchdog::{Active, Clock, Watched};

/// The answer to a request whose serving panicked.
pub trait PanicAnswer: Send + Sync + 'static {
    /// The listener's response body.
    type Body;

    /// Answers the request; `panic` is what the handler panicked with.
    fn answer(&self, panic: Box<dyn Any + Send + 'static>) -> Response<Self::Body>;
}

/// The service of one connection: `handler` inside the steps above.
pub struct PerRequest<S, P> {
    handler: S,
    on_panic: Arc<P>,
    clock: Arc<Clock>,
    draining: watch::Receiver<bool>,
}

impl<S, P> PerRequest<S, P> {
    /// Serves one connection's requests with `handler`; `clock` is the connection's
    /// watchdog clock and `draining` says when the connection is told to leave.
    pub fn new(
        handler: S,
        on_panic: Arc<P>,
        clock: Arc<Clock>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        PerRequest {
            handler,
            on_panic,
            clock,
            draining,
        }
    }
}

impl<S, P, B> Service<Request<Incoming>> for PerRequest<S, P>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    P: PanicAnswer<Body = B>,
    B: Watched + Body,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Served<S::Future, P>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let active = self.clock.start();
        // Whoever reads the body holds this until the body ends or is let go, even once
        // the answer is sent.
        if !req.body().is_end_stream() {
            req.extensions_mut().insert(self.clock.reading());
        }
        // Only an HTTP/1.0 keep-alive request pays for the clone (no allocation).
        let keep = keep_alive::http10_asked(&req).then(|| self.draining.clone());
        let (handler, panic) = match catch_unwind(AssertUnwindSafe(|| self.handler.call(req))) {
            Ok(future) => (Some(future), None),
            Err(panic) => (None, Some(panic)),
        };
        Served {
            handler,
            panic,
            active: Some(active),
            keep,
            on_panic: Arc::clone(&self.on_panic),
        }
    }
}

pin_project! {
    /// One request's answer: the handler's future, or what a panic in it is answered.
    pub struct Served<F, P> {
        #[pin]
        handler: Option<F>,
        // What the handler's `call` panicked with, answered at the first poll.
        panic: Option<Box<dyn Any + Send + 'static>>,
        active: Option<Active>,
        keep: Option<watch::Receiver<bool>>,
        on_panic: Arc<P>,
    }
}

impl<F, P, B> Future for Served<F, P>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    P: PanicAnswer<Body = B>,
    B: Watched,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = match this.handler.as_mut().as_pin_mut() {
            Some(handler) => catch_unwind(AssertUnwindSafe(|| handler.poll(cx))),
            None => Err(this.panic.take().expect("Served polled after it answered")),
        };
        let mut response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => response,
            Err(panic) => {
                // What the panic left of the handler's future is not polled again.
                this.handler.set(None);
                this.on_panic.answer(panic)
            }
        };
        if this.keep.take().is_some_and(|draining| !*draining.borrow()) {
            keep_alive::confirm(&mut response);
        }
        let active = this.active.take().expect("Served polled after it answered");
        response.body_mut().sending(active);
        Poll::Ready(Ok(response))
    }
}
