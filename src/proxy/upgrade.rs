//! Upgrades (WebSocket and any other `Connection: Upgrade` protocol) pass through as a
//! byte stream in both directions once the upstream has answered `101 Switching Protocols`.
//!
//! The handshake is an ordinary request in every other way (SPEC §7.8): it takes a
//! rate-limit token and goes through the same attempt loop as any request (breaker permit,
//! `per_try_timeout`, retry budget, metrics), so a 101 counts as a success for the breaker
//! and a connect failure, a reset or a 5xx as a failure. It is resent only when nothing
//! was sent (a connect failure): it is never marked resendable, and after a 101 both sides
//! may already have sent bytes.
//!
//! Tunnels are capped (`limits.max_tunnels`; beyond it 503 `overloaded` before the upstream
//! is asked): each one holds two descriptors for as long as it lasts, and without a cap
//! WebSockets exhaust the descriptor limit and `accept` starts failing for everyone. A
//! slot is reserved before the handshake, so concurrent handshakes cannot overshoot.
//! `outrigger_tunnels_open` counts the tunnels established. The tunnel outlives the HTTP
//! exchange, so hyper's graceful shutdown cannot see it; [`Tunnels`] counts them so that
//! shutdown waits for them (up to `shutdown.timeout`) and then closes whatever is left.
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
use prometheus::IntGauge;
use tokio::sync::{watch, Notify};
use tracing::debug;

use super::attempts::{Attempts, Ended};
use super::body::{self, ResponseBody};
use super::failure::Failure;
use super::forward::{rate_limited, Answer, Ctx};
use super::{respond, tunnel, Outcome, Proxy};

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
            .flat_map(crate::vocab::list::tokens)
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The open tunnels (and handshakes holding a slot), for the cap and for shutdown.
#[derive(Debug)]
pub struct Tunnels {
    /// Slots taken: tunnels open plus handshakes under way.
    open: AtomicUsize,
    idle: Notify,
    close: watch::Sender<bool>,
    /// `outrigger_tunnels_open`: tunnels established.
    gauge: IntGauge,
}

/// A slot under the cap, released on drop.
struct Slot {
    tunnels: Arc<Tunnels>,
    established: bool,
}

impl Slot {
    /// The handshake succeeded: the tunnel is counted as open.
    fn establish(&mut self) {
        self.established = true;
        self.tunnels.gauge.inc();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.established {
            self.tunnels.gauge.dec();
        }
        if self.tunnels.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tunnels.idle.notify_waiters();
        }
    }
}

impl Tunnels {
    /// No tunnel yet; `gauge` follows the tunnels established.
    pub fn new(gauge: IntGauge) -> Tunnels {
        Tunnels {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            close: watch::channel(false).0,
            gauge,
        }
    }

    /// How many tunnels are open (handshakes under way included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A slot when fewer than `max` are taken.
    fn reserve(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let taken = self.open.fetch_add(1, Ordering::SeqCst);
        let slot = Slot {
            tunnels: Arc::clone(self),
            established: false,
        };
        (taken < max).then_some(slot)
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
    /// Forwards an upgrade request (once, unless nothing was sent); on 101, splices the two
    /// connections.
    pub(super) async fn upgrade(&self, ctx: &Ctx<'_>, mut req: Request<Incoming>) -> Answer {
        let limits = &ctx.rt.config.limits;
        let Some(mut slot) = self.tunnels.reserve(limits.max_tunnels) else {
            return Answer::new(respond::failure(Failure::Overloaded), Outcome::Error, 0);
        };
        let client_side = hyper::upgrade::on(&mut req);
        let protocol = req.headers().get(UPGRADE).cloned();
        let (mut parts, body) = req.into_parts();
        let reading = parts
            .extensions
            .remove::<crate::server::watchdog::Reading>();
        let Some(mut head) = ctx.head(&mut parts) else {
            return Answer::bad_head();
        };
        // The body streams, never kept for a replay.
        let prepared = body::prepare(
            body,
            reading,
            &head.headers,
            false,
            limits.request_body_buffer,
        );
        let body = match prepared.await {
            Ok(prepared) => prepared,
            Err(_) => {
                let message = "the request body could not be read";
                return Answer::refused(StatusCode::BAD_REQUEST, message);
            }
        };
        let limiter_key = match self.take_token(ctx, &head.headers).await {
            Ok(key) => key,
            Err(wait) => return Answer::new(rate_limited(wait), Outcome::Error, 0),
        };
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            head.headers.insert(UPGRADE, protocol);
        }
        let attempts = Attempts {
            client: &ctx.rt.client,
            route: ctx.route,
            budget: &ctx.state.budget,
            breaker: ctx.state.breaker.as_deref(),
            limiter: ctx.state.limiter.as_deref().zip(limiter_key.as_deref()),
            slots: ctx.state.concurrency.as_deref(),
            metrics: &self.metrics,
            series: &ctx.state.series,
            head: &head,
            body,
            may_resend: false,
            deadline: ctx.deadline,
            // An upgrade is never sent twice.
            hedge: None,
        };
        let finished = attempts.run().await;
        let n = finished.attempts;
        let mut resp = match finished.ended {
            Ended::Answered(resp) => *resp,
            Ended::Failed(f) => return Answer::new(respond::failure(f), Outcome::Error, n),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Answer::new(resp.map(ResponseBody::upstream), Outcome::Upstream, n);
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        slot.establish();
        let idle = limits.tunnel_idle_timeout;
        let mut close = self.tunnels.close.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let (client, upstream) = tokio::join!(client_side, upstream_side);
            let (Ok(client), Ok(upstream)) = (client, upstream) else {
                debug!("upgrade did not complete on both sides");
                return;
            };
            let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                spliced = tunnel::splice(client, upstream, idle) => match spliced {
                    Ok(true) => debug!("tunnel closed: idle"),
                    ended => debug!(?ended, "tunnel closed"),
                },
                _ = close.wait_for(|closed| *closed) => debug!("tunnel closed by shutdown"),
            }
        });
        let (parts, _) = resp.into_parts();
        Answer::new(
            Response::from_parts(parts, ResponseBody::full(bytes::Bytes::new())),
            Outcome::Upstream,
            n,
        )
    }
}
