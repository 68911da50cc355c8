//! The gRPC parts of a route's config (SPEC §7.7): the `fallback.grpc` answer and the check
//! that `grpc-*` retry conditions sit on an upstream that can speak gRPC at all.
//!
//! `fallback.grpc` is read and framed here, once, at load: a missing `message_file` or a
//! status outside 0-16 is an error naming its field, before any port is bound. The framed
//! message (the 5-byte gRPC prefix, then the file's bytes) is what every fallback answer
//! sends, so serving it costs a clone of `Bytes`.

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::raw::Condition;
use super::types::{Policy, Route};
use super::ConfigError;

/// `fallback.grpc` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcFallback {
    pub status: Option<u16>,
    pub message: Option<String>,
    pub message_file: Option<PathBuf>,
}

/// The gRPC answer of a fallback, for gRPC calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcFallback {
    /// 0-16: OK to UNAUTHENTICATED.
    pub status: u8,
    /// `grpc-message`, when given.
    pub message: Option<String>,
    /// The response message already framed (flag byte, length, bytes), when given.
    pub framed: Option<Bytes>,
}

/// The gRPC status codes a config may name (0 OK to 16 UNAUTHENTICATED).
pub const MAX_STATUS: u16 = 16;

/// Checks and reads `fallback.grpc`; `at` is the fallback's path (`routes[1].fallback`).
pub fn fallback(
    raw: Option<RawGrpcFallback>,
    at: &str,
    dir: &Path,
) -> Result<Option<GrpcFallback>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let status = raw.status.unwrap_or(14);
    if status > MAX_STATUS {
        return Err(ConfigError::new(
            format!("{at}.grpc.status"),
            format!("{status} is not a gRPC status (use 0-16)"),
        ));
    }
    let framed = match raw.message_file {
        None => None,
        Some(file) => {
            let path = dir.join(&file);
            let bytes = std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    format!("{at}.grpc.message_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(frame(&bytes))
        }
    };
    Ok(Some(GrpcFallback {
        status: status as u8,
        message: raw.message,
        framed,
    }))
}

/// One gRPC message on the wire: not compressed (0), its length (big-endian u32), the bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// `grpc-*` retry conditions only work over HTTP/2: a warning naming the field when the
/// upstream is HTTP/1.1 (the config still works; those conditions never match there).
pub fn warn_without_http2(
    http2: bool,
    at: &str,
    name: &str,
    policy: &Policy,
    warnings: &mut Vec<String>,
) {
    if http2 {
        return;
    }
    if let Some(c) = policy
        .retry
        .when
        .iter()
        .find(|c| matches!(c, Condition::Grpc(_)))
    {
        warnings.push(format!(
            "{at}.retry.when: route `{name}` lists {} but upstream.http2 is false; gRPC needs HTTP/2 to the upstream, so it never matches",
            c.label()
        ));
    }
}

/// `grpc-*` conditions belong to `retry.when`: the error for one in a fallback's `when`.
pub fn refuse_in_fallback(when: &[Condition], at: &str) -> Result<(), ConfigError> {
    match when.iter().find(|c| matches!(c, Condition::Grpc(_))) {
        Some(c) => Err(ConfigError::new(
            format!("{at}.when"),
            format!(
                "{} is a retry condition; a gRPC call answered by the upstream is passed on, not replaced by a fallback",
                c.label()
            ),
        )),
        None => Ok(()),
    }
}

/// The warnings for every route (the default one included).
pub fn warn_routes(http2: bool, default: &Route, routes: &[Route], warnings: &mut Vec<String>) {
    warn_without_http2(http2, "defaults", &default.name, &default.policy, warnings);
    for (i, route) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        warn_without_http2(http2, &at, &route.name, &route.policy, warnings);
    }
}
