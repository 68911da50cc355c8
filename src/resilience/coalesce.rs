//! Request coalescing: concurrent cache misses for one key wait for a single upstream
//! request instead of each sending their own.
//!
//! The first miss becomes the leader and holds a [`Flight`]; later misses for the same key
//! follow it and wait for its [`Landing`]:
//! - `Stored`: the response is in the store; the followers read it from there;
//! - `Unshared`: the response may not be stored (private, large, not a 200): each follower
//!   goes upstream itself, so nothing private or large is ever shared;
//! - `Failed`: the leader got no usable answer; the followers are told why, so the stale
//!   copy or the fallback can answer them instead of N more failures;
//! - `Abandoned`: the leader went away (its client disconnected) before the flight ended.
//!   The followers join again: the first becomes the new leader, the rest follow it, so a
//!   cancelled leader does not send every follower upstream at once.
//!
//! A follower waits for a body only so long: once the leader has the response head
//! (`Headers`), a follower that has waited [`BODY_WAIT`] more goes upstream itself. A
//! streamed or slow body (an event stream, a long poll) then holds up only its own client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::store::Key;
use crate::vocab::reason::Reason;

/// How long a follower waits for the leader's body once the leader has the response head.
pub const BODY_WAIT: Duration = Duration::from_secs(1);

/// Where a flight stands, as its followers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// No answer yet.
    Pending,
    /// The leader has a storable response head; its body is being copied into the store.
    Headers,
    /// Stored: read it from the store.
    Stored,
    /// The answer may not be shared, or took too long: fetch your own.
    Unshared,
    /// The leader got no usable answer, and why.
    Failed(Reason),
    /// The leader went away before the flight ended: join again.
    Abandoned,
}

/// One route's flights in progress.
#[derive(Debug, Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<Key, watch::Receiver<Landing>>>,
}

/// How a miss joins the flights for its key.
pub enum Join {
    /// Nobody was fetching this key: go upstream, and end the flight when done.
    Leader(Flight),
    /// Another request is fetching it: wait for it.
    Follower(watch::Receiver<Landing>),
}

/// The leader's side of a flight; dropping it wakes the followers (as `Abandoned` unless
/// the leader said how it ended).
#[derive(Debug)]
pub struct Flight {
    coalescer: Arc<Coalescer>,
    key: Key,
    tx: watch::Sender<Landing>,
}

impl Coalescer {
    /// Joins the flight for `key`, starting it if there is none.
    pub fn join(self: &Arc<Self>, key: &Key) -> Join {
        let (tx, rx) = watch::channel(Landing::Pending);
        let Ok(mut flights) = self.flights.lock() else {
            return Join::Leader(Flight {
                coalescer: Arc::clone(self),
                key: key.clone(),
                tx,
            });
        };
        if let Some(rx) = flights.get(key) {
            return Join::Follower(rx.clone());
        }
        flights.insert(key.clone(), rx);
        Join::Leader(Flight {
            coalescer: Arc::clone(self),
            key: key.clone(),
            tx,
        })
    }

    /// Flights in progress.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map_or(0, |f| f.len())
    }
}

impl Flight {
    /// Tells the followers that the leader got no usable answer, and why.
    pub fn failed(&self, reason: Reason) {
        self.tx.send_replace(Landing::Failed(reason));
    }

    /// The leader has a storable response head; the body follows.
    pub fn headers(&self) {
        self.tx.send_replace(Landing::Headers);
    }

    /// The answer will not be stored: the followers fetch their own.
    pub fn unshared(&self) {
        self.tx.send_replace(Landing::Unshared);
    }

    /// The answer is in the store.
    pub fn stored(&self) {
        self.tx.send_replace(Landing::Stored);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Out of the map first, so followers that join again start a new flight.
        if let Ok(mut flights) = self.coalescer.flights.lock() {
            flights.remove(&self.key);
        }
        self.tx.send_if_modified(|landing| {
            let open = matches!(landing, Landing::Pending | Landing::Headers);
            if open {
                *landing = Landing::Abandoned;
            }
            open
        });
    }
}

/// Waits for the flight to land, or for `body_wait` after the leader got the response
/// head (then `Unshared`: the body is too slow to wait for).
pub async fn wait(mut rx: watch::Receiver<Landing>, body_wait: Duration) -> Landing {
    loop {
        let landing = *rx.borrow_and_update();
        let changed = match landing {
            Landing::Pending => rx.changed().await,
            Landing::Headers => match tokio::time::timeout(body_wait, rx.changed()).await {
                Ok(changed) => changed,
                Err(_) => return Landing::Unshared,
            },
            done => return done,
        };
        if changed.is_err() {
            // The leader is gone; its last word stays readable.
            return match *rx.borrow() {
                Landing::Pending | Landing::Headers => Landing::Abandoned,
                done => done,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::reason::Failure;

    fn lead(c: &Arc<Coalescer>, key: &Key) -> Flight {
        match c.join(key) {
            Join::Leader(flight) => flight,
            Join::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follow(c: &Arc<Coalescer>, key: &Key) -> watch::Receiver<Landing> {
        match c.join(key) {
            Join::Follower(rx) => rx,
            Join::Leader(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn followers_wait_for_the_leader_and_hear_its_failure() {
        let c = Arc::new(Coalescer::default());
        let key = b"k".to_vec();
        let flight = lead(&c, &key);
        let waiting = tokio::spawn(wait(follow(&c, &key), BODY_WAIT));
        flight.failed(Reason::Failure(Failure::Timeout));
        drop(flight);
        assert_eq!(
            waiting.await.unwrap(),
            Landing::Failed(Reason::Failure(Failure::Timeout))
        );
        assert_eq!(c.in_flight(), 0);
        let _new = lead(&c, &key);
    }

    #[tokio::test]
    async fn a_leader_dropped_unfinished_is_abandoned_and_the_next_joiner_leads() {
        let c = Arc::new(Coalescer::default());
        let key = b"k".to_vec();
        let flight = lead(&c, &key);
        let waiting = tokio::spawn(wait(follow(&c, &key), BODY_WAIT));
        flight.headers();
        drop(flight);
        assert_eq!(waiting.await.unwrap(), Landing::Abandoned);
        let _next = lead(&c, &key);
        let _ = follow(&c, &key);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_releases_followers_after_the_wait() {
        let c = Arc::new(Coalescer::default());
        let key = b"k".to_vec();
        let flight = lead(&c, &key);
        let waiting = tokio::spawn(wait(follow(&c, &key), BODY_WAIT));
        flight.headers();
        tokio::time::sleep(BODY_WAIT + Duration::from_millis(1)).await;
        assert_eq!(waiting.await.unwrap(), Landing::Unshared);
        flight.stored();
        drop(flight);
        let rx = {
            let f = lead(&c, &key);
            f.stored();
            let rx = follow(&c, &key);
            drop(f);
            rx
        };
        assert_eq!(wait(rx, BODY_WAIT).await, Landing::Stored);
    }
}
