//! Replicas announce themselves, and the background half of the link's life.
//!
//! Every [`EVERY`] each replica adds itself to a sorted set in Redis scored with Redis's
//! own clock, removes members older than [`EXPIRES`] and reads how many are left: that
//! count is what a rate limit divides by while Redis is away (SPEC: `rate` divided by the
//! replica count last seen). Members that stop announcing expire on their own, so a
//! replica that crashed stops counting within [`EXPIRES`].
//!
//! The same task connects the link (at start, and until the first connection works: a
//! Redis that is down or refuses the password then costs no request anything) and, while
//! the link is down, its announcement is the probe that finds Redis back.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::keys;
use super::Shared;

/// How often a replica announces itself.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long an announcement counts.
pub const EXPIRES: Duration = Duration::from_secs(5);

const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

/// Connects and announces until the store is dropped.
pub async fn run(shared: Weak<Shared>) {
    let script = redis::Script::new(SCRIPT);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.link.connected() && !shared.link.connect().await {
            continue;
        }
        let key = keys::replicas(shared.namespace());
        let id = shared.id.clone();
        let expires = EXPIRES.as_millis() as u64;
        let deadline = Instant::now() + shared.link.timeout();
        let script = &script;
        let count: Option<u32> = shared
            .link
            .run("announce", deadline, |mut conn| async move {
                script
                    .key(key)
                    .arg(id)
                    .arg(expires)
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        if let Some(n) = count {
            shared.replicas.store(n.max(1), Ordering::Relaxed);
        }
    }
}
