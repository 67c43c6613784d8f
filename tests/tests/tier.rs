//! The in-process tier against real Redis: two services on one server, and a plain redis-rs
//! client writing behind their backs. An instance whose tier holds a value must stop serving it
//! once another instance or another client changed the key, and must flush and bypass its tier
//! while the channel that carries invalidations is down.
//!
//! The delays between one instance's invalidation and the other's first fresh read are
//! printed (`--nocapture`), never asserted: each wait is only bounded by a hang detector.

use cachekit::CacheService;
use cachekit_tests::{FaultProxy, RedisServer, raw, within};
use std::time::{Duration, Instant};

/// Far longer than any test: an entry leaves a tier only by invalidation or a flush.
const LOCAL_TTL: Duration = Duration::from_secs(600);
/// The hang detector for every wait.
const BOUND: Duration = Duration::from_secs(10);
const PREFIX: &str = "tier";

async fn tiered(url: &str) -> CacheService {
    CacheService::builder()
        .redis_url(url)
        .prefix(PREFIX)
        .local_tier(LOCAL_TTL)
        .build()
        .await
        .expect("the service builds")
}

/// Reads `key` on `cache` until a read served by its tier returns `expected`: the tier's
/// channel comes up in the background, a read fills the tier only once it is, and a tier may
/// still serve the value before a write made elsewhere until that write's invalidation
/// arrives.
async fn until_local(cache: &CacheService, key: &str, expected: u64) {
    within(BOUND, "the tier serving the key", async {
        loop {
            let before = cache.stats().local_hits;
            let value = cache.get::<u64>(key).await;
            if cache.stats().local_hits > before && value == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Reads `key` on `cache` until it is no longer `stale`; returns the first other value.
async fn until_not(cache: &CacheService, key: &str, stale: Option<u64>) -> Option<u64> {
    within(BOUND, "the other instance dropping the old value", async {
        loop {
            let value = cache.get::<u64>(key).await;
            if value != stale {
                return value;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Set,
    Delete,
    Pattern,
    ClearAll,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_instance_evicts_on_the_other() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let (a, b) = (tiered(&server.url()).await, tiered(&server.url()).await);
    let key = "users:1";
    const ROUNDS: u64 = 400;
    let mut delays: Vec<(Op, Duration)> = Vec::new();
    for round in 0..ROUNDS {
        let op = [Op::Set, Op::Delete, Op::Pattern, Op::ClearAll][round as usize % 4];
        let old = round * 2;
        assert!(a.set(key, &old, None).await);
        until_local(&b, key, old).await;
        let expected = match op {
            Op::Set => {
                a.try_set(key, &(old + 1), None).await.unwrap();
                Some(old + 1)
            }
            Op::Delete => {
                assert!(a.try_delete(key).await.unwrap());
                None
            }
            Op::Pattern => {
                assert_eq!(a.try_invalidate_pattern("users:*").await.unwrap(), 1);
                None
            }
            Op::ClearAll => {
                assert_eq!(a.try_clear_all().await.unwrap(), 1);
                None
            }
        };
        let returned = Instant::now();
        let seen = until_not(&b, key, Some(old)).await;
        delays.push((op, returned.elapsed()));
        assert_eq!(
            seen, expected,
            "{op:?}: the other instance read another value"
        );
    }
    let mut all: Vec<Duration> = delays.iter().map(|&(_, d)| d).collect();
    all.sort();
    eprintln!(
        "cross-instance invalidation delay over {ROUNDS} invalidations (set, delete, pattern, \
         clear_all in turn): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        all[all.len() - 1],
    );
    let stats = b.stats();
    assert!(
        stats.local_hits >= ROUNDS,
        "the other instance's tier served {} reads",
        stats.local_hits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_another_client_evict() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = tiered(&server.url()).await;
    let mut conn = server.connection().await;
    let physical = format!("{PREFIX}:users:2");

    assert!(cache.set("users:2", &1u64, None).await);
    until_local(&cache, "users:2", 1).await;
    raw::set(&mut conn, &physical, "2").await; // another program's SET
    assert_eq!(until_not(&cache, "users:2", Some(1)).await, Some(2));

    until_local(&cache, "users:2", 2).await;
    let () = redis::cmd("DEL")
        .arg(&physical)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(until_not(&cache, "users:2", Some(2)).await, None);

    raw::set(&mut conn, &physical, "3").await;
    until_local(&cache, "users:2", 3).await;
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    assert_eq!(until_not(&cache, "users:2", Some(3)).await, None);

    // An entry that expires in Redis leaves the tier too (Redis reports expired keys).
    let () = redis::cmd("SET")
        .arg(&physical)
        .arg("4")
        .arg("PX")
        .arg(300)
        .query_async(&mut conn)
        .await
        .unwrap();
    until_local(&cache, "users:2", 4).await;
    assert_eq!(until_not(&cache, "users:2", Some(4)).await, None);
}

/// The channel's connection is cut (with the data connection, by a proxy): the tier must be
/// flushed and bypassed, so a value changed while it cannot hear of it is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_channel_flushes_and_bypasses_the_tier() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = tiered(&proxy.url()).await;
    let mut conn = server.connection().await;

    assert!(cache.set("users:3", &1u64, None).await);
    until_local(&cache, "users:3", 1).await;
    let flushes = cache.stats().local_flushes;
    proxy.cut();
    within(BOUND, "the tier noticing the cut", async {
        while cache.stats().local_flushes == flushes {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // Written while the tier can hear nothing: it must not serve the old value.
    raw::set(&mut conn, &format!("{PREFIX}:users:3"), "2").await;
    let local_hits = cache.stats().local_hits;
    for _ in 0..20 {
        assert_ne!(cache.get::<u64>("users:3").await, Some(1));
    }
    assert_eq!(
        cache.stats().local_hits,
        local_hits,
        "nothing served locally"
    );

    proxy.restore();
    within(BOUND, "the service reading the new value", async {
        while cache.get::<u64>("users:3").await != Some(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    until_local(&cache, "users:3", 2).await; // and the tier serves again
}

/// A channel that stops answering (a stall, not a cut) is found out by its heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_channel_flushes_the_tier() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = tiered(&proxy.url()).await;

    assert!(cache.set("users:4", &1u64, None).await);
    until_local(&cache, "users:4", 1).await;
    let flushes = cache.stats().local_flushes;
    proxy.stall();
    within(BOUND, "the heartbeat noticing the stall", async {
        while cache.stats().local_flushes == flushes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let local_hits = cache.stats().local_hits;
    assert_eq!(cache.get::<u64>("users:4").await, None, "Redis is stalled");
    assert_eq!(
        cache.stats().local_hits,
        local_hits,
        "nothing served locally"
    );
    proxy.resume();
    until_local(&cache, "users:4", 1).await;
}

/// `CLIENT KILL` of the channel's connection alone (the data connection lives on): the tier is
/// flushed, and a write made once the channel was down (which no new channel reports) is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_channel_connection_flushes_the_tier() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = tiered(&server.url()).await;
    let mut conn = server.connection().await;

    assert!(cache.set("users:5", &1u64, None).await);
    until_local(&cache, "users:5", 1).await;
    let flushes = cache.stats().local_flushes;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let channel: Vec<&str> = clients
        .lines()
        .filter(|line| line.contains(" name=cachekit-tracking "))
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next())
        .collect();
    assert_eq!(channel.len(), 1, "one channel connection in {clients}");
    let () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(channel[0])
        .query_async(&mut conn)
        .await
        .map(|_: u64| ())
        .unwrap();
    within(BOUND, "the tier noticing the kill", async {
        while cache.stats().local_flushes == flushes {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    raw::set(&mut conn, &format!("{PREFIX}:users:5"), "2").await;
    assert_eq!(until_not(&cache, "users:5", Some(1)).await, Some(2));
}

/// The tier on the embedded store: hits come from it, the service's own writes evict, and an
/// entry is not held past its TTL in the store.
#[tokio::test]
async fn the_tier_on_the_embedded_store() {
    let cache = CacheService::builder()
        .memory(1 << 20)
        .local_tier(LOCAL_TTL)
        .build()
        .await
        .unwrap();
    assert!(cache.set("a", &1u64, None).await);
    until_local(&cache, "a", 1).await;
    assert!(cache.set("a", &2u64, None).await);
    assert_eq!(cache.get::<u64>("a").await, Some(2));
    until_local(&cache, "a", 2).await;
    assert_eq!(cache.invalidate_pattern("*").await, 1);
    assert_eq!(cache.get::<u64>("a").await, None);

    assert!(
        cache
            .set("short", &3u64, Some(Duration::from_millis(50)))
            .await
    );
    until_local(&cache, "short", 3).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        cache.get::<u64>("short").await,
        None,
        "expired in the store"
    );
}

struct Settings {
    cache: CacheService,
}

impl cachekit::HasCache for Settings {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Settings {
    #[cachekit::cached(key = "settings:{name}")]
    async fn through_the_tier(&self, name: &str) -> String {
        format!("value of {name}")
    }

    #[cachekit::cached(key = "settings:{name}", no_local)]
    async fn past_the_tier(&self, name: &str) -> String {
        format!("value of {name}")
    }
}

/// `#[cached(no_local)]` reads skip the tier; the others go through it.
#[tokio::test]
async fn no_local_functions_skip_the_tier() {
    let settings = Settings {
        cache: CacheService::builder()
            .memory(1 << 20)
            .local_tier(LOCAL_TTL)
            .build()
            .await
            .unwrap(),
    };
    for _ in 0..3 {
        assert_eq!(settings.past_the_tier("a").await, "value of a");
    }
    let stats = settings.cache.stats();
    assert_eq!(
        (stats.local_hits, stats.hits),
        (0, 2),
        "one load, two store hits"
    );
    for _ in 0..3 {
        assert_eq!(settings.through_the_tier("a").await, "value of a");
    }
    let stats = settings.cache.stats();
    assert_eq!(
        (stats.local_hits, stats.hits),
        (2, 3),
        "one store hit fills the tier"
    );
}

/// An entry leaves the tier when it expires in Redis, even if Redis is slow to report it:
/// with active expiry off, Redis deletes (and reports) an expired key only when it is read,
/// and the tier would otherwise keep serving it for its own TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_expires_from_the_tier_with_its_ttl_in_redis() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start_with_args(&["--enable-debug-command", "yes"]);
    let mut conn = server.connection().await;
    let () = redis::cmd("DEBUG")
        .arg("SET-ACTIVE-EXPIRE")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let cache = tiered(&server.url()).await;
    assert!(
        cache
            .set("users:6", &1u64, Some(Duration::from_millis(300)))
            .await
    );
    until_local(&cache, "users:6", 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache.get::<u64>("users:6").await,
        None,
        "served past its TTL"
    );
}
