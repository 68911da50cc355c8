//! How much memory a config may make outrigger hold, and a warning from `outrigger check`
//! when that is more than the container may have.
//!
//! Everything that holds memory for long is bounded by the config, so the peak resident
//! size has an upper bound that can be computed before a port is bound:
//!
//! ```text
//! bound = base                                                   16 MiB
//!       + Σ routes with a store: 2 × max_bytes        kept copies + copies still streaming
//!       + max_concurrent_requests × request_body_buffer          bodies kept for replay
//!       + max_concurrent_requests × 1 MiB           I/O buffers of one streaming exchange
//! limit ≥ bound × 5/4                                        allocator slack (glibc)
//! ```
//!
//! The figures are measured, not derived (README, "Memory"): the debug binary idles at
//! 15.4 MiB; a 1 MB answer streaming to a client costs about 0.7 MiB while it flows
//! (hyper's upstream read buffer grows to 408 KiB, the client's write queue holds up to
//! 400 KiB on HTTP/2, 64 KiB on HTTP/1, plus about 16 KiB per connection); a store holds
//! up to `max_bytes` of kept copies and as much again of copies being taken; and glibc kept
//! 15-35% more resident than was live after bursts of 1 MB allocations. Idle keep-alive
//! connections (about 16 KiB each) are not bounded by the config and are not counted.

use std::fmt;
use std::path::Path;

use super::Config;
use crate::resilience::store::StorePolicy;

const MIB: u64 = 1 << 20;
/// Resident size of an idle process: runtime, registry, config, thread stacks touched.
const BASE: u64 = 16 * MIB;
/// Buffers of one request whose answer streams through: upstream read buffer, client
/// write queue, connection state.
const PER_REQUEST_IO: u64 = MIB;
/// Where cgroup v2 tells a process its memory limit.
pub const CGROUP_MEMORY_MAX: &str = "/sys/fs/cgroup/memory.max";

/// The parts of the bound, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub base: u64,
    /// Every store's kept copies and copies in progress.
    pub stores: u64,
    /// Request bodies kept for replay.
    pub bodies: u64,
    /// Streaming buffers and connection state of the requests in flight.
    pub io: u64,
}

impl Estimate {
    /// The bound for a config.
    pub fn of(config: &Config) -> Estimate {
        let stores = config
            .routes
            .iter()
            .chain(std::iter::once(&config.default_route))
            .filter_map(|r| StorePolicy::for_route(&r.policy))
            .map(|p| p.max_bytes.saturating_mul(2))
            .fold(0u64, u64::saturating_add);
        let in_flight = config.limits.max_concurrent_requests as u64;
        Estimate {
            base: BASE,
            stores,
            bodies: in_flight.saturating_mul(config.limits.request_body_buffer as u64),
            io: in_flight.saturating_mul(PER_REQUEST_IO),
        }
    }

    /// The upper bound of live memory.
    pub fn total(&self) -> u64 {
        [self.stores, self.bodies, self.io]
            .into_iter()
            .fold(self.base, u64::saturating_add)
    }

    /// The smallest memory limit that leaves the allocator its slack.
    pub fn limit_needed(&self) -> u64 {
        self.total().saturating_add(self.total() / 4)
    }
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = base {} + stores (2 x max_bytes) {} + replay bodies (max_concurrent_requests x request_body_buffer) {} + I/O buffers (max_concurrent_requests x 1 MiB) {}",
            mib(self.total()),
            mib(self.base),
            mib(self.stores),
            mib(self.bodies),
            mib(self.io)
        )
    }
}

/// Where a memory limit came from, for the warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    Flag,
    Cgroup,
}

/// A warning when the config's bound, with the allocator's slack, exceeds `limit`.
pub fn warning(config: &Config, limit: u64, source: LimitSource) -> Option<String> {
    let estimate = Estimate::of(config);
    if estimate.limit_needed() <= limit {
        return None;
    }
    let from = match source {
        LimitSource::Flag => "--memory-limit",
        LimitSource::Cgroup => CGROUP_MEMORY_MAX,
    };
    Some(format!(
        "memory: the configured bounds allow {estimate}, which needs a memory limit of at least {} (25% allocator slack); the limit is {} ({from}). Lower stale_if_error.max_bytes or limits.max_concurrent_requests, or raise the limit (README: Memory)",
        mib(estimate.limit_needed()),
        mib(limit),
    ))
}

/// The cgroup v2 memory limit of this process; `None` when absent or `max` (no limit).
pub fn cgroup_limit(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Parses a memory limit: a config size (`128MiB`) or a Kubernetes quantity (`128Mi`,
/// `1Gi`, plain bytes).
pub fn parse_limit(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let binary = ["Ki", "Mi", "Gi"].iter().any(|u| t.ends_with(u));
    let limit = if binary {
        super::units::parse_size(&format!("{t}B"))
    } else {
        super::units::parse_size(t)
    }?;
    if limit == 0 {
        return Err(format!("`{text}`: a memory limit must be more than 0"));
    }
    Ok(limit)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let text = format!("upstream: {{ url: 'http://127.0.0.1:3000' }}\n{yaml}");
        super::super::from_text(&text, None, &Default::default()).expect("valid")
    }

    #[test]
    fn the_bound_adds_stores_bodies_and_buffers() {
        let c = config("limits: { max_concurrent_requests: 64, request_body_buffer: 64KiB }\nroutes:\n  - { name: a, match: { path_prefix: /a }, stale_if_error: { max_age: 1m, max_bytes: 8MiB } }\n  - { name: b, match: { path_prefix: /b }, cache: { ttl: 1s } }\n");
        let e = Estimate::of(&c);
        assert_eq!(e.stores, 2 * 8 * MIB + 2 * 64 * MIB, "cache alone: 64 MiB");
        assert_eq!(e.bodies, 4 * MIB);
        assert_eq!(e.io, 64 * MIB);
        assert_eq!(e.total(), 16 * MIB + 144 * MIB + 4 * MIB + 64 * MIB);
    }

    #[test]
    fn warns_only_above_the_limit() {
        let c = config("limits: { max_concurrent_requests: 64 }\n");
        // 16 + 4 + 64 = 84 MiB, 105 MiB with slack.
        assert_eq!(Estimate::of(&c).limit_needed(), 105 * MIB);
        assert!(warning(&c, 128 * MIB, LimitSource::Flag).is_none());
        let w = warning(&c, 100 * MIB, LimitSource::Cgroup).expect("over");
        assert!(
            w.contains("105 MiB") && w.contains(CGROUP_MEMORY_MAX),
            "{w}"
        );
    }

    #[test]
    fn limits_parse_as_sizes_or_kubernetes_quantities() {
        assert_eq!(parse_limit("128Mi"), Ok(128 * MIB));
        assert_eq!(parse_limit("128MiB"), Ok(128 * MIB));
        assert_eq!(parse_limit("1Gi"), Ok(1024 * MIB));
        assert_eq!(parse_limit("134217728"), Ok(128 * MIB));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("lots").is_err());
    }

    #[test]
    fn cgroup_max_or_absent_is_no_limit() {
        let dir = std::env::temp_dir().join(format!("outrigger-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.max");
        std::fs::write(&file, "max\n").unwrap();
        assert_eq!(cgroup_limit(&file), None);
        std::fs::write(&file, "134217728\n").unwrap();
        assert_eq!(cgroup_limit(&file), Some(128 * MIB));
        assert_eq!(cgroup_limit(&dir.join("absent")), None);
    }
}
