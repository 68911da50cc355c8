//! How close the process is to its file-descriptor limit, for `/ready` and `/health`.
//!
//! Every client connection, upstream connection and tunnel (two of each) holds a
//! descriptor. At the limit `accept` fails with `EMFILE`: new clients, admin probes
//! included, are refused by the kernel or left in the backlog, and upstream connects fail
//! (`502 connect-failure`), while open connections and tunnels keep working. A probe that
//! could still get through would then be answered by a process that cannot serve anyone
//! new, so the answer is given *before* the limit: with fewer than [`RESERVE`] descriptors
//! free, `/ready` answers 503 (new traffic goes to other replicas) and `/health` reads
//! `degraded` (200: restarting would cut every open tunnel, and the shortage ends as they
//! close). `/live` is unaffected.
//!
//! Read from `/proc/self` on request (a directory listing per probe, never on the request
//! path); elsewhere than Linux nothing is known and nothing changes.

/// Free descriptors below which the process no longer takes new traffic: about 30 more
/// proxied requests (a client and an upstream connection each) and the probes themselves.
pub const RESERVE: usize = 64;

/// Descriptors open now and the soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    pub open: usize,
    pub max: usize,
}

impl Descriptors {
    /// This process's, when `/proc` tells.
    pub fn now() -> Option<Descriptors> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let max = parse_max(&limits)?;
        let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(Descriptors { open, max })
    }

    /// Fewer than [`RESERVE`] free.
    pub fn scarce(&self) -> bool {
        self.max.saturating_sub(self.open) < RESERVE
    }
}

/// Whether this process is short of descriptors now (`false` when unknown).
pub fn scarce() -> bool {
    Descriptors::now().is_some_and(|d| d.scarce())
}

/// Warns at startup when the tunnel cap alone could use up the descriptor limit.
pub fn warn_if_short(limits: &crate::config::Limits) {
    let Some(d) = Descriptors::now() else { return };
    let wanted = 2 * limits.max_tunnels + RESERVE;
    if d.max < wanted {
        tracing::warn!(
            limit = d.max,
            wanted,
            "the open-file limit is under 2 x limits.max_tunnels + {RESERVE}: raise it (ulimit -n, LimitNOFILE) or lower max_tunnels, or /ready will turn 503 before the cap is reached"
        );
    }
}

/// The soft limit from `/proc/self/limits` (`None` when unlimited or unreadable).
fn parse_max(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_read_and_scarcity_is_under_the_reserve() {
        let text = "Limit Soft Limit Hard Limit Units\nMax processes 63 63 processes\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max(text), Some(1024));
        assert_eq!(parse_max("Max open files unlimited unlimited files"), None);
        assert!(!Descriptors {
            open: 960,
            max: 1024
        }
        .scarce());
        assert!(Descriptors {
            open: 961,
            max: 1024
        }
        .scarce());
        assert!(Descriptors::now().is_some_and(|d| d.open > 0 && d.max > 0));
    }
}
