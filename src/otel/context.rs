//! The W3C trace context of one request and the sampling decision made from it, before
//! any OpenTelemetry object exists.
//!
//! Why by hand: at `sample_ratio: 0.01` ninety-nine requests in a hundred are not sampled,
//! and for those the SDK's path (the propagator's extract, a non-recording span, a
//! `Context`, the propagator's inject) cost about a tenth of a proxied request. What such a
//! request needs is small: a trace id, a span id of ours, the unsampled flag, so that the
//! upstream's `traceparent` names our (unrecorded) span as its parent. This file parses the
//! client's `traceparent` (W3C Trace Context, version 00, strictly), decides, and formats
//! that header; the SDK is asked only for sampled requests, with the same decision.
//!
//! The decision is the one `ParentBased(TraceIdRatioBased(ratio))` makes, which stays the
//! SDK's sampler for the spans it builds: a valid parent's sampled flag is followed either
//! way; a new trace is sampled by the SDK's own trace-id-ratio rule
//! ([`Sampler::TraceIdRatioBased`], asked through `ShouldSample`) on the trace id drawn
//! here. A sampled new trace must then get *that* trace id from the SDK, which draws its
//! own: [`Ids`], the provider's id generator, hands it over through a thread-local set for
//! the duration of that one call ([`as_root`]; same thread, synchronous).

use std::cell::Cell;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, Sampler, SamplingDecision, ShouldSample};

/// The W3C header that names the parent span.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C header of vendor-specific trace state, carried with `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A valid `traceparent`: its trace id, its span id (our parent) and its sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// What the sampler decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The client's valid parent, if it sent one.
    pub parent: Option<Parent>,
    /// The request's trace: the parent's, or a new one.
    pub trace_id: u128,
    pub sampled: bool,
}

/// Decides for a request with these headers; `root` is the `TraceIdRatioBased` sampler for
/// new traces. When the request is not sampled, its `traceparent` becomes ours here (a span
/// id of ours in its trace, flagged unsampled), and a new trace drops the client's
/// `tracestate`, which belonged to no valid parent. A sampled request's headers are left
/// for the SDK. One lookup of `traceparent` either way.
pub fn settle(headers: &mut HeaderMap, root: &Sampler) -> Decision {
    let decision = match headers.entry(&TRACEPARENT) {
        Entry::Occupied(mut entry) => {
            let decision = decide(Some(entry.get()), root);
            if !decision.sampled {
                entry.insert(unsampled(&decision));
            }
            decision
        }
        Entry::Vacant(entry) => {
            let decision = decide(None, root);
            if !decision.sampled {
                entry.insert(unsampled(&decision));
            }
            decision
        }
    };
    if !decision.sampled && decision.parent.is_none() {
        headers.remove(&TRACESTATE);
    }
    decision
}

fn unsampled(decision: &Decision) -> HeaderValue {
    traceparent(decision.trace_id, new_span_id(), false)
}

/// Decides for a request whose `traceparent` header is `header`.
pub fn decide(header: Option<&HeaderValue>, root: &Sampler) -> Decision {
    if let Some(parent) = header.and_then(|h| parse(h.as_bytes())) {
        return Decision {
            parent: Some(parent),
            trace_id: parent.trace_id,
            sampled: parent.sampled,
        };
    }
    let trace_id = nonzero(fastrand::u128(..));
    let verdict = root.should_sample(
        None,
        TraceId::from(trace_id),
        "",
        &SpanKind::Server,
        &[],
        &[],
    );
    Decision {
        parent: None,
        trace_id,
        sampled: verdict.decision == SamplingDecision::RecordAndSample,
    }
}

/// `n`, or 1 in the 2^-128 case that it is zero (W3C reserves zero for "none").
fn nonzero(n: u128) -> u128 {
    n.max(1)
}

/// A new span id (never zero, which W3C reserves for "none").
pub fn new_span_id() -> u64 {
    fastrand::u64(..).max(1)
}

/// Parses a `traceparent` value: `VV-TTTT…(32)-SSSS…(16)-FF`, lowercase hex, neither id
/// all zeros, version `ff` invalid; a later version may append `-…` after the first 55
/// bytes, version 00 may not. Anything else is no parent (a new trace starts).
pub fn parse(value: &[u8]) -> Option<Parent> {
    let v = value.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])?;
    let longer_ok = version != 0 && v.get(55).is_none_or(|&b| b == b'-');
    if version == 0xff || (v.len() > 55 && !longer_ok) {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    (trace_id != 0 && span_id != 0).then_some(Parent {
        trace_id,
        span_id: span_id as u64,
        sampled: flags & 1 == 1,
    })
}

/// Lowercase hex digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let d = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(d))
    })
}

/// The `traceparent` value (version 00) naming span `span_id` of trace `trace_id`.
pub fn traceparent(trace_id: u128, span_id: u64, sampled: bool) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    out[3..35].copy_from_slice(&crate::hex::u128_digits(trace_id));
    out[36..52].copy_from_slice(&crate::hex::u64_digits(span_id));
    if sampled {
        out[54] = b'1';
    }
    // One allocation that every clone of the request's headers then shares (a copied
    // slice would be promoted to a shared buffer, a second allocation, at its first clone).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .expect("hex digits and dashes are a valid header value")
}

thread_local! {
    /// The trace id the next root span built on this thread must have (0: draw one).
    static NEXT_TRACE_ID: Cell<u128> = const { Cell::new(0) };
}

/// Runs `build` (which builds one root span with [`Ids`]) so that the span carries
/// `trace_id`. Cleared afterwards even if the SDK did not ask (a shut-down provider), so a
/// stale id can never reach a later span.
pub fn as_root<T>(trace_id: u128, build: impl FnOnce() -> T) -> T {
    NEXT_TRACE_ID.set(trace_id);
    let built = build();
    NEXT_TRACE_ID.set(0);
    built
}

/// The provider's id generator: random ids, except a root span's trace id that
/// [`as_root`] chose.
#[derive(Debug, Default)]
pub struct Ids;

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_TRACE_ID.replace(0) {
            0 => TraceId::from(nonzero(fastrand::u128(..))),
            chosen => TraceId::from(chosen),
        }
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from(new_span_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn parent(s: &str) -> Option<Parent> {
        parse(s.as_bytes())
    }

    #[test]
    fn valid_parents_are_read() {
        let p = parent(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(p.trace_id, u128::from_str_radix(TRACE, 16).unwrap());
        assert_eq!(p.span_id, u64::from_str_radix(SPAN, 16).unwrap());
        assert!(p.sampled);
        assert!(!parent(&format!("00-{TRACE}-{SPAN}-00")).unwrap().sampled);
        // Other flag bits are ignored; a later version may carry more after a dash.
        assert!(parent(&format!("00-{TRACE}-{SPAN}-03")).unwrap().sampled);
        assert!(parent(&format!("01-{TRACE}-{SPAN}-01-what-comes")).is_some());
        assert!(parent(&format!("01-{TRACE}-{SPAN}-01")).is_some());
        assert!(parent(&format!(" 00-{TRACE}-{SPAN}-01 ")).is_some());
    }

    #[test]
    fn invalid_parents_are_none() {
        for bad in [
            String::new(),
            format!("00-{TRACE}-{SPAN}-0"),
            format!("00-{TRACE}-{SPAN}-01-x"),
            format!("01-{TRACE}-{SPAN}-01x"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0g"),
            format!("0-{TRACE}-{SPAN}-01x"),
            "00-1-2-01".to_owned(),
        ] {
            assert_eq!(parent(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparent_round_trips() {
        for (trace, span, sampled) in [(1, 1, false), (u128::MAX, u64::MAX, true), (0xabc, 7, true)]
        {
            let value = traceparent(trace, span, sampled);
            assert_eq!(value.len(), 55);
            let p = parse(value.as_bytes()).unwrap();
            assert_eq!((p.trace_id, p.span_id, p.sampled), (trace, span, sampled));
        }
        let expected = format!("00-{TRACE}-{SPAN}-01");
        let p = parent(&expected).unwrap();
        assert_eq!(traceparent(p.trace_id, p.span_id, true), expected.as_str());
    }

    #[test]
    fn the_decision_follows_the_parent_else_the_ratio() {
        let (always, never) = (
            Sampler::TraceIdRatioBased(1.0),
            Sampler::TraceIdRatioBased(0.0),
        );
        let sampled = HeaderValue::from_str(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        let unsampled = HeaderValue::from_str(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        assert!(decide(Some(&sampled), &never).sampled);
        assert!(!decide(Some(&unsampled), &always).sampled);
        let d = decide(Some(&sampled), &never);
        assert_eq!(d.trace_id, d.parent.unwrap().trace_id);
        assert!(decide(None, &always).sampled);
        assert!(!decide(None, &never).sampled);
        let bad = HeaderValue::from_static("garbage");
        assert_eq!(decide(Some(&bad), &always).parent, None);

        // A new trace is sampled exactly when the SDK's rule samples its trace id.
        let half = Sampler::TraceIdRatioBased(0.5);
        let mut kept = 0;
        for _ in 0..2000 {
            let d = decide(None, &half);
            let sdk = half.should_sample(
                None,
                TraceId::from(d.trace_id),
                "x",
                &SpanKind::Server,
                &[],
                &[],
            );
            assert_eq!(d.sampled, sdk.decision == SamplingDecision::RecordAndSample);
            kept += usize::from(d.sampled);
        }
        assert!((800..1200).contains(&kept), "{kept} of 2000 at 0.5");
    }

    #[test]
    fn a_root_gets_the_chosen_trace_id_once() {
        let (first, second) = as_root(42, || (Ids.new_trace_id(), Ids.new_trace_id()));
        assert_eq!(first, TraceId::from(42u128));
        assert_ne!(second, TraceId::from(42u128));
        // Not asked: the id does not outlive the call.
        as_root(43, || ());
        assert_ne!(Ids.new_trace_id(), TraceId::from(43u128));
        assert_ne!(Ids.new_span_id(), SpanId::INVALID);
    }
}
