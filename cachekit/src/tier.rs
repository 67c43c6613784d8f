//! The in-process tier: decoded values held in front of the store, so a hit neither crosses the
//! network nor decodes.
//!
//! Entries are keyed by the logical key (without the service's prefix) and hold one value of
//! one type, `Arc<T>` behind `dyn Any`; a read for another type misses and goes to the store. A
//! hit clones the `T` (return `Arc<T>` from a `#[cached]` function to make that clone a
//! reference count).
//!
//! # Coherence
//!
//! The tier may serve an entry only while something vouches that no write has changed it:
//!
//! - Writes and removals made through this service evict their keys here once the store has
//!   answered (and before, for removals), so a read after one of this service's own writes
//!   returned never sees the tier's older value.
//! - Writes by anyone else (another instance, `redis-cli`, a service in another language)
//!   reach the tier as Redis invalidation messages (`tracking`, RESP3 `CLIENT TRACKING` in
//!   broadcast mode on the prefix). While that channel is down, the tier is flushed and
//!   bypassed: [`Tier::vouch`].
//!
//! A read that goes to the store and then fills the tier races with invalidations of the same
//! key: the reply may be older than an invalidation the tier has already applied. So a read
//! takes a [`Ticket`] before it asks the store, and its fill stands only if no invalidation of
//! a key in the same stripe (and no flush) happened since (`fill` inserts, then checks, then
//! takes the entry out again if anything moved, so an invalidation between the check and the
//! insert cannot be lost either).

pub(crate) mod tracking;

use crate::index::{self, Scope};
use crate::key::glob_match;
use moka::Expiry;
use moka::sync::Cache;
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Generation stripes: an invalidation of a key refuses the fills in flight of the keys in its
/// stripe. More stripes, fewer fills refused by an unrelated key's invalidation.
const STRIPES: usize = 1024;

/// What an entry costs beyond its encoded bytes and key: the slot, the `Arc`, moka's node and
/// its share of the hash table, measured roughly; used only to weigh entries against the
/// tier's byte bound.
const ENTRY_OVERHEAD_BYTES: u32 = 160;

/// Namespace generations, indexed by a hash of the namespace: two namespaces that share one
/// only cost each other misses.
const NAMESPACE_GENERATIONS: usize = 4096;

/// One decoded value.
#[derive(Clone)]
struct Slot {
    value: Arc<dyn Any + Send + Sync>,
    /// Its namespace's generation (an index into the tier's) and the generation it was filled
    /// in: a pattern that removes the whole namespace bumps it, and the slot is dead from then.
    namespace: Option<(usize, u64)>,
    /// Set once the fill that inserted it found nothing invalidated since its ticket; until
    /// then the slot is not served, so no reader sees a value a check is about to take back.
    committed: Arc<AtomicBool>,
    weight: u32,
    /// How long it may be held: the tier's TTL, or less if the store said so.
    ttl: Duration,
}

/// Each entry expires after its own TTL.
struct SlotTtl;

impl Expiry<Arc<str>, Slot> for SlotTtl {
    fn expire_after_create(&self, _key: &Arc<str>, slot: &Slot, _now: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        slot: &Slot,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// The in-process tier of one service.
pub(crate) struct Tier {
    entries: Cache<Arc<str>, Slot>,
    /// The longest an entry is held.
    ttl: Duration,
    /// `{prefix}:`: stripped from the physical keys that invalidations name.
    key_prefix: String,
    stripes: Box<[AtomicU64]>,
    /// Bumped by every flush and pattern, so fills in flight across one are refused.
    epoch: AtomicU64,
    /// Generations of namespaces (by a hash of their index key, `{head}#ix:{ns}`), so that a
    /// pattern removing a whole namespace costs one increment, not a walk of the tier.
    namespaces: Box<[AtomicU64]>,
    /// Whether the tier may serve and take entries: the invalidation channel is up (always, for
    /// a store this process is the only writer of).
    vouched: AtomicBool,
}

/// Taken before a read asks the store; lets the read's fill stand only if no invalidation of
/// its stripe and no flush happened since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    generation: u64,
    epoch: u64,
}

impl Tier {
    /// A tier holding entries for at most `ttl`, weighing at most `max_bytes`. `vouched`:
    /// whether it may serve from the start (`false` until an invalidation channel is up).
    pub(crate) fn new(key_prefix: &str, ttl: Duration, max_bytes: u64, vouched: bool) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &Arc<str>, slot: &Slot| slot.weight)
            .expire_after(SlotTtl)
            .build();
        Self {
            entries,
            ttl,
            key_prefix: key_prefix.to_owned(),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            namespaces: (0..NAMESPACE_GENERATIONS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            vouched: AtomicBool::new(vouched),
        }
    }

    /// The value of `key` as a `T`, if the tier holds one and may serve it.
    pub(crate) fn get<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        if !self.vouched.load(Ordering::SeqCst) {
            return None;
        }
        let slot = self.entries.get(key)?;
        if !slot.committed.load(Ordering::SeqCst) {
            return None;
        }
        if let Some((namespace, filled_in)) = slot.namespace
            && self.namespaces[namespace].load(Ordering::SeqCst) != filled_in
        {
            return None; // its namespace was removed since; moka drops the slot in time
        }
        slot.value.downcast_ref::<T>().cloned()
    }

    /// A ticket for a read of `key` that is about to ask the store.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = stripe_of(key);
        Ticket {
            stripe,
            generation: self.stripes[stripe].load(Ordering::SeqCst),
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    /// Holds `value`, read from the store as `encoded_len` bytes, as `key`'s entry for the
    /// tier's TTL or `left` (the entry's TTL left in the store, when it said), whichever is
    /// shorter; unless an invalidation or a flush happened since `ticket` was taken or the tier
    /// cannot vouch for it now.
    pub(crate) fn fill<T: Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        ticket: Ticket,
        value: &T,
        encoded_len: usize,
        left: Option<Duration>,
    ) {
        if !self.vouched.load(Ordering::SeqCst) || !self.unchanged(ticket) {
            return;
        }
        let weight = u32::try_from(encoded_len.saturating_add(key.len()))
            .unwrap_or(u32::MAX)
            .saturating_add(ENTRY_OVERHEAD_BYTES);
        let ttl = left.map_or(self.ttl, |left| left.min(self.ttl));
        if ttl.is_zero() {
            return;
        }
        let namespace = self
            .namespace_of(key)
            .map(|namespace| (namespace, self.namespaces[namespace].load(Ordering::SeqCst)));
        let committed = Arc::new(AtomicBool::new(false));
        let slot = Slot {
            value: Arc::new(value.clone()),
            namespace,
            committed: committed.clone(),
            weight,
            ttl,
        };
        self.entries.insert(Arc::from(key), slot);
        // Insert, then check again, then commit: an invalidation that bumped the stripe before
        // this check is seen here; one that bumps it after removes the entry itself. Readers
        // skip the slot until it is committed.
        if self.unchanged(ticket)
            && self.vouched.load(Ordering::SeqCst)
            && namespace
                .is_none_or(|(n, filled_in)| self.namespaces[n].load(Ordering::SeqCst) == filled_in)
        {
            committed.store(true, Ordering::SeqCst);
        } else {
            self.entries.invalidate(key);
        }
    }

    /// The generation index of the namespace of the logical `key`, if it has one.
    fn namespace_of(&self, key: &str) -> Option<usize> {
        let physical = format!("{}{key}", self.key_prefix);
        let place = index::place(&physical)?;
        place.ns?;
        Some(namespace_index(&place.index_key()))
    }

    fn unchanged(&self, ticket: Ticket) -> bool {
        self.stripes[ticket.stripe].load(Ordering::SeqCst) == ticket.generation
            && self.epoch.load(Ordering::SeqCst) == ticket.epoch
    }

    /// Evicts the logical `key`, refusing the fills in flight of its stripe.
    pub(crate) fn evict(&self, key: &str) {
        self.stripes[stripe_of(key)].fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
    }

    /// Evicts the physical key `physical`, if it is under the prefix.
    pub(crate) fn evict_physical(&self, physical: &str) {
        if let Some(key) = physical.strip_prefix(self.key_prefix.as_str()) {
            self.evict(key);
        }
    }

    /// Evicts every entry whose physical key matches the glob `pattern`, refusing every fill
    /// in flight. A whole namespace (`users:*`) or everything (`*`) costs one increment; other
    /// patterns walk the tier (bounded by its byte limit), never the store.
    pub(crate) fn evict_matching(&self, pattern: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        match index::scope(pattern) {
            Scope::Exact(physical) => return self.evict_physical(&physical),
            Scope::Namespace { head, ns } => {
                let namespace = namespace_index(&index::index_key(head, Some(&ns)));
                self.namespaces[namespace].fetch_add(1, Ordering::SeqCst);
                return;
            }
            Scope::Everything { head } if self.key_prefix.starts_with(&format!("{head}:")) => {
                return self.flush();
            }
            _ => {}
        }
        let prefix = self.key_prefix.as_str();
        let mut physical = String::new();
        for (key, _) in &self.entries {
            physical.clear();
            physical.push_str(prefix);
            physical.push_str(&key);
            if glob_match(pattern, &physical) {
                self.entries.invalidate(&*key);
            }
        }
    }

    /// Drops every entry and refuses every fill in flight.
    pub(crate) fn flush(&self) {
        // The epoch first, as an eviction bumps its stripe first: a fill that inserts after
        // the clear then sees the new epoch on its second check.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// Whether the tier may serve: `false` flushes it first, and while it stays `false`
    /// nothing is served or taken. Turned on only once the invalidation channel is up again
    /// (and after one more flush, so nothing from before the gap survives).
    pub(crate) fn vouch(&self, vouched: bool) {
        if vouched {
            self.flush();
            self.vouched.store(true, Ordering::SeqCst);
        } else {
            self.vouched.store(false, Ordering::SeqCst);
            self.flush();
        }
    }

    /// Whether the tier serves now.
    pub(crate) fn is_vouched(&self) -> bool {
        self.vouched.load(Ordering::SeqCst)
    }

    /// Entries held (moka's estimate, after its pending work).
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("vouched", &self.is_vouched())
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

/// The stripe of a logical key.
fn stripe_of(key: &str) -> usize {
    (fnv1a(key) % STRIPES as u64) as usize
}

/// The generation of a namespace, by its index key.
fn namespace_index(index_key: &str) -> usize {
    (fnv1a(index_key) % NAMESPACE_GENERATIONS as u64) as usize
}

/// FNV-1a over the bytes of `text`: the stripes here.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> Tier {
        Tier::new("app:", Duration::from_secs(60), 1 << 20, true)
    }

    #[test]
    fn serves_what_it_was_given_as_the_type_it_was_given() {
        let tier = tier();
        let ticket = tier.ticket("users:1");
        tier.fill("users:1", ticket, &"Ada".to_string(), 5, None);
        assert_eq!(tier.get::<String>("users:1").as_deref(), Some("Ada"));
        assert_eq!(tier.get::<u64>("users:1"), None, "another type misses");
        assert_eq!(tier.get::<String>("users:2"), None);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_does_not_stand() {
        let tier = tier();
        let ticket = tier.ticket("users:1");
        tier.evict("users:1"); // the invalidation, applied before the read's reply arrived
        tier.fill("users:1", ticket, &1u32, 1, None);
        assert_eq!(tier.get::<u32>("users:1"), None);
        // A fill with a ticket taken after the invalidation stands.
        let ticket = tier.ticket("users:1");
        tier.fill("users:1", ticket, &2u32, 1, None);
        assert_eq!(tier.get::<u32>("users:1"), Some(2));
    }

    #[test]
    fn flushes_and_patterns_refuse_fills_in_flight() {
        let tier = tier();
        let ticket = tier.ticket("users:1");
        tier.flush();
        tier.fill("users:1", ticket, &1u32, 1, None);
        assert_eq!(tier.get::<u32>("users:1"), None);

        let ticket = tier.ticket("roles:1");
        tier.evict_matching("app:users:*");
        tier.fill("roles:1", ticket, &1u32, 1, None);
        assert_eq!(tier.get::<u32>("roles:1"), None);
    }

    #[test]
    fn patterns_evict_what_they_match_and_nothing_else() {
        let tier = tier();
        for key in ["users:1", "users:2", "roles:1", "users"] {
            let ticket = tier.ticket(key);
            tier.fill(key, ticket, &key.to_string(), key.len(), None);
        }
        tier.evict_matching("app:users:*");
        assert_eq!(tier.get::<String>("users:1"), None);
        assert_eq!(tier.get::<String>("users:2"), None);
        assert_eq!(tier.get::<String>("roles:1").as_deref(), Some("roles:1"));
        assert_eq!(tier.get::<String>("users").as_deref(), Some("users"));
        tier.evict_physical("app:roles:1");
        tier.evict_physical("other:users"); // another prefix: not ours
        assert_eq!(tier.get::<String>("roles:1"), None);
        assert_eq!(tier.get::<String>("users").as_deref(), Some("users"));
    }

    #[test]
    fn a_namespace_removed_whole_takes_new_entries_again() {
        let tier = tier();
        let fill = |key: &str, value: u32| {
            let ticket = tier.ticket(key);
            tier.fill(key, ticket, &value, 1, None);
        };
        fill("users:1", 1);
        fill("users:2", 2);
        tier.evict_matching("app:users:*");
        assert_eq!(tier.get::<u32>("users:1"), None);
        fill("users:1", 3);
        assert_eq!(tier.get::<u32>("users:1"), Some(3));
        assert_eq!(tier.get::<u32>("users:2"), None);
        tier.evict_matching("app:users:1*"); // within the namespace: a walk
        assert_eq!(tier.get::<u32>("users:1"), None);
        fill("users:1", 4);
        tier.evict_matching("app:*");
        assert_eq!(tier.get::<u32>("users:1"), None);
    }

    #[test]
    fn an_unvouched_tier_neither_serves_nor_takes() {
        let tier = tier();
        let ticket = tier.ticket("k");
        tier.fill("k", ticket, &1u8, 1, None);
        tier.vouch(false);
        assert_eq!(tier.get::<u8>("k"), None);
        let ticket = tier.ticket("k");
        tier.fill("k", ticket, &2u8, 1, None);
        tier.vouch(true);
        assert_eq!(
            tier.get::<u8>("k"),
            None,
            "nothing from before or during the gap"
        );
        assert_eq!(tier.len(), 0);
    }

    #[test]
    fn an_entry_is_held_no_longer_than_the_store_said() {
        let tier = tier();
        let ticket = tier.ticket("k");
        tier.fill("k", ticket, &1u8, 1, Some(Duration::from_millis(30)));
        assert_eq!(tier.get::<u8>("k"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(tier.get::<u8>("k"), None);
    }

    #[test]
    fn the_byte_bound_holds() {
        let tier = Tier::new("app:", Duration::from_secs(60), 100_000, true);
        for i in 0..10_000 {
            let key = format!("k:{i}");
            let ticket = tier.ticket(&key);
            tier.fill(&key, ticket, &vec![0u8; 100], 100, None);
        }
        tier.entries.run_pending_tasks();
        assert!(
            tier.entries.weighted_size() <= 100_000,
            "{} bytes held",
            tier.entries.weighted_size()
        );
        assert!(tier.len() > 0);
    }
}
