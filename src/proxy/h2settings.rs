//! The HTTP/2 server preface, read as it passes by: hyper does not tell how many streams
//! the upstream allows, and the pool needs that number to know when to open another
//! connection (see `h2pool`). Only the first frame is parsed (RFC 9113 §3.4: a server's
//! preface is a SETTINGS frame); after it, each read costs one branch.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The server's first frame as it arrives, until `SETTINGS_MAX_CONCURRENT_STREAMS` is known.
pub struct Preface {
    bytes: Vec<u8>,
    tx: oneshot::Sender<usize>,
}

/// The frame header length and the largest SETTINGS payload we read (RFC 9113 §4.1, §6.5).
const HEADER: usize = 9;
const MAX_SETTINGS: usize = 16_384;
/// No limit until the server says one (RFC 9113 §6.5.2).
pub const UNLIMITED: usize = u32::MAX as usize;

impl Preface {
    /// Adds bytes read; returns the limit once the first frame is complete.
    fn feed(&mut self, read: &[u8]) -> Option<usize> {
        let want = HEADER + MAX_SETTINGS;
        let take = read.len().min(want.saturating_sub(self.bytes.len()));
        self.bytes.extend_from_slice(&read[..take]);
        let b = &self.bytes;
        if b.len() < HEADER {
            return None;
        }
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        if b[3] != 0x4 || len > MAX_SETTINGS {
            // Not the SETTINGS a server must send first: hyper will fail the connection.
            return Some(UNLIMITED);
        }
        let payload = b.get(HEADER..HEADER + len)?;
        let limit = payload
            .chunks_exact(6)
            .rfind(|e| u16::from_be_bytes([e[0], e[1]]) == 0x3)
            .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]) as usize);
        Some(limit.unwrap_or(UNLIMITED))
    }
}

/// The connection's bytes, watched until the server's preface has been read.
pub struct Sniffer<T> {
    inner: T,
    preface: Option<Preface>,
}

impl<T> Sniffer<T> {
    /// Wraps a connection; `tx` gets the server's stream limit once its preface is read.
    pub fn new(inner: T, tx: oneshot::Sender<usize>) -> Sniffer<T> {
        let preface = Preface {
            bytes: Vec::new(),
            tx,
        };
        Sniffer {
            inner,
            preface: Some(preface),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if let Some(preface) = self.preface.as_mut() {
            if let Some(limit) = preface.feed(&buf.filled()[before..]) {
                if let Some(preface) = self.preface.take() {
                    let _ = preface.tx.send(limit);
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffer<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preface() -> (Preface, oneshot::Receiver<usize>) {
        let (tx, rx) = oneshot::channel();
        (
            Preface {
                bytes: Vec::new(),
                tx,
            },
            rx,
        )
    }

    #[test]
    fn reads_the_stream_limit_across_reads() {
        let (mut p, _rx) = preface();
        // SETTINGS, 12 bytes: INITIAL_WINDOW_SIZE=65535, MAX_CONCURRENT_STREAMS=1.
        let frame = [
            0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff, 0, 3, 0, 0, 0, 1,
        ];
        assert_eq!(p.feed(&frame[..5]), None);
        assert_eq!(p.feed(&frame[5..15]), None);
        assert_eq!(p.feed(&frame[15..]), Some(1));
    }

    #[test]
    fn no_limit_when_the_server_names_none() {
        let (mut p, _rx) = preface();
        assert_eq!(p.feed(&[0, 0, 0, 4, 0, 0, 0, 0, 0]), Some(UNLIMITED));
    }
}
