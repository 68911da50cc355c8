//! Telling a listener's connections to leave, and knowing when they all have.
//!
//! Why not hyper-util's `GracefulShutdown`: its signal and its wait are one call that
//! consumes it, so connections accepted after the signal could no longer be watched. The
//! proxy listener needs exactly that: clients are told to leave when the drain *begins*
//! (HTTP/1.1 answers carry `Connection: close`, HTTP/2 gets GOAWAY), while the listener
//! still accepts for `drain_delay`, because endpoints take time to notice that `/ready`
//! went 503. A connection accepted during the drain is told to leave as soon as it has
//! started its first request, so it is served once and then goes elsewhere.
//!
//! Each connection holds a receiver for its whole life; the drain is finished when the
//! last receiver is gone. Nothing here is touched per request.

use tokio::sync::watch;

/// One per listener.
#[derive(Debug)]
pub struct Drain {
    /// `true` once connections are told to leave.
    leave: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            leave: watch::channel(false).0,
        }
    }
}

impl Drain {
    /// A receiver a connection holds until it is closed: it says when to leave, and it
    /// keeps [`Drain::finished`] waiting.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leave.subscribe()
    }

    /// Tells every connection, present and future, to leave after its current request.
    /// Calling it again does nothing more.
    pub fn begin(&self) {
        self.leave.send_replace(true);
    }

    /// Resolves once every connection that was handed a receiver is closed.
    pub async fn finished(&self) {
        self.leave.closed().await;
    }
}

/// Resolves once `leave` says the connection should leave (or its drain is gone).
pub async fn told_to_leave(leave: &mut watch::Receiver<bool>) {
    // An error means the `Drain` itself is gone, which only happens at exit.
    let _ = leave.wait_for(|leave| *leave).await;
}
