//! Unix signals: SIGTERM and SIGINT start the graceful shutdown, SIGHUP reloads the config.
//!
//! SIGHUP's default action kills the process, and a config-management tool may send one
//! the moment it has written a file, so [`hold_hangups`] takes SIGHUP over as the very
//! first thing `main` does: a hangup that arrives before the app exists is dropped, not
//! fatal. Reloads read and validate the file on a blocking thread: a large file takes
//! seconds to parse, and on a one-worker runtime that would stall every request and `/live`.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use super::lifecycle::Lifecycle;

/// What SIGHUP does: re-read the config; `Err` says why the old one stays.
pub type Reload = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Installs the process-wide SIGHUP handler at once, before the runtime or the config
/// exist. The handler stays for the life of the process; [`install`] later listens to it.
/// Costs one short-lived current-thread runtime (an epoll descriptor) at start-up.
pub fn hold_hangups() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _entered = runtime.enter();
    signal(SignalKind::hangup()).map(drop)
}

/// Listens for signals for the life of the process: TERM and INT begin `lifecycle`'s
/// shutdown, HUP runs `reload` (given, not looked up, so this module needs nothing of `app`).
pub fn install(lifecycle: Arc<Lifecycle>, reload: Reload) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); lifecycle.begin_shutdown(); }
                _ = int.recv() => { info!("SIGINT: shutting down"); lifecycle.begin_shutdown(); }
            }
        }
    });
    // One reload at a time, in the order asked; hangups during a reload fold into one.
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reload = Arc::clone(&reload);
            match tokio::task::spawn_blocking(move || reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "config reload failed; the old config stays"),
                Err(e) => error!(error = %e, "config reload stopped; the old config stays"),
            }
        }
    });
    Ok(())
}
