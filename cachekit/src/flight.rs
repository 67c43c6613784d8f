//! In-process single-flight: one loader per key at a time; the callers that arrive while it
//! runs wait for its result instead of loading themselves.
//!
//! The result travels as the encoded bytes of the loaded value, so values need not be `Clone`
//! and every waiter decodes its own copy. A leader that fails, panics or is cancelled drops its
//! sender; its waiters then see the failure and load for themselves (an error is not shared:
//! error types need not be `Clone`). The map entry is removed when the leader's guard drops,
//! whatever happened, so a key is never wedged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a finished leader hands its waiters: the encoded value.
pub(crate) type Shared = Arc<[u8]>;

type Slot = watch::Receiver<Option<Shared>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<String, Slot>>,
}

/// The caller's role for one key.
pub(crate) enum Role<'a> {
    /// Load, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait with [`wait`].
    Follower(Slot),
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: watch::Sender<Option<Shared>>,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get(key) {
            return Role::Follower(slot.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            tx,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Leader<'_> {
    /// Stops taking followers: callers from now on go their own way (to the store). Called
    /// before the loaded value is written, so every follower is known to have arrived before
    /// that write: the condition for handing it a value whose write proved fresh.
    pub(crate) fn close(&self) {
        let mut map = self
            .flights
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|slot| slot.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }

    /// Hands the loaded value to the waiters.
    pub(crate) fn finish(self, value: Shared) {
        self.tx.send_replace(Some(value));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits for the leader; `None` when it ended without a value.
pub(crate) async fn wait(mut slot: Slot) -> Option<Shared> {
    if let Ok(value) = slot.wait_for(Option::is_some).await {
        return value.clone();
    }
    // The sender dropped: the leader failed, panicked or was cancelled. It may still have sent
    // a value just before dropping.
    slot.borrow().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value_and_the_key_is_freed() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(slot) = flights.join("k") else {
            panic!("second caller follows")
        };
        let waiter = tokio::spawn(wait(slot));
        leader.finish(Arc::from(&b"42"[..]));
        assert_eq!(waiter.await.unwrap().as_deref(), Some(&b"42"[..]));
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers_empty_handed() {
        let flights = Flights::default();
        let leader = flights.join("k");
        let Role::Follower(slot) = flights.join("k") else {
            panic!("follows")
        };
        drop(leader);
        assert_eq!(wait(slot).await, None);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_closed_flight_takes_no_new_followers_but_serves_its_own() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("leads")
        };
        let Role::Follower(early) = flights.join("k") else {
            panic!("follows")
        };
        leader.close();
        assert!(
            matches!(flights.join("k"), Role::Leader(_)),
            "a late caller goes its own way"
        );
        leader.finish(Arc::from(&b"1"[..]));
        assert_eq!(wait(early).await.as_deref(), Some(&b"1"[..]));
    }
}
