//! Whether Redis is worth asking: the link's health as a small state machine with no I/O.
//!
//! Requests ask Redis only while the link is up. After [`ERRORS_TO_DOWN`] errors in a row
//! (a timeout counts) it is down and requests skip Redis altogether: they go to the local
//! fallbacks at once instead of each paying `shared.timeout`. While down, one probe at a
//! time may try again, no sooner than the back-off allows; the back-off doubles from
//! [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], so the link is up again within about
//! `MAX_BACKOFF` plus one operation of Redis coming back (SPEC: within 5 s). The replica
//! announcer is the usual prober (it runs every second), so no request pays for probing
//! unless it wins the probe slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Errors in a row that take the link down.
pub const ERRORS_TO_DOWN: u32 = 3;
/// The first wait before probing a link that went down.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between probes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The health of the link to Redis.
#[derive(Debug)]
pub struct Health {
    /// Read on every shared operation: one relaxed load while all is well.
    up: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    errors: u32,
    backoff: Duration,
    next_probe: Instant,
    probing: bool,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The link is up: go ahead.
    Go,
    /// The link is down and this caller is the one probe: go, then report.
    Probe,
    /// The link is down: use the local fallback.
    Skip,
}

impl Health {
    /// A link not yet known to work: down until its first success.
    pub fn new(now: Instant) -> Health {
        Health {
            up: AtomicBool::new(false),
            state: Mutex::new(State {
                errors: ERRORS_TO_DOWN,
                backoff: FIRST_BACKOFF,
                next_probe: now,
                probing: false,
            }),
        }
    }

    /// Whether the link is up now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// May a caller use Redis now?
    pub fn gate(&self, now: Instant) -> Gate {
        if self.is_up() {
            return Gate::Go;
        }
        let mut s = self.lock();
        if s.probing || now < s.next_probe {
            return Gate::Skip;
        }
        s.probing = true;
        Gate::Probe
    }

    /// A probe that ended without an answer either way (its request was dropped): the
    /// slot is free again, or no probe would ever run.
    pub fn abandon(&self) {
        self.lock().probing = false;
    }

    /// An operation (or probe) succeeded: the link is up.
    pub fn success(&self) {
        let mut s = self.lock();
        s.errors = 0;
        s.backoff = FIRST_BACKOFF;
        s.probing = false;
        self.up.store(true, Ordering::Relaxed);
    }

    /// An operation (or probe) failed or timed out.
    pub fn failure(&self, now: Instant) {
        let mut s = self.lock();
        s.errors = s.errors.saturating_add(1);
        if s.errors < ERRORS_TO_DOWN {
            return;
        }
        let was_up = self.up.swap(false, Ordering::Relaxed);
        if was_up {
            s.backoff = FIRST_BACKOFF;
        } else if s.probing {
            s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
        }
        s.probing = false;
        s.next_probe = now + s.backoff;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_errors_then_one_probe_at_a_time() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        assert_eq!(h.gate(t0), Gate::Probe, "not yet known: one probe");
        assert_eq!(h.gate(t0), Gate::Skip, "only one");
        h.success();
        assert!(h.is_up());
        h.failure(t0);
        h.failure(t0);
        assert_eq!(h.gate(t0), Gate::Go, "two errors: still up");
        h.failure(t0);
        assert!(!h.is_up());
        assert_eq!(h.gate(t0), Gate::Skip, "backing off");
        let t1 = t0 + FIRST_BACKOFF;
        assert_eq!(h.gate(t1), Gate::Probe);
        assert_eq!(h.gate(t1), Gate::Skip, "one probe at a time");
        h.failure(t1);
        assert_eq!(h.gate(t1 + FIRST_BACKOFF), Gate::Skip, "back-off doubled");
        assert_eq!(h.gate(t1 + FIRST_BACKOFF * 2), Gate::Probe);
        h.success();
        assert_eq!(h.gate(t1), Gate::Go);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        assert_eq!(h.gate(t0), Gate::Probe);
        h.abandon();
        assert_eq!(h.gate(t0), Gate::Probe, "another caller may probe");
    }

    #[test]
    fn backoff_is_capped() {
        let mut now = Instant::now();
        let h = Health::new(now);
        for _ in 0..20 {
            while h.gate(now) != Gate::Probe {
                now += Duration::from_millis(50);
            }
            h.failure(now);
        }
        let start = now;
        while h.gate(now) != Gate::Probe {
            now += Duration::from_millis(50);
        }
        assert!(now - start <= MAX_BACKOFF, "{:?}", now - start);
    }
}
