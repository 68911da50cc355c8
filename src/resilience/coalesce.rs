//! Request coalescing: concurrent cache misses for one key wait for a single upstream
//! request instead of each sending their own.
//!
//! The first miss becomes the leader and holds a [`Flight`]; later misses for the same key
//! follow it and wait until the flight ends. A flight ends when the leader's response has
//! been stored (the followers then read it from the store), when the response turned out
//! not to be storable (the followers go upstream themselves: nothing private or large is
//! ever shared), or when the leader failed (the followers are told why, so the stale copy
//! or the fallback can answer them instead of N more failures).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::store::Key;
use crate::proxy::failure::Reason;

/// One route's flights in progress.
#[derive(Debug, Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<Key, watch::Receiver<Option<Reason>>>>,
}

/// How a miss joins the flights for its key.
pub enum Join {
    /// Nobody was fetching this key: go upstream, and end the flight when done.
    Leader(Flight),
    /// Another request is fetching it: wait for it.
    Follower(watch::Receiver<Option<Reason>>),
}

/// The leader's side of a flight; dropping it wakes the followers.
#[derive(Debug)]
pub struct Flight {
    coalescer: Arc<Coalescer>,
    key: Key,
    tx: watch::Sender<Option<Reason>>,
}

impl Coalescer {
    /// Joins the flight for `key`, starting it if there is none.
    pub fn join(self: &Arc<Self>, key: &Key) -> Join {
        let Ok(mut flights) = self.flights.lock() else {
            let (tx, _) = watch::channel(None);
            return Join::Leader(Flight {
                coalescer: Arc::clone(self),
                key: key.clone(),
                tx,
            });
        };
        if let Some(rx) = flights.get(key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
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
        self.tx.send_replace(Some(reason));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Ok(mut flights) = self.coalescer.flights.lock() {
            flights.remove(&self.key);
        }
    }
}

/// Waits for the flight to end; returns the leader's failure, if it failed.
pub async fn wait(mut rx: watch::Receiver<Option<Reason>>) -> Option<Reason> {
    // `changed` errs once the leader's `Flight` is dropped; the last value stays readable.
    while rx.changed().await.is_ok() {}
    *rx.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::failure::Failure;

    #[tokio::test]
    async fn followers_wait_for_the_leader_and_hear_its_failure() {
        let c = Arc::new(Coalescer::default());
        let key = b"k".to_vec();
        let Join::Leader(flight) = c.join(&key) else {
            panic!("first is the leader")
        };
        let Join::Follower(rx) = c.join(&key) else {
            panic!("second follows")
        };
        let waiting = tokio::spawn(wait(rx));
        flight.failed(Reason::Failure(Failure::Timeout));
        drop(flight);
        assert_eq!(
            waiting.await.unwrap(),
            Some(Reason::Failure(Failure::Timeout))
        );
        assert_eq!(c.in_flight(), 0);
        assert!(
            matches!(c.join(&key), Join::Leader(_)),
            "a new flight after the end"
        );
    }
}
