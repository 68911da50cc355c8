//! The access log: one line per request (SPEC §6), written by hand.
//!
//! Why not through `tracing` like every other event? Profiling (callgrind, see
//! `docs/benchmarks.md`) showed the generic JSON formatter spending about 19,000
//! instructions on each access line, a quarter of all the work per proxied request: it
//! serialises through serde, escapes every string and formats the timestamp from scratch.
//! This writer builds the same JSON object (or the same text line) into a reused buffer with
//! a timestamp prefix cached per second, and hands it to stdout in one write. Other events
//! (warnings, lifecycle) still go through `tracing`.
//!
//! Only the path is logged, never the query string, a body, `Authorization` or `Cookie`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use crate::vocab::json::escape_into;
use crate::vocab::time::write_log_timestamp;

/// How log lines are written: JSON objects, or text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

static SINK: OnceLock<LogFormat> = OnceLock::new();

/// Turns the access log on in this format (off until called: tests and `check` are quiet).
pub fn enable(format: LogFormat) {
    let _ = SINK.set(format);
}

/// One request's line.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub attempts: u32,
    pub duration: Duration,
}

thread_local! {
    /// The line being written, its capacity kept from one request to the next.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Whether the access log is on (a request need not keep what only the line uses).
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Writes the line for one request, if the access log is on.
pub fn record(entry: &Entry<'_>) {
    let Some(format) = SINK.get() else { return };
    LINE.with(|cell| {
        let line = &mut *cell.borrow_mut();
        line.clear();
        match format {
            LogFormat::Json => json(line, entry),
            LogFormat::Text => text(line, entry),
        }
        if let Some((trace_id, span_id)) = crate::otel::ids() {
            trace_ids(line, format, &trace_id, &span_id);
        }
        line.push('\n');
        // A failed write to stdout cannot be reported anywhere better; the request is served.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    });
}

fn json(line: &mut String, e: &Entry<'_>) {
    line.push_str(r#"{"timestamp":""#);
    let _ = write_log_timestamp(line);
    line.push_str(r#"","level":"INFO","message":"request","request_id":""#);
    escape_into(line, e.request_id);
    line.push_str(r#"","method":""#);
    escape_into(line, e.method);
    line.push_str(r#"","path":""#);
    escape_into(line, e.path);
    let _ = write!(
        line,
        r#"","route":"{}","status":{},"outcome":"{}","attempts":{},"duration_ms":{:.3},"target":"access"}}"#,
        e.route,
        e.status,
        e.outcome,
        e.attempts,
        e.duration.as_secs_f64() * 1000.0
    );
}

/// A traced request's line carries its trace and server span ids (SPEC §7.5).
fn trace_ids(line: &mut String, format: &LogFormat, trace_id: &str, span_id: &str) {
    match format {
        LogFormat::Json => {
            line.pop(); // the closing brace
            let _ = write!(line, r#","trace_id":"{trace_id}","span_id":"{span_id}"}}"#);
        }
        LogFormat::Text => {
            let _ = write!(line, " trace_id={trace_id} span_id={span_id}");
        }
    }
}

fn text(line: &mut String, e: &Entry<'_>) {
    let _ = write_log_timestamp(line);
    let _ = write!(
        line,
        "  INFO access: request request_id={} method={} path={} route={} status={} outcome={} attempts={} duration_ms={:.3}",
        e.request_id,
        e.method,
        e.path,
        e.route,
        e.status,
        e.outcome,
        e.attempts,
        e.duration.as_secs_f64() * 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            request_id: "abc",
            method: "GET",
            path: "/a\"b",
            route: "default",
            status: 200,
            outcome: "upstream",
            attempts: 1,
            duration: Duration::from_micros(1500),
        }
    }

    #[test]
    fn json_lines_are_valid_objects_with_every_field() {
        let mut line = String::new();
        json(&mut line, &entry());
        let (stamp, rest) = line.split_at(r#"{"timestamp":"2026-11-28T04:00:00.000042Z""#.len());
        assert!(
            stamp.starts_with(r#"{"timestamp":"20"#) && stamp.ends_with(r#"Z""#),
            "{line}"
        );
        assert_eq!(
            rest,
            r#","level":"INFO","message":"request","request_id":"abc","method":"GET","path":"/a\"b","route":"default","status":200,"outcome":"upstream","attempts":1,"duration_ms":1.500,"target":"access"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["path"], "/a\"b");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\u{1}\\");
        assert_eq!(out, "a\\u0001\\\\");
    }
}
