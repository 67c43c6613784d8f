//! The embedded in-process store, on moka.

use super::{Backend, BackendKind};
use crate::CacheError;
use crate::key::glob_match;
use moka::Expiry;
use moka::future::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An in-process store: bounded by total bytes (least recently used entries are evicted
/// first, by moka's TinyLFU policy), each entry with its own TTL, and glob removal with Redis's
/// semantics. Shared by clones; not shared across processes.
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Cache<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    ttl: Duration,
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
    /// The default bound: 64 MiB of keys and values.
    pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

    /// A store holding at most `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self { cache }
    }

    /// Entries currently held (approximate while evictions are pending).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    fn matching_keys(&self, pattern: &str) -> Vec<Arc<String>> {
        self.cache
            .iter()
            .filter(|(key, _)| glob_match(pattern, key))
            .map(|(key, _)| key)
            .collect()
    }
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

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let entry = Entry {
            bytes: Arc::from(value),
            ttl,
        };
        self.cache.insert(key.to_owned(), entry).await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        Ok(self.cache.remove(key).await.is_some())
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let mut removed = 0;
        for key in self.matching_keys(pattern) {
            if self.cache.remove(key.as_str()).await.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn count_matching(&self, pattern: &str, _budget: u64) -> Result<(u64, bool), CacheError> {
        Ok((self.matching_keys(pattern).len() as u64, true))
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
        assert_eq!(m.count_matching("p:*", 100).await.unwrap(), (1, true));
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
