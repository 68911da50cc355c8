//! The `tracing:` block (SPEC §7.5): where spans go, how many requests are sampled, and the
//! service name they carry.
//!
//! The shape checks (an endpoint that is not an `http(s)://host[:port]` URL, a ratio outside
//! 0..1) happen while the YAML is read, so the error names the line as well as the path.
//! Whether the collector answers is never checked: a collector that is down costs spans
//! (dropped and counted), not the sidecar's start. An endpoint may carry credentials
//! (`http://user:password@collector`, a `?api_key=` query), so an error quotes it with
//! everything before the last `@` and everything after a `?` or `#` replaced by `***`.
//!
//! `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` win over the file, as the
//! environment does everywhere else (flag > environment > file); they fill in a `tracing`
//! block that is present and never turn tracing on by themselves, because SPEC says an
//! absent block exports nothing.

use http::Uri;
use serde::Deserialize;

use super::ConfigError;

/// `tracing:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp_endpoint: Option<Endpoint>,
    pub sample_ratio: Option<SampleRatio>,
    pub service_name: Option<String>,
}

/// The validated tracing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector's base URL; spans are posted to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: String,
    /// In `[0, 1]`: the share of new traces sampled (a sampled parent is always followed).
    pub sample_ratio: f64,
    pub service_name: String,
}

/// An OTLP/HTTP base URL, checked for shape only.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint(pub String);

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        check_endpoint(&text).map(Endpoint)
    }
}

/// A sampling ratio in `[0, 1]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "f64")]
pub struct SampleRatio(pub f64);

impl TryFrom<f64> for SampleRatio {
    type Error = String;

    fn try_from(ratio: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&ratio) {
            Ok(SampleRatio(ratio))
        } else {
            Err(format!("{ratio} is outside 0..1"))
        }
    }
}

const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const SERVICE_ENV: &str = "OTEL_SERVICE_NAME";

/// The validated block, with the environment laid over it; `None` when absent.
pub fn validate(raw: Option<RawTracing>) -> Result<Option<Tracing>, ConfigError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(raw) = raw else { return Ok(None) };
    let otlp_endpoint = match env(ENDPOINT_ENV) {
        Some(url) => check_endpoint(&url).map_err(|m| ConfigError::new(ENDPOINT_ENV, m))?,
        None => raw
            .otlp_endpoint
            .map_or_else(|| "http://127.0.0.1:4318".to_owned(), |e| e.0),
    };
    let service_name = env(SERVICE_ENV)
        .or(raw.service_name)
        .unwrap_or_else(|| "outrigger".to_owned());
    if service_name.is_empty() {
        return Err(ConfigError::new(
            "tracing.service_name",
            "must not be empty",
        ));
    }
    Ok(Some(Tracing {
        otlp_endpoint,
        sample_ratio: raw.sample_ratio.map_or(0.01, |r| r.0),
        service_name,
    }))
}

/// An `http://` or `https://` URL with a host and no query; the trailing `/` dropped.
fn check_endpoint(text: &str) -> Result<String, String> {
    let bad = |why: &str| {
        let shown = redacted(text);
        format!("{shown:?} is not an OTLP/HTTP endpoint: {why}")
    };
    let uri: Uri = text.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("expected http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// `text` with any userinfo, query and fragment replaced by `***`. Malformed input is the
/// case here, so this does not parse: whatever precedes the last `@` before a query or
/// fragment (after the scheme, if any) is hidden, even where a path holds the `@`.
fn redacted(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (&text[..scheme.len() + 3], rest),
        None => ("", text),
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (head, tail) = rest.split_at(end);
    let head = match head.rfind('@') {
        Some(at) => format!("***{}", &head[at..]),
        None => head.to_owned(),
    };
    let tail = tail
        .get(..1)
        .map_or(String::new(), |mark| format!("{mark}***"));
    format!("{scheme}{head}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_for_shape() {
        assert_eq!(
            check_endpoint("http://collector:4318/").unwrap(),
            "http://collector:4318"
        );
        assert!(check_endpoint("collector:4318").is_err());
        assert!(check_endpoint("ftp://collector").is_err());
        assert!(check_endpoint("http://").is_err());
        assert!(check_endpoint("http://c:4318/?x=1").is_err());
    }

    #[test]
    fn userinfo_is_never_quoted() {
        assert_eq!(redacted("ftp://u:pw@c:1/x"), "ftp://***@c:1/x");
        assert_eq!(redacted("u:pw@c:1"), "***@c:1");
        assert_eq!(redacted("http://u:p/w@c?q=a@b"), "http://***@c?***");
        assert_eq!(redacted("http://c/?api_key=k#f"), "http://c/?***");
        assert_eq!(redacted("http://c:1/v1"), "http://c:1/v1");
        let err = check_endpoint("ftp://otel:pw-123@c:4318").unwrap_err();
        assert!(
            !err.contains("pw-123") && err.contains("***@c:4318"),
            "{err}"
        );
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        assert!(SampleRatio::try_from(1.5).is_err());
        assert!(SampleRatio::try_from(-0.1).is_err());
        assert!(SampleRatio::try_from(f64::NAN).is_err());
        assert_eq!(SampleRatio::try_from(0.25).unwrap().0, 0.25);
    }
}
