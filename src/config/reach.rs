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

use std::collections::HashMap;

use super::types::{PathMatch, Route};

/// Appends a warning for each route that no request can reach. Linear in the routes (times
/// path segments): earlier catch-alls are kept in maps, not compared pairwise, so a
/// generated file with 40k routes costs no more than parsing it.
pub(super) fn warn_unreachable(routes: &[Route], warnings: &mut Vec<String>) {
    let mut seen = Catchers::default();
    for route in routes {
        if let Some(c) = impossible_char(&route.matcher.path) {
            warnings.push(format!(
                "route `{}` can never match: its path contains {c:?}, which no request path has (the query is not matched; percent-encode other characters)",
                route.name
            ));
            continue;
        }
        if let Some(earlier) = seen.shadowing(&route.matcher.path) {
            warnings.push(format!(
                "route `{}` can never match: route `{earlier}` before it takes every request it would (first match wins; move it earlier)",
                route.name
            ));
        }
        let m = &route.matcher;
        if m.methods.is_none() && m.headers.is_empty() {
            seen.add(&route.matcher.path, &route.name);
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

/// Earlier routes with no method or header condition: whatever their path covers, they take.
#[derive(Default)]
struct Catchers<'a> {
    /// The first route that takes every path (no path, or `path_prefix: /`).
    all: Option<&'a str>,
    /// Prefix (stored without trailing slash) to the first route with it.
    prefixes: HashMap<&'a str, &'a str>,
    /// Exact path to the first route with it.
    exact: HashMap<&'a str, &'a str>,
}

impl<'a> Catchers<'a> {
    fn add(&mut self, path: &'a PathMatch, name: &'a str) {
        match path {
            PathMatch::Any => self.all = self.all.or(Some(name)),
            PathMatch::Prefix(p) if p.is_empty() => self.all = self.all.or(Some(name)),
            PathMatch::Prefix(p) => {
                self.prefixes.entry(p).or_insert(name);
            }
            PathMatch::Exact(p) => {
                self.exact.entry(p).or_insert(name);
            }
        }
    }

    /// The earlier route that takes every request `path` could match, if any.
    fn shadowing(&self, path: &PathMatch) -> Option<&'a str> {
        if self.all.is_some() {
            return self.all;
        }
        let (q, exact) = match path {
            PathMatch::Any => return None,
            PathMatch::Prefix(q) => (q.as_str(), false),
            PathMatch::Exact(q) => (q.as_str(), true),
        };
        if exact {
            if let Some(name) = self.exact.get(q) {
                return Some(name);
            }
        }
        // Every segment boundary of q: "/a/b" is under "/a" and "/a/b".
        let ends = q
            .match_indices('/')
            .map(|(i, _)| i)
            .skip(1)
            .chain([q.len()]);
        ends.filter_map(|end| self.prefixes.get(&q[..end]))
            .copied()
            .next()
    }
}
