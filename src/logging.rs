//! Logs: one JSON object a line on stdout by default, or text for people (SPEC §6).
//!
//! The access log is one `info` line with target `access` per request, written by
//! `access_log` (on when the filter lets `access` at `info` through); failed attempts are
//! `warn` events, written as JSON by `event_json` (as text by `tracing-subscriber`). Neither
//! ever carries a body, a query string, `Authorization` or `Cookie`: the proxy logs the
//! path only.

use tracing_subscriber::EnvFilter;

use crate::event_json::JsonLine;

// Defined beside the access log, which writes both formats by hand: `access_log` then
// needs nothing from here, and this module (which switches it on) depends on it alone.
pub use crate::access_log::LogFormat;

/// The levels a filter may name, least to most verbose.
pub const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `--log-level` value: a level, or comma-separated `TARGET=LEVEL` directives
/// (`info,access=off`). `EnvFilter` alone takes any word as a target name, so `warning` or
/// `verbose` would quietly mean "only the target called warning" and switch all logging off.
pub fn check_level(level: &str) -> Result<(), String> {
    let valid = |l: &str| LEVELS.iter().any(|v| v.eq_ignore_ascii_case(l.trim()));
    let bad = level
        .split(',')
        .find(|directive| match directive.rsplit_once('=') {
            Some((target, l)) => target.trim().is_empty() || !valid(l),
            None => !valid(directive),
        });
    match bad {
        None => EnvFilter::try_new(level).map(drop).map_err(|e| e.to_string()),
        Some(d) => Err(format!(
            "`{}` is not a log level; use one of {} or TARGET=LEVEL pairs such as `info,access=off`",
            d.trim(),
            LEVELS.join(", ")
        )),
    }
}

/// Installs the global subscriber. `level` is a level (`info`) or a filter (`outrigger=debug`),
/// as [`check_level`] accepts.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    check_level(level).map_err(|e| format!("--log-level: {e}"))?;
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level `{level}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match format {
        LogFormat::Json => builder.event_format(JsonLine).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| e.to_string())?;
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        crate::access_log::enable(format);
    }
    Ok(())
}
