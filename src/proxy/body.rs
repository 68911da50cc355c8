//! The bodies that cross the proxy.
//!
//! Requests: a body that may be replayed is held as `Bytes` and cloned into each attempt;
//! any other body streams once. A streamed body sits in a shared slot until the first
//! attempt actually polls it, so a connect failure (nothing sent, body untouched) can still
//! hand it to the next attempt, while a body that has started to flow can never be sent
//! twice.
//!
//! A streamed body also reports its [`Upload`] (see `upload`): whether it has been handed
//! over whole and whether the proxy is waiting for the client to send more.
//!
//! Responses: the upstream's body streams straight through; proxy-made answers are one
//! chunk. Either way the body carries a guard that keeps the request counted as in flight
//! until the last byte has gone (or the client went away).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::upload::Upload;
use crate::resilience::coalesce::Flight;
use crate::resilience::store::{Key, ResponseStore, Vary, MAX_STORED_BODY};
use crate::server::watchdog::{Active, Reading};

/// Any error a body can produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as prepared once for all attempts.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// No body at all.
    Empty,
    /// Kept whole, replayed on every attempt, trailers included (boxed, as in
    /// [`UpstreamBody::Full`]).
    Buffered(Bytes, Option<Box<HeaderMap>>),
    /// Streams once; `None` in the slot once an attempt has started reading it.
    Streaming {
        slot: Arc<Mutex<Option<Box<Streamed>>>>,
        upload: Arc<Upload>,
        length: Option<u64>,
        /// Larger than `request_body_buffer`: never retried, not even after a connect
        /// failure (SPEC §2).
        oversized: bool,
    },
}

/// A streaming body: bytes already read while deciding whether to buffer, then the rest.
#[derive(Debug)]
pub struct Streamed {
    pub prefix: VecDeque<Bytes>,
    pub rest: Incoming,
    upload: Arc<Upload>,
    /// Keeps the client's connection from being parked while `rest` is unread
    /// (`server::watchdog::Reading`); dropped with it.
    _reading: Option<Reading>,
}

impl Prepared {
    /// Wraps a body that will stream once.
    pub fn streaming(
        prefix: VecDeque<Bytes>,
        rest: Incoming,
        reading: Option<Reading>,
        length: Option<u64>,
        oversized: bool,
    ) -> Prepared {
        let upload = Arc::new(Upload::default());
        Prepared::Streaming {
            slot: Arc::new(Mutex::new(Some(Box::new(Streamed {
                prefix,
                rest,
                upload: Arc::clone(&upload),
                _reading: reading,
            })))),
            upload,
            length,
            oversized,
        }
    }

    /// The upload of a streamed body; `None` for a body held whole (handed over at once).
    pub fn upload(&self) -> Option<&Upload> {
        match self {
            Prepared::Streaming { upload, .. } => Some(upload),
            Prepared::Empty | Prepared::Buffered(..) => None,
        }
    }

    /// The body for one more attempt; `None` when it streamed already and cannot be resent.
    pub fn for_attempt(&self) -> Option<UpstreamBody> {
        match self {
            Prepared::Empty => Some(UpstreamBody::Empty),
            Prepared::Buffered(bytes, trailers) => {
                Some(UpstreamBody::Full(Some(bytes.clone()), trailers.clone()))
            }
            Prepared::Streaming { slot, length, .. } => {
                let untouched = slot.lock().map(|s| s.is_some()).unwrap_or(false);
                untouched.then(|| UpstreamBody::Waiting {
                    slot: Arc::clone(slot),
                    length: *length,
                })
            }
        }
    }

    /// Whether the body exceeded `request_body_buffer`, which rules out any retry.
    pub fn oversized(&self) -> bool {
        matches!(
            self,
            Prepared::Streaming {
                oversized: true,
                ..
            }
        )
    }
}

/// The body of one upstream request. Its rare large parts (trailers, a stream) are boxed:
/// the body travels in the request through the client's layers and hyper's channel, and
/// each move copies it (48 bytes so, 128 with them inline).
#[derive(Debug)]
pub enum UpstreamBody {
    Empty,
    /// The data (until sent), then the trailers (until sent).
    Full(Option<Bytes>, Option<Box<HeaderMap>>),
    /// Not polled yet: the stream is still in the shared slot.
    Waiting {
        slot: Arc<Mutex<Option<Box<Streamed>>>>,
        length: Option<u64>,
    },
    /// Taken out of the slot: this attempt owns it.
    Flowing(Box<Streamed>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this {
                UpstreamBody::Empty => return Poll::Ready(None),
                UpstreamBody::Full(bytes, trailers) => {
                    let frame = match bytes.take() {
                        Some(b) => Some(Frame::data(b)),
                        None => trailers.take().map(|t| Frame::trailers(*t)),
                    };
                    return Poll::Ready(frame.map(Ok));
                }
                UpstreamBody::Waiting { slot, .. } => {
                    let taken = slot.lock().ok().and_then(|mut s| s.take());
                    match taken {
                        Some(streamed) => *this = UpstreamBody::Flowing(streamed),
                        None => {
                            return Poll::Ready(Some(Err("request body was already sent".into())))
                        }
                    }
                }
                UpstreamBody::Flowing(streamed) => {
                    if let Some(chunk) = streamed.prefix.pop_front() {
                        let end = streamed.prefix.is_empty() && streamed.rest.is_end_stream();
                        streamed.upload.read(false, end, chunk.len());
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    let mut polled = Pin::new(&mut streamed.rest).poll_frame(cx);
                    let end = matches!(polled, Poll::Ready(None)) || streamed.rest.is_end_stream();
                    let bytes = match &mut polled {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(trailers) = frame.trailers_mut() {
                                super::headers::strip_from_trailers(trailers);
                            }
                            frame.data_ref().map_or(0, |d| d.len())
                        }
                        _ => 0,
                    };
                    streamed.upload.read(polled.is_pending(), end, bytes);
                    return polled.map_err(|e| Box::new(e) as BoxError);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(bytes, trailers) => bytes.is_none() && trailers.is_none(),
            UpstreamBody::Waiting { .. } => false,
            UpstreamBody::Flowing(s) => s.prefix.is_empty() && s.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(bytes, None) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // An exact size would make hyper send `Content-Length`, and HTTP/1.1 carries
            // trailers only in a chunked body.
            UpstreamBody::Full(_, Some(_)) => SizeHint::default(),
            UpstreamBody::Waiting {
                length: Some(n), ..
            } => SizeHint::with_exact(*n),
            UpstreamBody::Waiting { length: None, .. } | UpstreamBody::Flowing(_) => {
                SizeHint::default()
            }
        }
    }
}

/// The body of a response to the client.
pub struct ResponseBody {
    inner: Inner,
    /// Copies the body for the stale store while it streams.
    /// Boxed: a response is moved by value through every layer around the handler, and
    /// an inline copier (about 300 bytes) would be copied with it each time.
    tee: Option<Box<Tee>>,
    /// Dropped with the body: releases the in-flight slot. Held as itself, not boxed as a
    /// trait object: the box was an allocation per request.
    _guard: Option<super::InFlight>,
    /// Tells the connection's watchdog whether the client keeps taking this body
    /// (`send_timeout`); dropped with the body, it ends the request for `idle_timeout`.
    sending: Option<Active>,
    /// Shown the trailers as they pass (gRPC counts its status there).
    on_trailers: Option<TrailerHook>,
}

/// What sees a response's trailers go by.
pub type TrailerHook = Box<dyn FnMut(&HeaderMap) + Send + Sync>;

/// A copy of a response body in the making, stored once the body completed.
pub struct Tee {
    store: Arc<ResponseStore>,
    key: Key,
    /// The request's values of what the response varies on, and the headers to store.
    vary: Vary,
    response: HeaderMap,
    copy: BytesMut,
    /// Bytes reserved in the store for `copy`; returned on drop.
    reserved: u64,
    /// The coalescing flight this response ends (after it is stored) when it is dropped.
    flight: Option<Flight>,
}

impl Tee {
    /// Starts a copy of a response that may be stored under `key`.
    pub fn new(
        store: Arc<ResponseStore>,
        key: Key,
        vary: Vary,
        response: HeaderMap,
        flight: Option<Flight>,
    ) -> Tee {
        Tee {
            store,
            key,
            vary,
            response,
            copy: BytesMut::new(),
            reserved: 0,
            flight,
        }
    }

    /// Adds a chunk; `false` when the body grew too large to keep or the store has no room.
    fn push(&mut self, data: &Bytes) -> bool {
        if self.copy.len() + data.len() > MAX_STORED_BODY || !self.store.reserve(data.len() as u64)
        {
            return false;
        }
        self.reserved += data.len() as u64;
        self.copy.extend_from_slice(data);
        true
    }

    fn finish(mut self) {
        let key = std::mem::take(&mut self.key);
        let vary = std::mem::take(&mut self.vary);
        let response = std::mem::take(&mut self.response);
        let body = std::mem::take(&mut self.copy).freeze();
        // The reservation is returned (on drop) after the entry is in: never both uncounted.
        self.store.insert_varied(key, vary, response, body);
        // Followers wake only now, with the entry in place.
        if let Some(flight) = self.flight.take() {
            flight.stored();
        }
    }

    /// Gives the copy up (too large, no room, the body broke): followers fetch their own.
    fn give_up(mut self) {
        if let Some(flight) = self.flight.take() {
            flight.unshared();
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.store.release(self.reserved);
    }
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
    /// One chunk, then trailers (a gRPC fallback's message and status). The trailers are
    /// boxed: inline, their map would make every response 80 bytes larger, and a response
    /// is copied at each layer it is returned through.
    Trailed(Option<Bytes>, Option<Box<HeaderMap>>),
}

impl ResponseBody {
    /// A body that is one chunk (or empty).
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        ResponseBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            tee: None,
            _guard: None,
            sending: None,
            on_trailers: None,
        }
    }

    /// The upstream's body, streamed through.
    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(body),
            tee: None,
            _guard: None,
            sending: None,
            on_trailers: None,
        }
    }

    /// The upstream's body, copied into the stale store as it streams.
    pub fn upstream_tee(body: Incoming, tee: Tee) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(body),
            tee: Some(Box::new(tee)),
            _guard: None,
            sending: None,
            on_trailers: None,
        }
    }

    /// One chunk followed by trailers.
    pub fn full_with_trailers(bytes: Bytes, trailers: HeaderMap) -> ResponseBody {
        let mut body = ResponseBody::full(Bytes::new());
        body.inner = Inner::Trailed(Some(bytes), Some(Box::new(trailers)));
        body
    }

    /// Shows the trailers to `hook` as they pass.
    pub fn on_trailers(mut self, hook: TrailerHook) -> ResponseBody {
        self.on_trailers = Some(hook);
        self
    }

    /// Attaches the in-flight slot, released when the body is gone.
    pub fn set_guard(&mut self, guard: super::InFlight) {
        self._guard = Some(guard);
    }

    /// Hands the body to its connection: from now on it waits for the client.
    pub fn set_sending(&mut self, mut active: Active) {
        active.sending();
        self.sending = Some(active);
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let body = match &mut self.inner {
            Inner::Upstream(body) => body,
            Inner::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Trailed(bytes, trailers) => {
                let frame = match bytes.take() {
                    Some(b) => Some(Frame::data(b)),
                    None => trailers.take().map(|t| Frame::trailers(*t)),
                };
                return Poll::Ready(frame.map(Ok));
            }
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if let Some(tee) = &mut self.tee {
            let keep = match &polled {
                Poll::Ready(Some(Ok(frame))) => frame.data_ref().is_none_or(|d| tee.push(d)),
                Poll::Ready(Some(Err(_))) => false,
                Poll::Ready(None) | Poll::Pending => true,
            };
            // hyper may stop polling once `is_end_stream` says so: finish on either signal.
            let complete = matches!(polled, Poll::Ready(None)) || body.is_end_stream();
            if !keep {
                if let Some(tee) = self.tee.take() {
                    tee.give_up();
                }
            } else if complete {
                if let Some(tee) = self.tee.take() {
                    tee.finish();
                }
            }
        }
        polled
    }
}

impl crate::server::watchdog::Watched for ResponseBody {
    fn sending(&mut self, active: Active) {
        self.set_sending(active);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = this.poll_inner(cx);
        if let (Some(hook), Poll::Ready(Some(Ok(frame)))) = (&mut this.on_trailers, &polled) {
            if let Some(trailers) = frame.trailers_ref() {
                hook(trailers);
            }
        }
        if this.sending.is_some() {
            // A frame handed out waits for the client (unless it was the last: the body is
            // dropped then); pending waits for the upstream.
            let waits = matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.is_end_stream();
            if let Some(active) = &mut this.sending {
                active.polled(waits);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Trailed(bytes, trailers) => bytes.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Trailed(..) => SizeHint::default(),
        }
    }
}

/// Reads the body into memory when `keep` (it may be replayed) and it fits `limit`;
/// streams it otherwise.
///
/// A body that can never be resent is not buffered. A chunked body that grows past the
/// limit while arriving keeps what was read as a prefix and streams the rest.
///
/// `reading` is the client connection's note that this body is still being read: held as
/// long as the body may still be read, then dropped.
pub async fn prepare(
    mut body: Incoming,
    reading: Option<Reading>,
    headers: &HeaderMap,
    keep: bool,
    limit: usize,
) -> Result<Prepared, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Prepared::Empty);
    }
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    let oversized = length.is_some_and(|n| n > limit as u64);
    if !keep || oversized {
        return Ok(Prepared::streaming(
            VecDeque::new(),
            body,
            reading,
            length,
            oversized,
        ));
    }
    let mut kept: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let data = match frame?.into_data() {
            Ok(data) => data,
            // Trailers come last: kept, and replayed after the data on every attempt.
            Err(frame) => {
                trailers = frame.into_trailers().ok().map(|mut t| {
                    super::headers::strip_from_trailers(&mut t);
                    Box::new(t)
                });
                continue;
            }
        };
        total += data.len();
        kept.push_back(data);
        if total > limit {
            return Ok(Prepared::streaming(kept, body, reading, length, true));
        }
    }
    let mut all = BytesMut::with_capacity(total);
    for chunk in kept {
        all.extend_from_slice(&chunk);
    }
    Ok(Prepared::Buffered(all.freeze(), trailers))
}
