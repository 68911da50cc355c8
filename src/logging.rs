//! Logs: one JSON object a line on stdout by default, or text for people (SPEC §6).
//!
//! The access log is one `info` line with target `access` per request, written by
//! `access_log` (on when the filter lets `access` at `info` through); failed attempts are
//! `warn` events. Neither ever carries a body, a query string,
//! `Authorization` or `Cookie`: the proxy logs the path only.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber. `level` is a level (`info`) or a filter (`outrigger=debug`).
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level `{level}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| e.to_string())?;
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        crate::access_log::enable(format);
    }
    Ok(())
}
