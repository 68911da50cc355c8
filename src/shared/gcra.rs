//! The global rate limit's arithmetic: GCRA in Redis, spent locally in small batches.
//!
//! **In Redis** one key per bucket holds its *theoretical arrival time* (TAT), in
//! microseconds of Redis's own clock (`TIME` inside the script), so the replicas' clocks
//! never matter. A reservation of `n` tokens succeeds for as many as fit under
//! `TAT - now <= burst × interval` and moves TAT by that many intervals; with none left
//! it answers how long until the next one. Over any interval `T` the bucket hands out at
//! most `rate × T + burst` tokens, whoever asks.
//!
//! **In each replica** ([`Reserve`]) the tokens granted are spent locally, so most requests
//! never touch the network (the approach of Sentry Relay's quotas): only a replica whose
//! batch ran out asks again. A denial is remembered until its retry time (like envoy's
//! ratelimit near-cache), so a limited client costs no Redis round trip either. A batch
//! not spent within [`RESERVE_TTL`] is dropped: a token must not be spent long after it
//! was granted, or the bound above would slip.
//!
//! **The cost of batching**: tokens reserved but not yet spent are the only way the fleet
//! can admit more than `rate × T + burst` over an interval `T`: at most one batch per
//! replica and key ([`batch_size`]). A key that is not busy reserves one token at a time,
//! so quiet keys waste nothing.

use std::time::Duration;

use tokio::time::Instant;

/// How long reserved tokens may wait to be spent.
pub const RESERVE_TTL: Duration = Duration::from_secs(1);

/// A batch covers this much of the rate.
const BATCH_WINDOW: f64 = 0.02;
/// The largest batch, whatever the rate.
const MAX_BATCH: u32 = 64;

/// The Lua script: `KEYS[1]` the bucket, `ARGV` interval and tolerance (µs) and tokens
/// wanted. Returns `{granted, retry_after_us}`.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval)
local granted = math.min(wanted, room)
if granted <= 0 then
  return {0, tat + interval - now - tolerance}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
";

/// The script's arguments for a policy: interval and tolerance in whole microseconds.
pub fn script_args(rate: f64, burst: u32) -> (u64, u64) {
    let interval = (1e6 / rate).round().clamp(1.0, 1e15) as u64;
    (interval, interval.saturating_mul(u64::from(burst)))
}

/// Tokens a busy replica reserves at once: 20 ms of the rate, at least 1, at most 64 and
/// at most half the burst (so one replica cannot take a whole burst for itself).
pub fn batch_size(rate: f64, burst: u32) -> u32 {
    let by_rate = (rate * BATCH_WINDOW)
        .ceil()
        .clamp(1.0, f64::from(MAX_BATCH)) as u32;
    by_rate.min((burst / 2).max(1))
}

/// What one replica holds for one bucket.
#[derive(Debug)]
pub struct Reserve {
    tokens: u32,
    expires: Instant,
    denied_until: Option<Instant>,
    /// When the last reservation was made: a key that needs another within
    /// [`RESERVE_TTL`] is busy and gets a whole batch.
    last_refill: Option<Instant>,
}

/// What the local reservation can say without Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A reserved token was spent.
    Took,
    /// Denied until then, as Redis said.
    Denied(Duration),
    /// Nothing reserved: ask Redis for this many.
    Empty(u32),
}

impl Reserve {
    /// Nothing reserved yet.
    pub fn new(now: Instant) -> Reserve {
        Reserve {
            tokens: 0,
            expires: now,
            denied_until: None,
            last_refill: None,
        }
    }

    /// Spends a reserved token, or says why not.
    pub fn take(&mut self, now: Instant, batch: u32) -> Local {
        if let Some(until) = self.denied_until {
            if now < until {
                return Local::Denied(until - now);
            }
            self.denied_until = None;
        }
        if self.tokens > 0 && now < self.expires {
            self.tokens -= 1;
            return Local::Took;
        }
        self.tokens = 0;
        let busy = self
            .last_refill
            .is_some_and(|t| now.saturating_duration_since(t) < RESERVE_TTL);
        Local::Empty(if busy { batch } else { 1 })
    }

    /// Records what Redis granted (or how long it denies).
    pub fn refilled(&mut self, now: Instant, granted: u32, retry: Duration) {
        self.last_refill = Some(now);
        if granted == 0 {
            self.denied_until = Some(now + retry.max(Duration::from_millis(1)));
            return;
        }
        self.tokens = granted;
        self.expires = now + RESERVE_TTL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_rate_and_burst() {
        assert_eq!(batch_size(100.0, 200), 2);
        assert_eq!(batch_size(1000.0, 2000), 20);
        assert_eq!(batch_size(1e6, 1_000_000), 64);
        assert_eq!(batch_size(1000.0, 4), 2, "half the burst at most");
        assert_eq!(batch_size(0.5, 1), 1);
        assert_eq!(script_args(100.0, 200), (10_000, 2_000_000));
        assert_eq!(script_args(1e-20, 3).0, 1_000_000_000_000_000);
    }

    #[test]
    fn quiet_keys_ask_for_one_busy_ones_for_a_batch() {
        let t0 = Instant::now();
        let mut r = Reserve::new(t0);
        assert_eq!(r.take(t0, 8), Local::Empty(1));
        r.refilled(t0, 1, Duration::ZERO);
        assert_eq!(r.take(t0, 8), Local::Took);
        assert_eq!(r.take(t0, 8), Local::Empty(8), "needed again at once: busy");
        r.refilled(t0, 3, Duration::ZERO);
        assert_eq!(r.take(t0, 8), Local::Took);
        assert_eq!(r.take(t0, 8), Local::Took);
        let later = t0 + RESERVE_TTL * 2;
        assert_eq!(r.take(later, 8), Local::Empty(1), "unspent token expired");
    }

    #[test]
    fn a_denial_is_remembered_until_its_retry_time() {
        let t0 = Instant::now();
        let mut r = Reserve::new(t0);
        r.refilled(t0, 0, Duration::from_millis(300));
        assert_eq!(
            r.take(t0 + Duration::from_millis(100), 4),
            Local::Denied(Duration::from_millis(200))
        );
        assert!(matches!(
            r.take(t0 + Duration::from_millis(300), 4),
            Local::Empty(_)
        ));
    }
}
