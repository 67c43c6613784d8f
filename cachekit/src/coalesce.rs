//! Read coalescing: concurrent reads of one key from the store share requests.
//!
//! A reader never takes the reply of a request sent before it arrived: that reply may predate
//! a write or removal that returned before the reader began, on this instance or any other.
//! So readers of a key take turns in *flights*: the first reader leads one (it asks the store);
//! readers that arrive while it is in the air wait for the next flight, whose request is sent
//! after they arrived. When a flight lands, one of those waiting leads the next, and the others
//! take its reply. A hot key read by many tasks at once costs one request per round trip, each
//! serving every reader that arrived during the previous one; the first reader to decode a
//! reply as a type leaves the decoded value for the others, which clone it.
//!
//! A leader that is cancelled or fails hands its followers no reply: they read on their own
//! (join again), except after a transport fault, which spends their budget as it spent the
//! leader's.

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::any::Any;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Shards of the in-flight map: readers of different keys rarely contend for one lock.
const SHARDS: usize = 16;

/// The in-flight map: the flights of keys in the air, in shards chosen by the key's hash. A read
/// hashes its key once, to find both its shard and its place in it, and its leader keeps the
/// hash to find the flight again when it lands.
#[derive(Default)]
struct Shards {
    maps: [Mutex<HashTable<InFlight>>; SHARDS],
    hasher: DefaultHashBuilder,
}

/// A key in the air and its flight.
struct InFlight {
    key: Arc<str>,
    flight: Flight,
}

/// The flights of one service.
#[derive(Default)]
pub(crate) struct Reads {
    shards: Arc<Shards>,
}

/// The flight of a key in the air: its followers (readers that arrived before it was sent),
/// and the readers waiting for the next one.
#[derive(Default)]
struct Flight {
    followers: Vec<oneshot::Sender<Handed>>,
    waiting: Vec<oneshot::Sender<Handed>>,
}

/// What a reader is handed when a flight lands.
pub(crate) enum Handed {
    /// The reply of a request sent after the reader arrived.
    Reply(Arc<Reply>),
    /// The flight failed; see [`Failed`].
    Failed(Failed),
    /// Lead the next flight. Dropped unused (its reader was cancelled after it was handed
    /// over), it ends that flight as a cancelled leader does, so no one waits on it forever.
    Lead(Leader<'static>),
}

/// The leader's read failed (the store did not answer, refused, or the leader was cancelled).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failed {
    /// A transport fault: the follower's budget is spent, as the leader's was.
    Transport,
    /// Anything else: the follower reads again.
    Other,
}

/// A reply from the store, shared by a leader and its followers.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The stored bytes, if any.
    pub(crate) bytes: Option<Vec<u8>>,
    /// The TTL the store said is left, if it said.
    pub(crate) left: Option<Duration>,
    /// The first decoded value, for readers of the same type to clone.
    decoded: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Reply {
    pub(crate) fn new(bytes: Option<Vec<u8>>, left: Option<Duration>) -> Self {
        Self {
            bytes,
            left,
            decoded: OnceLock::new(),
        }
    }

    /// The value another reader decoded from these bytes, if it was a `T`.
    pub(crate) fn decoded<T: Clone + 'static>(&self) -> Option<T> {
        self.decoded.get()?.downcast_ref::<T>().cloned()
    }

    /// Leaves `value`, decoded from these bytes, for the other readers (the first one stays).
    pub(crate) fn keep<T: Clone + Send + Sync + 'static>(&self, value: &T) {
        let _ = self.decoded.set(Arc::new(value.clone()));
    }
}

/// A reader's part in a read of its key.
pub(crate) enum Role<'a> {
    /// Ask the store, then [`land`](Leader::land) and hand the reply to the followers.
    Leader(Leader<'a>),
    /// Wait: for the reply of the next flight, or to lead it.
    Follower(oneshot::Receiver<Handed>),
}

/// The leader of a flight; dropped before it landed, it hands its followers a failure and
/// passes the lead on.
pub(crate) struct Leader<'a> {
    shards: MapRef<'a>,
    key: Arc<str>,
    /// The key's hash in the map.
    hash: u64,
    landed: bool,
}

/// The map a leader's flight is in: borrowed by the reader that joined first, shared with a
/// reader handed the lead. Borrowing spares every lone reader an update of the map's reference
/// count, a counter all threads reading through the service would otherwise write.
enum MapRef<'a> {
    Borrowed(&'a Arc<Shards>),
    Shared(Arc<Shards>),
}

impl MapRef<'_> {
    fn shards(&self) -> &Arc<Shards> {
        match self {
            MapRef::Borrowed(shards) => shards,
            MapRef::Shared(shards) => shards,
        }
    }
}

/// The followers of a landed flight, waiting for what it hands them.
pub(crate) struct Followers(Vec<oneshot::Sender<Handed>>);

impl Reads {
    /// This reader's part in a read of the physical `key`.
    pub(crate) fn join(&self, key: &Arc<str>) -> Role<'_> {
        self.join_hashed(key, self.shards.hasher.hash_one(&**key))
    }

    /// [`join`](Self::join) with the key's hash computed (by a test, any hash: keys that share
    /// one still read apart).
    fn join_hashed(&self, key: &Arc<str>, hash: u64) -> Role<'_> {
        let shards = &*self.shards;
        let mut flights = shards.lock(hash);
        // One lookup either way, with the hash computed above.
        let rehash = |in_flight: &InFlight| shards.hasher.hash_one(&*in_flight.key);
        match flights.entry(hash, |in_flight| in_flight.key == *key, rehash) {
            Entry::Occupied(mut flight) => {
                let (sender, receiver) = oneshot::channel();
                flight.get_mut().flight.waiting.push(sender);
                return Role::Follower(receiver);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(InFlight {
                    key: key.clone(),
                    flight: Flight::default(),
                });
            }
        }
        drop(flights);
        Role::Leader(Leader {
            shards: MapRef::Borrowed(&self.shards),
            key: key.clone(),
            hash,
            landed: false,
        })
    }
}

impl Shards {
    /// The shard of the keys with this hash, locked. Bits 32-35 choose it: hashbrown takes a
    /// bucket from the low bits and a tag from the top seven, so a shard's keys still spread
    /// over its table.
    fn lock(&self, hash: u64) -> MutexGuard<'_, HashTable<InFlight>> {
        let shard = (hash >> 32) as usize % SHARDS;
        self.maps[shard].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Leader<'_> {
    /// Ends the flight; returns its followers. Readers waiting for the next flight are now
    /// its followers, one of them handed the lead of it.
    pub(crate) fn land(mut self) -> Followers {
        self.landed = true;
        Followers(self.take_followers())
    }

    /// Ends the flight after the store did not answer (a transport fault): its followers and
    /// the readers waiting for the next flight are all handed the failure, since the store would
    /// not answer them either and none of them may wait another operation timeout.
    pub(crate) fn land_unanswered(mut self) {
        self.landed = true;
        let flight = self
            .shards
            .shards()
            .lock(self.hash)
            .find_entry(self.hash, |in_flight| in_flight.key == self.key)
            .ok()
            .map(|entry| entry.remove().0.flight);
        if let Some(flight) = flight {
            let everyone = flight.followers.into_iter().chain(flight.waiting).collect();
            Followers(everyone).fail(Failed::Transport);
        }
    }

    fn take_followers(&self) -> Vec<oneshot::Sender<Handed>> {
        let mut flights = self.shards.shards().lock(self.hash);
        let Ok(mut flight) = flights.find_entry(self.hash, |in_flight| in_flight.key == self.key)
        else {
            return Vec::new();
        };
        let followers = std::mem::take(&mut flight.get_mut().flight.followers);
        let mut waiting = std::mem::take(&mut flight.get_mut().flight.waiting).into_iter();
        // The first waiter still listening leads the next flight; the others follow it.
        loop {
            let Some(next) = waiting.next() else {
                flight.remove();
                break;
            };
            let lead = Leader {
                shards: MapRef::Shared(self.shards.shards().clone()),
                key: self.key.clone(),
                hash: self.hash,
                landed: false,
            };
            match next.send(Handed::Lead(lead)) {
                Ok(()) => {
                    flight.get_mut().flight.followers = waiting.collect();
                    break;
                }
                // Its reader is gone: the lead comes back, and must not end the flight while
                // this lock is held.
                Err(Handed::Lead(mut lead)) => lead.landed = true,
                Err(_) => {}
            }
        }
        followers
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.landed {
            self.landed = true;
            Followers(self.take_followers()).fail(Failed::Other);
        }
    }
}

impl Followers {
    /// Whether there is anyone to hand the reply to.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Hands every follower the reply.
    pub(crate) fn reply(self, reply: &Arc<Reply>) {
        for follower in self.0 {
            let _ = follower.send(Handed::Reply(reply.clone()));
        }
    }

    /// Hands every follower the failure.
    pub(crate) fn fail(self, failed: Failed) {
        for follower in self.0 {
            let _ = follower.send(Handed::Failed(failed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(role: Role<'_>) -> Leader<'_> {
        match role {
            Role::Leader(leader) => leader,
            Role::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follow(role: Role<'_>) -> oneshot::Receiver<Handed> {
        match role {
            Role::Follower(receiver) => receiver,
            Role::Leader(_) => panic!("expected to follow"),
        }
    }

    /// Keys whose hashes collide still read apart: each leads its own flight, and landing
    /// one leaves the other's in the air.
    #[test]
    fn keys_that_share_a_hash_read_apart() {
        let reads = Reads::default();
        let (a, b): (Arc<str>, Arc<str>) = ("p:a".into(), "p:b".into());
        let lead_a = lead(reads.join_hashed(&a, 7));
        let lead_b = lead(reads.join_hashed(&b, 7));
        let mut behind_a = follow(reads.join_hashed(&a, 7));
        let mut behind_b = follow(reads.join_hashed(&b, 7));
        assert!(lead_a.land().is_empty());
        // a's waiter leads a's next flight; b's flight is untouched.
        assert!(matches!(behind_a.try_recv(), Ok(Handed::Lead(_))));
        assert!(behind_b.try_recv().is_err());
        assert!(lead_b.land().is_empty());
        assert!(matches!(behind_b.try_recv(), Ok(Handed::Lead(_))));
    }

    fn reply(bytes: &[u8]) -> Arc<Reply> {
        Arc::new(Reply::new(Some(bytes.to_vec()), None))
    }

    fn handed_lead(receiver: &mut oneshot::Receiver<Handed>) -> Leader<'static> {
        match receiver.try_recv() {
            Ok(Handed::Lead(leader)) => leader,
            _ => panic!("expected the lead"),
        }
    }

    /// Readers that arrive while a flight is in the air never take its reply: one of them
    /// leads the next flight, and the others take that one's.
    #[tokio::test]
    async fn readers_take_only_replies_of_requests_sent_after_they_arrived() {
        let reads = Reads::default();
        let key: Arc<str> = Arc::from("p:k");
        let first = lead(reads.join(&key));
        let (mut a, mut b) = (follow(reads.join(&key)), follow(reads.join(&key)));
        let followers = first.land();
        assert!(
            followers.is_empty(),
            "no one arrived before the first request"
        );
        followers.reply(&reply(b"old"));
        let second = handed_lead(&mut a);
        let mut c = follow(reads.join(&key)); // arrives after the second request
        let followers = second.land();
        assert_eq!(followers.len(), 1);
        followers.reply(&reply(b"new"));
        match b.try_recv() {
            Ok(Handed::Reply(reply)) => assert_eq!(reply.bytes.as_deref(), Some(&b"new"[..])),
            _ => panic!("the second waiter takes the second flight's reply"),
        }
        drop(handed_lead(&mut c).land()); // the latecomer leads the third
        assert!(
            matches!(reads.join(&key), Role::Leader(_)),
            "every flight landed"
        );
    }

    #[tokio::test]
    async fn a_cancelled_leader_fails_its_followers_and_passes_the_lead() {
        let reads = Reads::default();
        let key: Arc<str> = Arc::from("p:k");
        let first = lead(reads.join(&key));
        let gone = follow(reads.join(&key));
        drop(gone); // gone before its turn: the lead passes over it
        let mut next = follow(reads.join(&key));
        let mut behind = follow(reads.join(&key));
        drop(first.land());
        let second = handed_lead(&mut next);
        drop(second); // cancelled before it landed
        assert!(matches!(
            behind.try_recv(),
            Ok(Handed::Failed(Failed::Other))
        ));
        assert!(
            matches!(reads.join(&key), Role::Leader(_)),
            "the flight ended"
        );
    }

    /// A reader cancelled after it was handed the lead, before it took it: the flight it was
    /// to lead ends, and its followers are told, instead of waiting forever.
    #[tokio::test]
    async fn a_lead_never_taken_ends_its_flight() {
        let reads = Reads::default();
        let key: Arc<str> = Arc::from("p:k");
        let first = lead(reads.join(&key));
        let promoted = follow(reads.join(&key));
        let mut behind = follow(reads.join(&key));
        drop(first.land()); // hands `promoted` the lead
        drop(promoted); // its reader is cancelled before it reads the lead
        assert!(matches!(
            behind.try_recv(),
            Ok(Handed::Failed(Failed::Other))
        ));
        assert!(
            matches!(reads.join(&key), Role::Leader(_)),
            "the flight ended"
        );
    }

    /// Readers waiting behind a flight the store did not answer are not made to wait for
    /// another request.
    #[tokio::test]
    async fn an_unanswered_flight_fails_everyone_behind_it() {
        let reads = Reads::default();
        let key: Arc<str> = Arc::from("p:k");
        let first = lead(reads.join(&key));
        let mut waiting = follow(reads.join(&key));
        first.land_unanswered();
        assert!(matches!(
            waiting.try_recv(),
            Ok(Handed::Failed(Failed::Transport))
        ));
        assert!(
            matches!(reads.join(&key), Role::Leader(_)),
            "the flight landed"
        );
    }

    #[test]
    fn the_first_decoded_value_is_shared_by_type() {
        let reply = Reply::new(Some(b"7".to_vec()), None);
        assert_eq!(reply.decoded::<u32>(), None);
        reply.keep(&7u32);
        reply.keep(&8u32); // the first stays
        assert_eq!(reply.decoded::<u32>(), Some(7));
        assert_eq!(reply.decoded::<String>(), None);
    }
}
