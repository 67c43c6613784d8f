//! Refresh-ahead and stale-if-error, on real Redis (and the embedded store where it applies):
//! a hot key reloaded before it expires by one caller while the others keep the current
//! value; a refresh never written over an invalidation or a newer write; a value past its TTL
//! served only when the loader fails, never once an invalidation removed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachekit::{CacheService, Fetched, cached};
use cachekit_tests::{RedisServer, raw, within};
use tokio::sync::Notify;

const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct DbDown;

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database down")
    }
}

async fn redis_cache(
    server: &RedisServer,
    configure: impl FnOnce(cachekit::CacheServiceBuilder) -> cachekit::CacheServiceBuilder,
) -> CacheService {
    configure(
        CacheService::builder()
            .redis_url(server.url())
            .prefix("fresh"),
    )
    .build()
    .await
    .unwrap()
}

/// What a run of the hot-key scenario saw.
#[derive(Debug)]
struct HotKey {
    calls: u64,
    /// Loader runs, the first fill excluded.
    loads: u64,
    /// Reads that found the key missing: each of those callers waited for a loader (its own,
    /// or another's under the lease).
    misses: u64,
    /// Calls whose own loader ran: with refresh-ahead, the refreshing callers (each waits for
    /// its own refresh); without, the callers that loaded on a miss.
    loading_calls: u64,
    /// Refreshed values written back.
    refreshes: u64,
}

/// 1,000 reads a second of one key for `run`, from two service instances of five tasks each,
/// TTL 1 s, a loader taking 50 ms.
async fn hot_key(server: &RedisServer, refresh_ahead: bool, run: Duration) -> HotKey {
    let configure = |b: cachekit::CacheServiceBuilder| {
        if refresh_ahead {
            b.refresh_ahead(1.0)
        } else {
            b
        }
    };
    let caches = [
        redis_cache(server, configure).await,
        redis_cache(server, configure).await,
    ];
    let loads = Arc::new(AtomicU64::new(0));
    let load = {
        let loads = loads.clone();
        move || {
            let loads = loads.clone();
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, DbDown>("profile".to_string())
            }
        }
    };
    let ttl = Some(Duration::from_secs(1));
    caches[0]
        .get_or_load("users:hot", ttl, load.clone())
        .await
        .unwrap();
    let first = loads.load(Ordering::SeqCst);
    let misses_before: u64 = caches.iter().map(|c| c.stats().misses).sum();
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + run;
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..5 {
            let (cache, load, calls) = (cache.clone(), load.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                let mut own_loads = 0;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while Instant::now() < stop {
                    tick.tick().await;
                    let fetched = cache
                        .get_or_load_with_status("users:hot", ttl, load.clone())
                        .await
                        .unwrap();
                    assert_eq!(fetched.value, "profile");
                    calls.fetch_add(1, Ordering::SeqCst);
                    own_loads += u64::from(!fetched.from_cache);
                }
                own_loads
            }));
        }
    }
    let mut own_loads = 0;
    for task in tasks {
        own_loads += task.await.unwrap();
    }
    let misses = caches.iter().map(|c| c.stats().misses).sum::<u64>() - misses_before;
    let refreshes: u64 = caches.iter().map(|c| c.stats().refreshes).sum();
    HotKey {
        calls: calls.load(Ordering::SeqCst),
        loads: loads.load(Ordering::SeqCst) - first,
        misses,
        loading_calls: own_loads,
        refreshes,
    }
}

/// A hot key (1,000 reads/s, TTL 1 s, loader 50 ms) with refresh-ahead: no read finds it
/// missing once it is filled, and the loader runs about once per TTL, by one caller. Without
/// refresh-ahead, every expiry is a miss that callers wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_before_it_expires_by_one_caller() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let run = Duration::from_secs(5);
    let with = hot_key(&server, true, run).await;
    println!("refresh-ahead on:  {with:?}");
    let other = RedisServer::start();
    let without = hot_key(&other, false, run).await;
    println!("refresh-ahead off: {without:?}");

    assert_eq!(
        with.misses, 0,
        "no read found the hot key missing: {with:?}"
    );
    assert!(
        with.refreshes >= 3 && with.loading_calls == with.loads,
        "it was refreshed by the callers that drew, not left to expire: {with:?}"
    );
    // About once per TTL: never two refreshes at once, nor one per caller.
    assert!(
        with.loads <= 2 * run.as_secs() + 1,
        "the loader ran about once per TTL: {with:?}"
    );
    assert!(
        without.misses >= 3,
        "without refresh-ahead the key expires and reads miss: {without:?}"
    );
}
