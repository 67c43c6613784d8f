//! The embedded in-process store, on moka.

use super::{Backend, BackendKind, Lease, Versioned, is_lease_marker};
use crate::CacheError;
use crate::index::{self, Scope};
use crate::key::glob_match;
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An in-process store on moka: each entry with its own TTL, glob removal with Redis's
/// semantics, and a bound in bytes. Shared by clones; not shared across processes.
///
/// # The bound
///
/// The bound is on an estimate of the memory the entries take: for each entry, its key (twice:
/// in the store and in its namespace's set, below) and its value as the allocator holds them
/// (with an allocation header, rounded up to 16 bytes), 32 bytes for its slot in the set, plus
/// [`ENTRY_OVERHEAD_BYTES`](Self::ENTRY_OVERHEAD_BYTES) (416) for the bookkeeping moka and this
/// store keep per entry. For small values the overhead is most of an entry: a 64 MiB store
/// holds about 125,000 entries of a 20-byte key and an 8-byte value.
///
/// # Eviction
///
/// moka's default policy, TinyLFU: entries are evicted in least-recently-used order, and a
/// frequency sketch (a Count-Min sketch of how often each key was read, hit or miss) filters
/// admission. When the store is full, a new entry is kept only if its key has been read more
/// often than the least recently used entries it would displace; otherwise the new entry is
/// the one dropped. A burst of keys never read before therefore does not flush the entries in
/// use, and a write into a full store may not be kept. Evictions are applied in batches by
/// later operations, so the store can exceed its bound for a moment.
///
/// # Patterns
///
/// Keys are filed by namespace as Redis files them (the first `:`-separated part after the
/// prefix), so a pattern that names one namespace (`users:*`) or all of them (`*`) removes its
/// entries without walking the store, and one filtered within a namespace (`users:1*`) walks
/// that namespace only. Other patterns walk every entry. The sets are counted in each entry's
/// weight (above); keys of entries that expired or were evicted leave them when a set has
/// doubled since it was last pruned, and a set no longer written is pruned in turn and dropped
/// once empty.
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Cache<String, Entry>,
    index: Arc<Mutex<HashMap<String, Filed>>>,
    /// The refresh claims: key, then the claimer's marker and when the claim lapses. Few at
    /// a time (one per key being refreshed); lapsed ones are dropped as new ones are taken.
    claims: Arc<Mutex<HashMap<String, Claim>>>,
    /// Held by a pattern removal from taking keys out of a set until it has removed them all:
    /// one that began later, finding the set gone, waits for them instead of returning early.
    removing: Arc<tokio::sync::Mutex<()>>,
    /// Keys filed so far, to prune another namespace's set now and then.
    filings: Arc<std::sync::atomic::AtomicU64>,
}

/// A refresh claim: the claimer's marker, and when the claim lapses.
type Claim = (Vec<u8>, Instant);

/// The keys filed under one namespace.
#[derive(Debug, Default)]
struct Filed {
    head: String,
    keys: HashSet<String>,
    /// Its size after the last pruning.
    pruned_len: usize,
    /// The filings counter when it was last pruned.
    pruned_at: u64,
}

/// A namespace's set is pruned of absent keys when it reaches twice its size after the last
/// pruning, and at least this size.
const PRUNE_AT_LEAST: usize = 1024;

/// What a key's slot in its namespace's set takes besides the key's own allocation: the
/// `String` (24 bytes) and the hash table's control byte, at its usual load.
const INDEX_SLOT_BYTES: usize = 32;

/// Every how many filings one namespace's set, taken in turn, is pruned.
const PRUNE_OTHER_EVERY: u64 = 64;

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    ttl: Duration,
    /// When it was written, for the TTL it has left.
    written: Instant,
    /// Unique to this write in the process: what a refresh's [`Backend::refill`] is
    /// conditioned on.
    version: u64,
}

/// The version of the next write (0 is never one).
static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Entry {
    fn new(bytes: &[u8], ttl: Duration) -> Self {
        Self {
            bytes: Arc::from(bytes),
            ttl,
            written: Instant::now(),
            version: NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The TTL it has left.
    fn remaining(&self) -> Duration {
        self.ttl.saturating_sub(self.written.elapsed())
    }
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl MemoryBackend {
    /// The default bound: 64 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

    /// The memory an entry takes besides its key and value, counted against the bound.
    ///
    /// Besides the allocations of its key and value, an entry has moka's entry (with an `Arc`
    /// of the key, its hash, access and write times, and our value: the bytes' `Arc` and a
    /// TTL), the entry's shared info, its node in the least-recently-used deque and in the
    /// timer wheel that expires it, the concurrent hash map's bucket and slot, and its share of
    /// the frequency sketch: each allocation with the allocator's header and rounding.
    // Measured on x86_64 Linux (glibc malloc, moka 0.12.16, debug build), before the store kept
    // namespace sets: 1.5 million entries of a 20-byte key and an 8-byte value, inserted into a
    // store bounded too high to evict (100 GiB), grew the process's RSS by 456.5 bytes an
    // entry, read from `VmRSS` in `/proc/self/status` before the store is built and after the
    // inserts and moka's `run_pending_tasks`. The key and value took 64 of them (32 each as
    // allocated); the other 392.5, rounded up to 16, are this constant. Other sizes measured 3
    // to 8 bytes under their weight of then: 472.6 for a 32-byte key, 493.2 for a 40-byte
    // value, 605 for a 60-byte key with a 100-byte value (weighed 608). The weight now also
    // counts the key's copy and slot in its namespace's set. At the default bound,
    // `cargo test -p cachekit-redis --test memory_bound -- --nocapture` prints the outcome: RSS grown
    // by 1.22x the bound, 644 bytes a held entry (the sketch, fixed costs, and the keys of
    // evicted entries that wait in the set until it is pruned included; 1.02x before the sets
    // existed). On 32-bit targets, with smaller pointers, the estimate is high.
    // An entry's version (8 bytes, added since) takes it to 400.5, rounded up to 416.
    pub const ENTRY_OVERHEAD_BYTES: u32 = 416;

    /// A store whose entries take at most `max_bytes`, as estimated: their keys and values
    /// as allocated plus [`ENTRY_OVERHEAD_BYTES`](Self::ENTRY_OVERHEAD_BYTES) each.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| weigh(key.len(), entry.bytes.len()))
            .expire_after(PerEntryTtl)
            .build();
        Self {
            cache,
            index: Arc::default(),
            claims: Arc::default(),
            removing: Arc::default(),
            filings: Arc::default(),
        }
    }

    fn filed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Filed>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files `key`, which was just written, in its namespace's set. Writers store first and
    /// file second, and pruning drops a key only if the store lacks it while the lock is held,
    /// so a stored key is filed by the time its write returns.
    fn file(&self, key: &str) {
        let Some(place) = index::place(key) else {
            return;
        };
        let mut filed = self.filed();
        let set = filed.entry(place.index_key()).or_insert_with(|| Filed {
            head: place.head.to_owned(),
            ..Filed::default()
        });
        if set.keys.insert(key.to_owned())
            && set.keys.len() >= PRUNE_AT_LEAST.max(2 * set.pruned_len)
        {
            set.keys.retain(|k| self.cache.contains_key(k));
            set.pruned_len = set.keys.len();
        }
        // Now and then, prune another namespace's set, in turn, and forget it once empty: a
        // namespace no longer written would otherwise keep its keys.
        let n = self
            .filings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(PRUNE_OTHER_EVERY) && !filed.is_empty() {
            let turn = usize::try_from(n / PRUNE_OTHER_EVERY).unwrap_or(0) % filed.len();
            if let Some(name) = filed.keys().nth(turn).cloned() {
                // A set is pruned this way at most once per as many filings as it holds keys,
                // so the work per filing stays constant however large it is.
                let empty = filed.get_mut(&name).is_some_and(|set| {
                    if n.saturating_sub(set.pruned_at) < set.keys.len() as u64 {
                        return false;
                    }
                    set.keys.retain(|k| self.cache.contains_key(k));
                    set.pruned_len = set.keys.len();
                    set.pruned_at = n;
                    set.keys.is_empty()
                });
                if empty {
                    filed.remove(&name);
                }
            }
        }
    }

    /// Drops `key` from its set if the store no longer holds it.
    fn unfile(&self, key: &str) {
        let Some(place) = index::place(key) else {
            return;
        };
        let mut filed = self.filed();
        if let Some(set) = filed.get_mut(&place.index_key())
            && !self.cache.contains_key(key)
        {
            set.keys.remove(key);
        }
    }

    /// Removes `keys` from the store; returns how many were there.
    async fn remove_all(&self, keys: impl IntoIterator<Item = String>) -> u64 {
        let mut removed = 0;
        for key in keys {
            // An expired entry still held is discarded, but not counted.
            let live = self.cache.contains_key(&key);
            if self.cache.remove(&key).await.is_some() && live {
                removed += 1;
            }
        }
        removed
    }

    /// Keys filed (possibly no longer stored), in all namespaces: for tests of the index's size.
    #[cfg(test)]
    fn filed_len(&self) -> usize {
        self.filed().values().map(|set| set.keys.len()).sum()
    }

    /// Entries currently held (approximate while evictions are pending).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Removes every entry.
    pub fn clear(&self) {
        // The sets first: a key written meanwhile is stored before it is filed, so it is either
        // removed below or filed after this.
        self.filed().clear();
        self.cache.invalidate_all();
    }

    /// Applies `op` to `key` atomically if it holds exactly `marker`.
    async fn if_holds(&self, key: &str, marker: &[u8], op: Op<Entry>) -> CompResult<String, Entry> {
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                match current {
                    Some(current) if &*current.value().bytes == marker => op,
                    _ => Op::Nop,
                }
            })
            .await
    }

    fn matching_keys(&self, pattern: &str) -> Vec<Arc<String>> {
        self.cache
            .iter()
            .filter(|(key, _)| glob_match(pattern, key))
            .map(|(key, _)| key)
            .collect()
    }
}

/// The weight of an entry: its estimated memory in bytes, saturating at `u32::MAX` (moka's
/// weights are `u32`, so an entry over 4 GiB is under-counted).
fn weigh(key_len: usize, value_len: usize) -> u32 {
    // An `Arc<[u8]>` holds two counters before the bytes.
    let value = allocation(value_len.saturating_add(16));
    // The key is held twice: by moka, and in its namespace's set (a `String` in a hash set's
    // slot, with the table's spare capacity).
    let key = allocation(key_len)
        .saturating_mul(2)
        .saturating_add(INDEX_SLOT_BYTES);
    let bytes = key.saturating_add(value);
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .saturating_add(MemoryBackend::ENTRY_OVERHEAD_BYTES)
}

/// What the allocator takes for `len` bytes: an 8-byte header, rounded up to 16 bytes, as
/// glibc's malloc does (other allocators' size classes for small sizes are close).
fn allocation(len: usize) -> usize {
    len.saturating_add(8)
        .checked_next_multiple_of(16)
        .unwrap_or(usize::MAX)
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_BYTES)
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.cache.entry_count())
            .field("weighted_size", &self.cache.weighted_size())
            .finish()
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.cache.get(key).await.map(|entry| entry.bytes.to_vec()))
    }

    async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, CacheError> {
        Ok(self
            .cache
            .get(key)
            .await
            .map(|entry| (entry.bytes.to_vec(), Some(entry.remaining()))))
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, CacheError> {
        Ok(self.cache.get(key).await.map(|entry| {
            Versioned::new(entry.bytes.to_vec(), Some(entry.remaining()), entry.version)
        }))
    }

    async fn claim(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let now = Instant::now();
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.retain(|_, (_, until)| *until > now);
        if claims.get(key).is_some_and(|(held, _)| held != marker) {
            return Ok(false);
        }
        claims.insert(key.to_owned(), (marker.to_vec(), now + ttl));
        Ok(true)
    }

    async fn release_claim(&self, key: &str, marker: &[u8]) -> Result<(), CacheError> {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        if claims.get(key).is_some_and(|(held, _)| held == marker) {
            claims.remove(key);
        }
        Ok(())
    }

    async fn refill(
        &self,
        key: &str,
        version: u64,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let entry = Entry::new(value, ttl);
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                match current {
                    Some(current)
                        if current.value().version == version
                            && &*current.value().bytes == expected =>
                    {
                        Op::Put(entry)
                    }
                    _ => Op::Nop,
                }
            })
            .await;
        let stored = matches!(result, CompResult::ReplacedWith(_));
        if stored {
            self.file(key);
        }
        Ok(stored)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let entry = Entry::new(value, ttl);
        self.cache.insert(key.to_owned(), entry).await;
        self.file(key);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let removed = self.cache.remove(key).await.is_some();
        self.unfile(key);
        Ok(removed)
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let scope = index::scope(pattern);
        let _removing = match scope {
            Scope::Exact(_) | Scope::Walk => None,
            _ => Some(self.removing.lock().await),
        };
        let keys: Vec<String> = match scope {
            Scope::Exact(key) => return self.delete(&key).await.map(u64::from),
            Scope::Namespace { head, ns } => self
                .filed()
                .remove(&index::index_key(head, Some(&ns)))
                .map(|set| set.keys.into_iter().collect())
                .unwrap_or_default(),
            Scope::Within {
                head,
                ns,
                member_pattern,
            } => {
                let keys: Vec<String> = self
                    .filed()
                    .get(&index::index_key(head, Some(&ns)))
                    .map(|set| {
                        set.keys
                            .iter()
                            .filter(|k| {
                                index::place(k)
                                    .is_some_and(|p| glob_match(member_pattern, p.member))
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let removed = self.remove_all(keys.iter().cloned()).await;
                for key in &keys {
                    self.unfile(key);
                }
                return Ok(removed);
            }
            Scope::Everything { head } => {
                let mut filed = self.filed();
                let mut keys = Vec::new();
                filed.retain(|_, set| {
                    if set.head == head {
                        keys.extend(set.keys.drain());
                        false
                    } else {
                        true
                    }
                });
                keys
            }
            Scope::Walk => self
                .matching_keys(pattern)
                .into_iter()
                .map(|key| key.as_str().to_owned())
                .collect(),
        };
        Ok(self.remove_all(keys).await)
    }

    async fn try_lease(
        &self,
        key: &str,
        marker: &[u8],
        ttl: Duration,
    ) -> Result<Lease, CacheError> {
        let marker = Entry::new(marker, ttl);
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                match current {
                    Some(_) => Op::Nop,
                    None => Op::Put(marker),
                }
            })
            .await;
        Ok(match result {
            CompResult::Inserted(_) => {
                self.file(key);
                Lease::Acquired
            }
            CompResult::Unchanged(entry) if is_lease_marker(&entry.value().bytes) => Lease::Held,
            CompResult::Unchanged(entry) => Lease::Value(entry.value().bytes.to_vec()),
            // Not produced by the operations above; read as "someone else is working on it".
            _ => Lease::Held,
        })
    }

    async fn fill(
        &self,
        key: &str,
        marker: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let entry = Entry::new(value, ttl);
        let result = self.if_holds(key, marker, Op::Put(entry)).await;
        let stored = matches!(result, CompResult::ReplacedWith(_));
        if stored {
            self.file(key);
        }
        Ok(stored)
    }

    async fn release(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
        let result = self.if_holds(key, expected, Op::Remove).await;
        self.unfile(key);
        Ok(matches!(result, CompResult::Removed(_)))
    }

    async fn renew(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let entry = Entry::new(marker, ttl);
        let result = self.if_holds(key, marker, Op::Put(entry)).await;
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_get_delete_and_patterns() {
        let m = MemoryBackend::default();
        let ttl = Duration::from_secs(60);
        for k in ["p:users:1", "p:users:2", "p:roles:1", "q:users:1"] {
            m.set(k, k.as_bytes(), ttl).await.unwrap();
        }
        assert_eq!(
            m.get("p:users:1").await.unwrap().as_deref(),
            Some(&b"p:users:1"[..])
        );
        assert!(m.delete("p:users:1").await.unwrap());
        assert!(!m.delete("p:users:1").await.unwrap());
        assert_eq!(m.delete_matching("p:users:*").await.unwrap(), 1);
        assert_eq!(
            m.get("q:users:1").await.unwrap().as_deref(),
            Some(&b"q:users:1"[..])
        );
    }

    #[tokio::test]
    async fn a_lease_is_voided_by_a_delete_and_then_refuses_the_fill() {
        let m = MemoryBackend::default();
        let ttl = Duration::from_secs(60);
        let marker = b"\0cachekit-lease:a";
        assert_eq!(
            m.try_lease("k", marker, ttl).await.unwrap(),
            Lease::Acquired
        );
        assert_eq!(
            m.try_lease("k", b"\0cachekit-lease:b", ttl).await.unwrap(),
            Lease::Held
        );
        assert!(m.fill("k", marker, b"1", ttl).await.unwrap());
        assert_eq!(
            m.try_lease("k", marker, ttl).await.unwrap(),
            Lease::Value(b"1".to_vec())
        );

        assert!(m.delete("k").await.unwrap());
        assert_eq!(
            m.try_lease("k", marker, ttl).await.unwrap(),
            Lease::Acquired
        );
        assert!(m.delete("k").await.unwrap()); // an invalidation while loading
        assert!(!m.fill("k", marker, b"stale", ttl).await.unwrap());
        assert_eq!(m.get("k").await.unwrap(), None);

        assert_eq!(
            m.try_lease("k", marker, ttl).await.unwrap(),
            Lease::Acquired
        );
        m.release("k", b"\0cachekit-lease:other").await.unwrap();
        assert_eq!(
            m.try_lease("k", b"\0cachekit-lease:b", ttl).await.unwrap(),
            Lease::Held
        );
        m.release("k", marker).await.unwrap();
        assert_eq!(m.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn patterns_remove_what_a_walk_would_through_the_index() {
        let ttl = Duration::from_secs(60);
        let keys = [
            "p:users:1",
            "p:users:12",
            "p:users:2:roles",
            "p:users",
            "p:users2:1",
            "p:roles:1",
            "p::1",
            "q:users:1",
            "p#x:users:1",
            "p:users:*",
        ];
        let patterns = [
            "p:users:*",
            "p:users:1*",
            "p:*",
            "p:users:*:roles",
            "p:u*",
            "p:users",
            "p:users:\\*",
            "p::*",
            "q:*",
            "*",
        ];
        for pattern in patterns {
            let indexed = MemoryBackend::default();
            for key in keys {
                indexed.set(key, b"1", ttl).await.unwrap();
            }
            let removed = indexed.delete_matching(pattern).await.unwrap();
            let expected: Vec<&str> = keys
                .iter()
                .copied()
                .filter(|k| glob_match(pattern, k))
                .collect();
            assert_eq!(removed, expected.len() as u64, "{pattern}");
            for key in keys {
                let present = indexed.get(key).await.unwrap().is_some();
                assert_eq!(present, !expected.contains(&key), "{key} after {pattern}");
            }
        }
    }

    #[tokio::test]
    async fn keys_of_entries_that_are_gone_leave_the_index() {
        let m = MemoryBackend::default();
        for i in 0..10_000 {
            m.set(&format!("p:users:{i}"), b"1", Duration::from_millis(1))
                .await
                .unwrap();
            if i % 1000 == 999 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert!(
            m.filed_len() <= 2 * PRUNE_AT_LEAST + 1000,
            "{}",
            m.filed_len()
        );
        m.set("p:users:x", b"1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(m.delete("p:users:x").await.unwrap());
        m.delete_matching("p:users:*").await.unwrap();
        assert_eq!(m.filed_len(), 0);
    }

    #[tokio::test]
    async fn namespaces_no_longer_written_are_forgotten() {
        let m = MemoryBackend::default();
        for i in 0..100 {
            m.set(&format!("p:ns{i}:1"), b"1", Duration::from_millis(1))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in 0..(PRUNE_OTHER_EVERY * 150) {
            m.set(&format!("p:live:{}", i % 10), b"1", Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(
            m.filed().len(),
            1,
            "{:?}",
            m.filed().keys().collect::<Vec<_>>()
        );
        assert_eq!(m.filed_len(), 10);
    }

    #[tokio::test]
    async fn entries_expire_by_their_own_ttl() {
        let m = MemoryBackend::default();
        m.set("short", b"1", Duration::from_millis(50))
            .await
            .unwrap();
        m.set("long", b"2", Duration::from_secs(60)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(m.get("short").await.unwrap(), None);
        assert!(m.get("long").await.unwrap().is_some());
    }

    #[test]
    fn an_entry_weighs_its_allocations_and_the_overhead() {
        // A 20-byte key: 32 bytes allocated, twice (the store and the index), plus the index
        // slot; an 8-byte value behind two counters: 32.
        assert_eq!(
            weigh(20, 8),
            32 * 2 + 32 + 32 + MemoryBackend::ENTRY_OVERHEAD_BYTES
        );
        assert_eq!(weigh(24, 8), weigh(20, 8));
        assert_eq!(weigh(25, 8), weigh(20, 8) + 32);
        assert_eq!(weigh(usize::MAX, 0), u32::MAX);
        assert_eq!(weigh(0, u32::MAX as usize), u32::MAX);
    }

    #[tokio::test]
    async fn bounded_by_bytes() {
        let m = MemoryBackend::new(10_000);
        let value = vec![0u8; 1000];
        for i in 0..100 {
            m.set(&format!("k{i}"), &value, Duration::from_secs(60))
                .await
                .unwrap();
        }
        m.cache.run_pending_tasks().await;
        assert!(
            m.cache.weighted_size() <= 10_000,
            "{}",
            m.cache.weighted_size()
        );
    }
}
