//! Single entries through the guard: reading (with the pending-invalidation gate, the size cap
//! and the removal of undecodable values), writing (with the size cap and the TTL bound), and
//! the in-process fallback store for both. The public methods in `service.rs` and the load path
//! in `load.rs` are built on these.

use crate::backend::Backend;
use crate::coalesce::{Failed, Handed, Reply, Role};
use crate::config::check_ttl;
use crate::error::FaultKind;
use crate::guard::{Bound, Budget};
use crate::invalidate::Removal;
use crate::metrics::Tier;
use crate::stats::Counters;
use crate::{CacheError, CacheService};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// A value read from the store, its encoded length, and the TTL it has left if the store said.
type Stored<T> = (Option<T>, usize, Option<Duration>);

impl CacheService {
    /// A read: from the in-process tier (if there is one and `local`), else from the primary
    /// backend. Counts hits and misses of the reads that reached it; a read that failed is
    /// counted by the caller, which may still find it in the fallback.
    pub(crate) async fn read<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        local: bool,
        budget: &Budget,
    ) -> Result<Option<T>, CacheError> {
        self.read_gate()?;
        let Some(tier) = self.inner.tier.as_ref().filter(|_| local) else {
            return self.read_store(key, budget).await.map(|read| read.0);
        };
        if let Some(value) = tier.get::<T>(key) {
            self.inner.counters.hit(key, Tier::Local);
            return Ok(Some(value));
        }
        let ticket = tier.ticket(key);
        let (value, encoded_len, left) = self.read_store::<T>(key, budget).await?;
        if let Some(value) = &value {
            tier.fill(key, ticket, value, encoded_len, left);
        }
        Ok(value)
    }

    /// A read from the store: the value, its encoded length, and the TTL it has left when the
    /// store said (only asked when the tier is on). Concurrent reads of the key share requests
    /// and their decoded values (`coalesce`).
    async fn read_store<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        budget: &Budget,
    ) -> Result<Stored<T>, CacheError> {
        let physical = self.physical_key_shared(key);
        let reads = &self.inner.reads;
        let mut role = reads.join(&physical);
        // A follower waits for the flight in the air and then for its own: bounded as a whole
        // by one operation timeout from when it first followed.
        let timeout = self.guard().timeout();
        let mut deadline = None;
        let leader = loop {
            match role {
                Role::Leader(leader) => break leader,
                Role::Follower(handed) => match tokio::time::timeout_at(
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout),
                    handed,
                )
                .await
                {
                    Err(_) => {
                        self.inner.counters.fault(FaultKind::Timeout);
                        budget.spend();
                        return Err(CacheError::Timeout { op: "get", timeout });
                    }
                    Ok(handed) => match handed {
                        Ok(Handed::Reply(reply)) => {
                            self.inner.counters.read_coalesced(key);
                            return self.take_reply(key, &physical, &reply, budget).await;
                        }
                        Ok(Handed::Lead(leader)) => break leader,
                        // The store did not answer the leader: it would not answer this one.
                        Ok(Handed::Failed(Failed::Transport)) => {
                            budget.spend();
                            return Err(CacheError::Skipped);
                        }
                        // The leader was cancelled, or its reply refused: read again.
                        Ok(Handed::Failed(Failed::Other)) | Err(_) => role = reads.join(&physical),
                    },
                },
            }
        };
        let fetched = match self.fetch(key, &physical, budget).await {
            Err(error) if error.is_transport() => {
                leader.land_unanswered();
                return Err(error);
            }
            fetched => fetched,
        };
        let followers = leader.land();
        let (bytes, left) = match fetched {
            Ok(found) => found.map_or((None, None), |(bytes, left)| (Some(bytes), left)),
            Err(error) => {
                followers.fail(Failed::Other);
                return Err(error);
            }
        };
        if followers.is_empty() {
            return self
                .decode_stored(key, &physical, bytes, left, budget)
                .await;
        }
        let reply = Arc::new(Reply::new(bytes, left));
        followers.reply(&reply);
        self.take_reply(key, &physical, &reply, budget).await
    }

    /// One request to the store for the physical key, through the guard.
    async fn fetch(
        &self,
        key: &str,
        physical: &Arc<str>,
        budget: &Budget,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, CacheError> {
        let guard = self.guard();
        let backend = guard.backend();
        // With the service's grace period, a read needs the TTL left to tell a stale value.
        let grace = self.inner.fresh.grace();
        let with_ttl = self.inner.tier.is_some() || !grace.is_zero();
        let read = async {
            if let Some(redis) = &self.inner.redis {
                // The built-in Redis backend, called directly.
                if with_ttl {
                    redis.read_with_ttl(physical).await
                } else {
                    Ok(redis.read(physical).await?.map(|bytes| (bytes, None)))
                }
            } else if with_ttl {
                backend.get_with_ttl(physical).await
            } else {
                Ok(backend.get(physical).await?.map(|bytes| (bytes, None)))
            }
        };
        // Batched reads bound themselves (a queued read by its batch's deadline).
        let bounded = !with_ttl && self.inner.redis.as_ref().is_some_and(|r| r.bounds_reads());
        let read = if bounded {
            guard.call_bounded("get", budget, read)
        } else {
            guard.call("get", Bound::Op, budget, read)
        };
        let read = match read.await {
            // Past its TTL, within the grace period: a miss here (a cache-aside call with a
            // loader may still serve it if the loader fails).
            Ok(Some((bytes, left))) if !grace.is_zero() => Ok(match left {
                Some(left) if left <= grace => None,
                left => Some((bytes, left.map(|left| left - grace))),
            }),
            read => read,
        };
        match read {
            // A value over the size cap, or a list, hash or set under the prefix (this cache
            // writes strings only): not something to read, so it is removed.
            Err(e)
                if matches!(
                    e.fault_kind(),
                    Some(FaultKind::TooLarge | FaultKind::WrongType)
                ) =>
            {
                self.remove_unreadable(key, physical, &e, budget).await;
                Err(e)
            }
            other => other,
        }
    }

    async fn decode_stored<T: DeserializeOwned>(
        &self,
        key: &str,
        physical: &str,
        bytes: Option<Vec<u8>>,
        left: Option<Duration>,
        budget: &Budget,
    ) -> Result<Stored<T>, CacheError> {
        let encoded_len = bytes.as_deref().map_or(0, |b| self.inner.format.weight(b));
        let value = self
            .decode_or_remove(key, physical, bytes.as_deref(), budget)
            .await?;
        Ok((value, encoded_len, left))
    }

    /// A value from a reply shared with other readers: the value one of them decoded as a `T`,
    /// or decoded here (and left for the others).
    async fn take_reply<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        physical: &str,
        reply: &Reply,
        budget: &Budget,
    ) -> Result<Stored<T>, CacheError> {
        let encoded_len = reply
            .bytes
            .as_deref()
            .map_or(0, |b| self.inner.format.weight(b));
        if let Some(value) = reply.decoded::<T>() {
            self.inner.counters.hit(key, Tier::Store);
            return Ok((Some(value), encoded_len, reply.left));
        }
        let value = self
            .decode_or_remove(key, physical, reply.bytes.as_deref(), budget)
            .await?;
        if let Some(value) = &value {
            reply.keep(value);
        }
        Ok((value, encoded_len, reply.left))
    }

    /// Decodes what the backend returned; an undecodable value is removed if it is still there
    /// (compare-and-delete: a value written meanwhile survives).
    pub(crate) async fn decode_or_remove<T: DeserializeOwned>(
        &self,
        key: &str,
        physical: &str,
        bytes: Option<&[u8]>,
        budget: &Budget,
    ) -> Result<Option<T>, CacheError> {
        let Some(bytes) = bytes else {
            return self.decode(key, None);
        };
        match self.decode(key, Some(bytes)) {
            Err(error) => {
                // Best effort: if the removal fails too, the next read finds the same bytes and
                // misses again, which is still correct.
                let guard = self.guard();
                let remove = guard.backend().release(physical, bytes);
                let _ = guard.call("delete", Bound::Op, budget, remove).await;
                self.evict_local(Removal::Key(physical));
                Err(error)
            }
            decoded => decoded,
        }
    }

    /// Removes a key that cannot be read as a value (too large, or of another type than a
    /// string), so it stops costing every reader a round trip. Unconditional: its bytes were
    /// never read, so there is nothing to compare.
    pub(crate) async fn remove_unreadable(
        &self,
        key: &str,
        physical: &str,
        why: &CacheError,
        budget: &Budget,
    ) {
        tracing::warn!(key = %self.log_key(key), error = %why.detail(), "cached key cannot be read as a value; removing it");
        let guard = self.guard();
        let remove = guard.backend().delete(physical);
        let _ = guard.call("delete", Bound::Op, budget, remove).await;
    }

    /// Decodes what a store returned, counting the hit, the miss or the undecodable value.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        key: &str,
        bytes: Option<&[u8]>,
    ) -> Result<Option<T>, CacheError> {
        let counters = &self.inner.counters;
        let Some(bytes) = bytes.filter(|b| !crate::backend::is_lease_marker(b)) else {
            // Empty, or another caller's lease: that caller is loading it.
            counters.miss(key);
            return Ok(None);
        };
        match self.inner.format.decode(key, bytes) {
            Ok(value) => {
                counters.hit(key, Tier::Store);
                Ok(Some(value))
            }
            Err(error) => {
                counters.miss(key);
                Counters::bump(&counters.decode_errors);
                tracing::warn!(key = %self.log_key(key), error = %error.detail(), "cached value did not decode into the requested type; removing it");
                Err(error)
            }
        }
    }

    /// A read that could not use the primary backend: the fallback store if there is one,
    /// else a miss.
    pub(crate) async fn fallback_get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let Some((store, _)) = &self.inner.fallback else {
            self.inner.counters.miss(key);
            return None;
        };
        let physical = self.physical_key(key);
        let bytes = store.get(&physical).await.ok().flatten();
        match self.decode(key, bytes.as_deref()) {
            Ok(value) => value,
            Err(_) => {
                let _ = store.delete(&physical).await;
                None
            }
        }
    }

    /// Encodes a value for the store, refusing one over the maximum value size.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, CacheError> {
        let encoded = self.inner.format.encode(key, value);
        if let Err(CacheError::TooLarge { .. }) = encoded {
            self.inner.counters.fault(FaultKind::TooLarge);
        }
        encoded
    }

    /// Writes encoded bytes; on a backend failure, to the fallback store if there is one.
    pub(crate) async fn store(
        &self,
        key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
        budget: &Budget,
    ) -> bool {
        match self.try_store(key, bytes, ttl, budget).await {
            Ok(()) => true,
            Err(e) => {
                if e.is_transport() || e.is_skipped() {
                    self.degraded("set", key, &e);
                    self.store_fallback(key, bytes, ttl).await;
                } else {
                    tracing::warn!(key = %self.log_key(key), error = %e.detail(), "value not cached");
                }
                false
            }
        }
    }

    pub(crate) async fn store_fallback(&self, key: &str, bytes: &[u8], ttl: Option<Duration>) {
        if let Some((store, fallback_ttl)) = &self.inner.fallback {
            let ttl = ttl.unwrap_or(self.inner.default_ttl).min(*fallback_ttl);
            let _ = store.set(&self.physical_key(key), bytes, ttl).await;
        }
    }

    pub(crate) async fn try_store(
        &self,
        key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
        budget: &Budget,
    ) -> Result<(), CacheError> {
        let ttl = self.ttl(ttl)?;
        let physical = self.physical_key(key);
        let guard = self.guard();
        let stored = guard
            .call(
                "set",
                Bound::Op,
                budget,
                guard.backend().set(&physical, bytes, ttl),
            )
            .await;
        // Whatever the store answered (a timed-out write may still land): the tier's value of
        // the key is no longer the latest.
        self.evict_local(Removal::Key(&physical));
        stored?;
        Counters::bump(&self.inner.counters.sets);
        Ok(())
    }

    /// The TTL of a `set`: the given one or the default, plus the service's grace period
    /// (stale-if-error), so that reads with the grace see it fresh for its TTL. An invalid TTL
    /// is left for the write to refuse.
    pub(crate) fn set_ttl(&self, ttl: Option<Duration>) -> Option<Duration> {
        let grace = self.inner.fresh.grace();
        if grace.is_zero() {
            return ttl;
        }
        self.store_ttl(ttl, grace)
    }

    /// The TTL of a write: the given one or the default, checked.
    pub(crate) fn ttl(&self, ttl: Option<Duration>) -> Result<Duration, CacheError> {
        check_ttl(ttl.unwrap_or(self.inner.default_ttl))
    }
}
