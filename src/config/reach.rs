//! Routes that can never match, found at load and reported as warnings.
//!
//! Routes are tried in order and the first match wins, so a route placed after one that
//! takes every request it could see (`path_prefix: /` with no method or header condition)
//! is dead configuration: its retry, fallback and limits never apply, and nothing says so
//! at run time. Likewise a route path holding `?`, `#` or whitespace can never equal a
//! request path (the query is not part of the path, and a request target has no raw
//! spaces). Both are warnings rather than errors: the config still works as written, and a
//! rollout should not fail on a route that is merely unused. `methods: []` is refused in
//! `validate`, since it can only be a mistake.

use super::types::{PathMatch, Route};

/// Appends a warning for each route that no request can reach.
pub(super) fn warn_unreachable(routes: &[Route], warnings: &mut Vec<String>) {
    for (i, route) in routes.iter().enumerate() {
        if let Some(c) = impossible_char(&route.matcher.path) {
            warnings.push(format!(
                "route `{}` can never match: its path contains {c:?}, which no request path has (the query is not matched; percent-encode other characters)",
                route.name
            ));
            continue;
        }
        if let Some(earlier) = routes[..i].iter().find(|e| shadows(e, route)) {
            warnings.push(format!(
                "route `{}` can never match: route `{}` before it takes every request it would (first match wins; move it earlier)",
                route.name, earlier.name
            ));
        }
    }
}

fn impossible_char(path: &PathMatch) -> Option<char> {
    let p = match path {
        PathMatch::Any => return None,
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
    };
    p.chars()
        .find(|c| *c == '?' || *c == '#' || c.is_whitespace() || c.is_control())
}

/// Whether `earlier` matches every request `later` could match: no method or header
/// condition of its own, and a path that covers the later one's.
fn shadows(earlier: &Route, later: &Route) -> bool {
    let m = &earlier.matcher;
    if m.methods.is_some() || !m.headers.is_empty() {
        return false;
    }
    match (&m.path, &later.matcher.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(p), PathMatch::Prefix(q) | PathMatch::Exact(q)) => under(q, p),
        (PathMatch::Prefix(p), PathMatch::Any) => p.is_empty(),
        (PathMatch::Exact(p), PathMatch::Exact(q)) => p == q,
        _ => false,
    }
}

/// Whether path `q` is `p` or below it, segment-wise (`p` has no trailing slash; `""` is `/`).
fn under(q: &str, p: &str) -> bool {
    p.is_empty()
        || q.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
