//! Log events other than the access line (failed attempts, lifecycle) as JSON lines,
//! written by hand (SPEC §6).
//!
//! Why not `tracing-subscriber`'s own JSON formatter? It serialises through serde into an
//! adaptor that checks every piece for UTF-8 again, and formats its timestamp from scratch:
//! about 15,000 instructions a line (callgrind: `FAIL=1 bash bench/per_request.sh` with and
//! without `warn` lines). That is paid where the proxy can least afford it: SPEC §6 asks
//! for a `warn` event per failed attempt, so in an outage every request writes three of
//! them, a third of a failing request's work. [`JsonLine`] writes the same object straight
//! into the subscriber's line buffer, at about 5,000 a line: the timestamp shared with the
//! access log (the second cached per thread), then the level, the event's fields in the
//! order it recorded them, the target, and the trace and span ids when the request is
//! traced (SPEC §7.5, as the access line carries them).
//!
//! Field values keep the types `tracing` records: integers, floats and booleans as JSON
//! numbers and booleans (a float keeps its point or exponent, `1.0` and `1e300`; one that
//! is not finite is `null`), everything else as a string (`%value` by `Display`, `?value`
//! by `Debug`), escaped. A value whose `Display` or `Debug` fails ends its string where it
//! failed: the line stays one JSON object, where tracing-subscriber would have put a line of
//! plain text on stdout. An event bridged from the `log` crate has the record's own target
//! and level. Spans are not logged. A test formats the same events with tracing-subscriber's
//! JSON formatter and compares.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use crate::vocab::json::escape_to;
use crate::vocab::time::write_log_timestamp;

/// The JSON line format of every `tracing` event (`--log-format json`, the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_line(&mut out, event, crate::otel::ids())
    }
}

/// One event's line, newline included; `ids` are the trace and span ids of a traced request.
fn write_line(
    out: &mut impl fmt::Write,
    event: &Event<'_>,
    ids: Option<(String, String)>,
) -> fmt::Result {
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    out.write_str(r#"{"timestamp":""#)?;
    write_log_timestamp(out)?;
    out.write_str(r#"","level":""#)?;
    out.write_str(meta.level().as_str())?;
    out.write_char('"')?;
    let mut fields = Fields {
        out,
        result: Ok(()),
    };
    event.record(&mut fields);
    let Fields { out, result } = fields;
    result?;
    out.write_str(r#","target":""#)?;
    escape_to(out, meta.target())?;
    out.write_char('"')?;
    if let Some((trace_id, span_id)) = ids {
        write!(out, r#","trace_id":"{trace_id}","span_id":"{span_id}""#)?;
    }
    out.write_str("}\n")
}

/// Writes each field as `,"name":value`; the first error stops the rest.
struct Fields<'a, W: fmt::Write> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> Fields<'_, W> {
    /// `,"name":` then the value `write` writes.
    fn entry(&mut self, field: &Field, write: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_str(",\"")?;
                escape_to(self.out, field.name())?;
                self.out.write_str("\":")?;
                write(self.out)
            })();
        }
    }

    /// A value written as a JSON string. An error from the value's own formatting ends the
    /// string there: the line must stay one JSON object.
    fn string(&mut self, field: &Field, write: impl FnOnce(&mut Escaping<'_, W>) -> fmt::Result) {
        self.entry(field, |out| {
            out.write_char('"')?;
            let _ = write(&mut Escaping(out));
            out.write_char('"')
        });
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, |out| out.write_str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, |out| write!(out, "{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            // `Debug` keeps a point or an exponent (`1.0`, `1e300`): still a JSON number.
            self.entry(field, |out| write!(out, "{value:?}"));
        } else {
            self.entry(field, |out| out.write_str("null"));
        }
    }
}

/// A `fmt::Write` that escapes what passes through it for a JSON string.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_to(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::Level;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    /// The text a subscriber with this format writes while `f` runs.
    fn text_of(f: impl FnOnce()) -> String {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .event_format(JsonLine)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        text
    }

    fn parse(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_attempt_is_one_object_with_its_fields_typed_and_in_order() {
        let reason = "status-503";
        let text = text_of(|| {
            tracing::warn!(route = "default", attempt = 2u32, reason = %reason, backoff_ms = 25u64, "upstream attempt failed; retrying");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        let l = parse(text.trim_end());
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["message"], "upstream attempt failed; retrying");
        assert_eq!(l["route"], "default");
        assert_eq!(l["attempt"], 2);
        assert_eq!(l["reason"], "status-503");
        assert_eq!(l["backoff_ms"], 25);
        assert_eq!(l["target"], module_path!());
        let stamp = l["timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), "2026-11-28T04:00:00.000042Z".len(), "{stamp}");
        assert!(l.get("trace_id").is_none(), "not traced: {l}");
        assert_eq!(l.as_object().unwrap().len(), 8, "{l}");
        // The keys in the order tracing-subscriber's JSON formatter wrote them.
        let keys = [
            "timestamp",
            "level",
            "message",
            "route",
            "attempt",
            "reason",
            "backoff_ms",
            "target",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    /// Events of every kind of field value, bridged `log` records and a failing value.
    fn events() {
        let err = std::io::Error::other("broken \"pipe\"\n");
        tracing::error!(
            negative = -3i64,
            yes = true,
            whole = 1.0f64,
            huge = 1e300f64,
            tiny = -2.5e-8f64,
            nan = f64::NAN,
            inf = f64::INFINITY,
            big = u128::MAX,
            text = "tab\there \\ \u{1} \r\n{\"forged\":1} é",
            debug = ?Some("quoted \"x\""),
            error = &err as &(dyn std::error::Error + 'static),
            "line one\nline \"two\""
        );
        tracing::info!(only = 7u64);
        tracing::debug!(target: "some::other", "no fields");
        tracing_log::format_trace(
            &tracing_log::log::Record::builder()
                .args(format_args!("from the log crate"))
                .level(tracing_log::log::Level::Warn)
                .target("legacy::module")
                .build(),
        )
        .unwrap();
    }

    #[test]
    fn every_kind_of_value_stays_valid_json() {
        let text = text_of(events);
        assert_eq!(
            text.lines().count(),
            4,
            "a newline in a value is escaped: {text}"
        );
        let l = parse(text.lines().next().unwrap());
        assert_eq!(l["level"], "ERROR");
        assert_eq!(l["message"], "line one\nline \"two\"");
        assert_eq!(l["negative"], -3);
        assert_eq!(l["yes"], true);
        assert!(
            l["whole"].is_f64() && l["whole"] == 1.0,
            "a float stays a float: {l}"
        );
        assert_eq!(l["huge"], 1e300);
        assert!(l["nan"].is_null() && l["inf"].is_null());
        assert_eq!(l["big"], u128::MAX.to_string());
        assert_eq!(l["text"], "tab\there \\ \u{1} \r\n{\"forged\":1} é");
        assert_eq!(l["debug"], "Some(\"quoted \\\"x\\\"\")");
        assert_eq!(l["error"], "broken \"pipe\"\n");
        let bridged = parse(text.lines().nth(3).unwrap());
        assert_eq!(
            (&bridged["target"], &bridged["level"]),
            (&"legacy::module".into(), &"WARN".into())
        );
    }

    /// The keys of a JSON object, in the order written.
    struct Keys(Vec<String>);

    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visitor)
        }
    }

    /// The same events through tracing-subscriber's own JSON formatter, as outrigger had it
    /// configured, give the same objects with the same keys in the same order (timestamps
    /// aside).
    #[test]
    fn lines_match_tracing_subscriber_s_json_formatter() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let theirs = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(theirs, events);
        let theirs = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let ours = text_of(events);
        assert_eq!(
            ours.lines().count(),
            theirs.lines().count(),
            "{ours}\n{theirs}"
        );
        for (o, t) in ours.lines().zip(theirs.lines()) {
            let (mut ov, mut tv) = (parse(o), parse(t));
            ov.as_object_mut().unwrap().remove("timestamp");
            tv.as_object_mut().unwrap().remove("timestamp");
            assert_eq!(ov, tv, "\nours:   {o}\ntheirs: {t}");
            let order = |line: &str| serde_json::from_str::<Keys>(line).unwrap().0;
            assert_eq!(order(o), order(t), "\nours:   {o}\ntheirs: {t}");
        }
    }

    #[test]
    fn a_value_whose_formatting_fails_still_leaves_one_json_line() {
        struct Bad;
        impl fmt::Debug for Bad {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("half \"")?;
                Err(fmt::Error)
            }
        }
        let text = text_of(|| tracing::info!(d = ?Bad, after = 1u64, "m"));
        assert_eq!(text.lines().count(), 1, "{text}");
        let l = parse(text.trim_end());
        assert_eq!(
            (&l["d"], &l["after"]),
            (&"half \"".into(), &1.into()),
            "{l}"
        );
    }

    /// Writes each event's line with fixed ids, as for a traced request.
    struct Traced(Arc<Mutex<String>>);

    impl<S: Subscriber> Layer<S> for Traced {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let ids = (
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned(),
            );
            write_line(&mut *self.0.lock().unwrap(), event, Some(ids)).unwrap();
        }
    }

    #[test]
    fn a_traced_request_s_events_carry_its_ids() {
        let out = Arc::new(Mutex::new(String::new()));
        let subscriber = tracing_subscriber::registry().with(Traced(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(attempt = 1u32, "upstream attempt failed; retrying");
        });
        let l = parse(out.lock().unwrap().trim_end());
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(l["span_id"], "00f067aa0ba902b7");
        assert_eq!(l["attempt"], 1);
    }
}
