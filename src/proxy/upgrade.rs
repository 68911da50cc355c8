//! Upgrades (WebSocket and any other `Connection: Upgrade` protocol) pass through as a
//! byte stream in both directions once the upstream has answered `101 Switching Protocols`.
//!
//! An upgrade is tried once and never retried: after the 101 both sides may already have
//! sent bytes. The tunnel outlives the HTTP exchange, so hyper's graceful shutdown cannot
//! see it; [`Tunnels`] counts open tunnels so that shutdown waits for them (up to
//! `shutdown.timeout`) and then closes whatever is left.
//!
//! A body on the upgrade request streams to the upstream before the switch (hyper hands
//! over the connection only once the request is fully written): dropping it while its
//! `Content-Length` goes on would leave the upstream waiting for bytes that never come.
//!
//! `Upgrade: h2c` is no upgrade here: the proxy never tunnels it (its listener speaks h2c
//! by prior knowledge only), and clients such as `curl --http2` send it on ordinary
//! requests with bodies. Such a request takes the ordinary path, where `Upgrade` and the
//! `HTTP2-Settings` that `Connection` names are dropped as hop-by-hop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};
use tokio::time::timeout;
use tracing::debug;

use super::body::{self, ResponseBody, UpstreamBody};
use super::failure::Failure;
use super::forward::{Answer, Ctx};
use super::{respond, Outcome, Proxy};
use crate::metrics::status_class;

/// Whether the client asks to switch protocols on this connection to something other
/// than h2c.
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get_all(UPGRADE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|p| !p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
        })
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The open tunnels, for shutdown.
#[derive(Debug)]
pub struct Tunnels {
    open: AtomicUsize,
    idle: Notify,
    close: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            close: watch::channel(false).0,
        }
    }
}

struct Open(Arc<Tunnels>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tunnels {
    /// How many tunnels are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves once no tunnel is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Closes every tunnel still open.
    pub fn close_all(&self) {
        self.close.send_replace(true);
    }
}

impl Proxy {
    /// Forwards an upgrade request once; on 101, splices the two connections.
    pub(super) async fn upgrade(&self, ctx: &Ctx<'_>, mut req: Request<Incoming>) -> Answer {
        let client_side = hyper::upgrade::on(&mut req);
        let protocol = req.headers().get(UPGRADE).cloned();
        let (mut parts, body) = req.into_parts();
        let Some(head) = ctx.head(&mut parts) else {
            return Answer::bad_head();
        };
        // Tried once: the body streams, never kept for a replay.
        let limit = ctx.rt.config.limits.request_body_buffer;
        let body = match body::prepare(body, &head.headers, false, limit).await {
            Ok(prepared) => prepared.for_attempt().unwrap_or(UpstreamBody::Empty),
            Err(_) => {
                let message = "the request body could not be read";
                return Answer::refused(StatusCode::BAD_REQUEST, message);
            }
        };
        let mut upstream_req = head.request(1, body);
        upstream_req
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            upstream_req.headers_mut().insert(UPGRADE, protocol);
        }
        let per_try = ctx.route.policy.retry.per_try_timeout;
        let result = match timeout(per_try, ctx.rt.client.request(upstream_req)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(Failure::from_client_error(&e)),
            Ok(Ok(resp)) => Ok(resp),
        };
        let label = result
            .as_ref()
            .map_or_else(|f| f.reason(), |r| status_class(r.status()));
        self.metrics
            .upstream_attempts
            .with_label_values(&[&ctx.route.name, label])
            .inc();
        let mut resp = match result {
            Ok(resp) => resp,
            Err(f) => return Answer::new(respond::failure(f), Outcome::Error, 1),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Answer::new(resp.map(ResponseBody::upstream), Outcome::Upstream, 1);
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        let guard = Open(Arc::clone(&self.tunnels));
        self.tunnels.open.fetch_add(1, Ordering::SeqCst);
        let mut close = self.tunnels.close.subscribe();
        tokio::spawn(async move {
            let _open = guard;
            let (client, upstream) = tokio::join!(client_side, upstream_side);
            let (Ok(client), Ok(upstream)) = (client, upstream) else {
                debug!("upgrade did not complete on both sides");
                return;
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    debug!(?copied, "tunnel closed");
                }
                _ = close.wait_for(|closed| *closed) => debug!("tunnel closed by shutdown"),
            }
        });
        let (parts, _) = resp.into_parts();
        Answer::new(
            Response::from_parts(parts, ResponseBody::full(bytes::Bytes::new())),
            Outcome::Upstream,
            1,
        )
    }
}
