//! The process lifecycle as shared state: ready, draining, stopping.
//!
//! SIGTERM, SIGINT and `POST /shutdown` all call [`Lifecycle::begin_shutdown`]; the app
//! then runs the drain sequence (see `app`). `/ready` reads [`Lifecycle::is_ready`].

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Shared by the app, the admin endpoints and the signal handlers.
#[derive(Debug)]
pub struct Lifecycle {
    ready: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            ready: AtomicBool::new(false),
            stop: watch::channel(false).0,
        }
    }
}

impl Lifecycle {
    /// Marks the listeners bound and the config loaded.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !*self.stop.borrow()
    }

    /// Starts the graceful shutdown; calling it again does nothing more.
    pub fn begin_shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once a shutdown has begun.
    pub async fn stopping(&self) {
        let mut rx = self.stop.subscribe();
        // An error means the sender is gone, which only happens at exit.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}
