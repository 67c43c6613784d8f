//! In-process single-flight: one loader per key at a time; the callers that arrive while it
//! runs wait for its result instead of loading themselves.
//!
//! The result travels as the encoded bytes of the loaded value, so values need not be `Clone`
//! and every waiter decodes its own copy. Who may receive it:
//!
//! - a *proven* value (its write under the lease succeeded, so no invalidation happened since
//!   the load began) goes to every follower: the leader closes the flight before that write, so
//!   every follower began before it;
//! - an *unproven* value (the lease could not be taken or confirmed) goes only to the followers
//!   that joined before the leader [marked](Leader::mark) the start of what produced it (its
//!   load, or its read of the store). Such a follower began before the load did, so any
//!   invalidation complete when it began is complete before the load read the database.
//!
//! Followers that get nothing (the leader failed, panicked, was cancelled, or its value is
//! unproven and they came late) join again: one of them leads the next flight. The map entry is
//! removed when the leader's guard drops, whatever happened, so a key is never wedged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a finished leader hands its waiters: the encoded value.
pub(crate) type Shared = Arc<[u8]>;

/// A leader's result, as published to its followers.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) bytes: Shared,
    /// Written (or its lease confirmed) with proof that no invalidation came since the load.
    pub(crate) proven: bool,
}

type Slot = watch::Receiver<Option<Outcome>>;

/// Join order within one flight, and the leader's cut-off for unproven values.
#[derive(Debug)]
struct Tickets {
    issued: AtomicU64,
    /// Followers with a ticket below this may receive an unproven value.
    cutoff: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<String, (Slot, Arc<Tickets>)>>,
}

/// The caller's role for one key.
pub(crate) enum Role<'a> {
    /// Load, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait with [`wait`].
    Follower(Follower),
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: watch::Sender<Option<Outcome>>,
    tickets: Arc<Tickets>,
}

pub(crate) struct Follower {
    slot: Slot,
    ticket: u64,
    tickets: Arc<Tickets>,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((slot, tickets)) = map.get(key) {
            return Role::Follower(Follower {
                slot: slot.clone(),
                ticket: tickets.issued.fetch_add(1, Ordering::SeqCst),
                tickets: tickets.clone(),
            });
        }
        let (tx, rx) = watch::channel(None);
        let tickets = Arc::new(Tickets {
            issued: AtomicU64::new(0),
            cutoff: AtomicU64::new(0),
        });
        map.insert(key.to_owned(), (rx, tickets.clone()));
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            tx,
            tickets,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Leader<'_> {
    /// Marks the start of a step whose result may be shared unproven (a read of the store, or
    /// the load): every follower that joined so far began before it.
    pub(crate) fn mark(&self) {
        let issued = self.tickets.issued.load(Ordering::SeqCst);
        self.tickets.cutoff.store(issued, Ordering::SeqCst);
    }

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
            .is_some_and(|(slot, _)| slot.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }

    /// Hands the result to the waiters.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits for the leader; `None` when it ended without a value this follower may receive.
pub(crate) async fn wait(follower: Follower) -> Option<Shared> {
    let Follower {
        mut slot,
        ticket,
        tickets,
    } = follower;
    let waited = slot.wait_for(Option::is_some).await.map(|o| o.clone());
    // On `Err` the sender dropped: the leader failed, panicked or was cancelled. It may still
    // have sent a value just before dropping.
    let outcome = waited.unwrap_or_else(|_| slot.borrow().clone())?;
    (outcome.proven || ticket < tickets.cutoff.load(Ordering::SeqCst)).then_some(outcome.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(bytes: &'static [u8], proven: bool) -> Outcome {
        Outcome {
            bytes: Arc::from(bytes),
            proven,
        }
    }

    #[tokio::test]
    async fn followers_get_the_leaders_value_and_the_key_is_freed() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(follower) = flights.join("k") else {
            panic!("second caller follows")
        };
        let waiter = tokio::spawn(wait(follower));
        leader.finish(outcome(b"42", true));
        assert_eq!(waiter.await.unwrap().as_deref(), Some(&b"42"[..]));
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers_empty_handed() {
        let flights = Flights::default();
        let leader = flights.join("k");
        let Role::Follower(follower) = flights.join("k") else {
            panic!("follows")
        };
        drop(leader);
        assert_eq!(wait(follower).await, None);
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
        leader.finish(outcome(b"1", true));
        assert_eq!(wait(early).await.as_deref(), Some(&b"1"[..]));
    }

    #[tokio::test]
    async fn an_unproven_value_goes_only_to_followers_from_before_the_mark() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("leads")
        };
        let Role::Follower(before) = flights.join("k") else {
            panic!("follows")
        };
        leader.mark(); // the load begins
        let Role::Follower(after) = flights.join("k") else {
            panic!("follows")
        };
        leader.finish(outcome(b"7", false));
        assert_eq!(wait(before).await.as_deref(), Some(&b"7"[..]));
        assert_eq!(wait(after).await, None, "joined after the load began");
    }
}
