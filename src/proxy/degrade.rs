//! What a failed request gets instead of an error: the stale copy if there is one within
//! `max_age`, else the route's fallback if its `when` lists the reason (SPEC §3: a stale
//! copy is preferred to a fallback). `None` means the caller answers with the upstream's
//! own final response or a proxy-made error.

use http::header::{HeaderName, HeaderValue, AGE};
use http::{Method, Response};

use super::body::ResponseBody;
use super::failure::Reason;
use super::runtime::RouteState;
use super::Outcome;
use crate::config::Route;
use crate::metrics::Metrics;

/// Header with the age in seconds of a stale copy served on failure.
pub static STALE: HeaderName = HeaderName::from_static("x-outrigger-stale");

/// The request facts degradation needs.
pub struct Failed<'a> {
    pub method: &'a Method,
    /// The stale-store key, when the route keeps stale copies and privacy allows.
    pub stale_key: Option<&'a [u8]>,
    pub headers: &'a http::HeaderMap,
    pub reason: Reason,
}

/// A stale copy or a fallback for a failed request.
pub fn answer(
    route: &Route,
    state: &RouteState,
    metrics: &Metrics,
    failed: &Failed<'_>,
) -> Option<(Response<ResponseBody>, Outcome)> {
    let stale_worthy = match failed.reason {
        Reason::Failure(_) => true,
        Reason::Status(s) => s.is_server_error(),
        Reason::Grpc(_) => false,
    };
    if let (true, Some(store), Some(key)) = (stale_worthy, &state.store, failed.stale_key) {
        if let Some((stored, age)) = store.stale(key, failed.headers) {
            let body = if failed.method == Method::HEAD {
                Default::default()
            } else {
                stored.body.clone()
            };
            let mut resp = Response::new(ResponseBody::full(body));
            *resp.headers_mut() = stored.headers.clone();
            let secs = HeaderValue::from(age.as_secs());
            resp.headers_mut().insert(STALE.clone(), secs.clone());
            resp.headers_mut().insert(AGE, secs);
            metrics
                .stale_responses
                .with_label_values(&[&route.name])
                .inc();
            return Some((resp, Outcome::Stale));
        }
    }
    let resp = super::grpc::fallback(
        route.policy.fallback.as_ref()?,
        failed.reason,
        failed.headers,
    )?;
    state
        .series
        .fallback(metrics, &route.name, failed.reason)
        .inc();
    Some((resp, Outcome::Fallback))
}
