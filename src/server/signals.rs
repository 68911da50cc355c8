//! Unix signals: SIGTERM and SIGINT start the graceful shutdown, SIGHUP reloads the config.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::app::App;

/// Listens for signals for the life of the process.
pub fn install(app: Arc<App>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); app.lifecycle.begin_shutdown(); }
                _ = int.recv() => { info!("SIGINT: shutting down"); app.lifecycle.begin_shutdown(); }
                _ = hup.recv() => {
                    if let Err(e) = app.reload() {
                        error!(error = %e, "config reload failed; the old config stays");
                    }
                }
            }
        }
    });
    Ok(())
}
