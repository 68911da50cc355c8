//! The byte stream of an upgraded connection, once both sides switched protocols.
//!
//! A tunnel holds two descriptors and a task for as long as it lasts, and a WebSocket may
//! last for days, so three things bound it:
//!
//! - **an idle timeout** (`limits.tunnel_idle_timeout`): a tunnel with no bytes either way
//!   for that long is closed. Reads are marked with one relaxed store (no clock read per
//!   read); a watchdog wakes four times per timeout and closes the tunnel after a full
//!   timeout without a mark, so a tunnel is closed between 1 and 1.25 timeouts after its
//!   last byte;
//! - **TCP keepalive on both sides** ([`KEEPALIVE_IDLE`] and friends): a peer that vanished
//!   without a FIN (a laptop closed, a NAT that forgot the flow) is noticed by the kernel
//!   and the tunnel reaped, even while the idle timeout is long. The client side inherits
//!   it from the proxy listener ([`keep_accepted_alive`]: Linux copies socket options to
//!   accepted sockets, so it costs no system call per connection); the upstream side gets
//!   it from the connector, once per new connection;
//! - **a cap** (`limits.max_tunnels`, in `upgrade`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// Silence before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel drops the connection (about 90 s after the idle).
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Turns TCP keepalive on for every connection `listener` will accept.
pub fn keep_accepted_alive(listener: &TcpListener) -> io::Result<()> {
    let params = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(listener).set_tcp_keepalive(&params)
}

/// Copies both ways until either side closes, or until no byte moved for `idle`.
/// `Ok(true)` when closed for idleness.
pub async fn splice<A, B>(client: A, upstream: B, idle: Duration) -> io::Result<bool>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicBool::new(false);
    let mut client = Watched {
        io: client,
        moved: &moved,
    };
    let mut upstream = Watched {
        io: upstream,
        moved: &moved,
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied.map(|_| false),
        () = quiet_for(&moved, idle) => Ok(true),
    }
}

/// Resolves once `moved` stayed unset for `idle` (to within a quarter of it).
async fn quiet_for(moved: &AtomicBool, idle: Duration) {
    let tick = idle / 4;
    let mut quiet = Duration::ZERO;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while quiet < idle {
        ticks.tick().await;
        if moved.swap(false, Ordering::Relaxed) {
            quiet = Duration::ZERO;
        } else {
            quiet += tick;
        }
    }
}

/// One side of a tunnel, marking `moved` whenever bytes are read from it. Every byte
/// written was read from the other side first, so reads alone see all traffic.
struct Watched<'a, T> {
    io: T,
    moved: &'a AtomicBool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_and_a_busy_one_does_not() {
        let idle = Duration::from_secs(8);
        let (client, mut far_client) = duplex(64);
        let (upstream, mut far_upstream) = duplex(64);
        let started = tokio::time::Instant::now();
        let spliced = tokio::spawn(splice(client, upstream, idle));
        // Traffic every 5 s keeps it open past several timeouts.
        let mut buf = [0u8; 2];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            far_client.write_all(b"hi").await.unwrap();
            far_upstream.read_exact(&mut buf).await.unwrap();
        }
        assert!(!spliced.is_finished());
        let last = tokio::time::Instant::now();
        assert!(spliced.await.unwrap().unwrap(), "closed for idleness");
        let quiet = last.elapsed();
        assert!(
            quiet >= idle && quiet <= idle + idle / 4 + Duration::from_secs(1),
            "{quiet:?}"
        );
        assert!(started.elapsed() > Duration::from_secs(30));
    }
}
