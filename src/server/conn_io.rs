//! The socket of an HTTP/1 client connection as hyper sees it, so that the accept loop can
//! take the connection back from hyper between requests (`accept`'s parking).
//!
//! Two things are added to the `TcpStream`:
//! - bytes hyper had already read when the connection was taken back (the start of the
//!   next request) are handed to the next hyper connection first;
//! - whether hyper's last write was refused for want of room (the client is not reading),
//!   recorded in the connection's [`Clock`]: hyper then still holds response bytes, and
//!   taking the connection back would lose them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::watchdog::Clock;

/// A client's socket, with what was read of it and not yet served.
pub struct ConnIo {
    stream: TcpStream,
    unread: Bytes,
    clock: Arc<Clock>,
}

impl ConnIo {
    pub fn new(stream: TcpStream, clock: Arc<Clock>) -> ConnIo {
        ConnIo {
            stream,
            unread: Bytes::new(),
            clock,
        }
    }

    /// Bytes to hand out before reading the socket again.
    pub fn set_unread(&mut self, unread: Bytes) {
        self.unread = unread;
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn wrote<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.clock.write_blocked(poll.is_pending());
        poll
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            if this.unread.is_empty() {
                // Let go of the allocation as soon as it is served.
                this.unread = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
