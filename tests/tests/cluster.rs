//! cachekit on a real Redis Cluster (3 primaries, 3 replicas, started by the harness): every
//! operation, pattern invalidation and `clear_all` reaching keys on every primary, leases,
//! configuration from `REDIS_CLUSTER_NODES`, and a primary killed under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachekit::{CacheConfig, CacheService};
use cachekit_tests::{RedisCluster, RedisServer, raw, within};

const BOUND: Duration = Duration::from_secs(10);

/// The keys under `prefix` on each running primary, counted with `SCAN` on that node alone.
async fn keys_per_primary(cluster: &RedisCluster, prefix: &str) -> Vec<(u16, usize)> {
    let mut counts = Vec::new();
    for node in cluster.primaries() {
        counts.push((node.port(), keys_on(node, prefix).await.len()));
    }
    counts
}

async fn keys_on(node: &RedisServer, prefix: &str) -> Vec<String> {
    let mut conn = node.connection().await;
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN on a node");
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Waits until `primary`'s replica has acknowledged every write made to it so far.
async fn replicated(primary: &RedisServer) {
    let mut conn = primary.connection().await;
    let deadline = Instant::now() + BOUND;
    loop {
        // Short waits: the harness's connection times out a reply after 500 ms.
        let acked: u64 = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(&mut conn)
            .await
            .unwrap();
        if acked == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
    }
}

async fn service(cluster: &RedisCluster, prefix: &str) -> CacheService {
    service_with(cluster, prefix, CacheService::builder()).await
}

/// A service for the tests of what the index and the leases do, not of faults: its operations
/// may take 2 s, since this binary's tests run six-node clusters side by side on two cores,
/// where a 250 ms operation can time out and count an error the test does not look for.
async fn patient_service(cluster: &RedisCluster, prefix: &str) -> CacheService {
    let builder = CacheService::builder().timeout(Duration::from_secs(2));
    service_with(cluster, prefix, builder).await
}

async fn service_with(
    cluster: &RedisCluster,
    prefix: &str,
    builder: cachekit::CacheServiceBuilder,
) -> CacheService {
    within(
        BOUND,
        "build",
        builder.redis_cluster(cluster.urls()).prefix(prefix).build(),
    )
    .await
    .expect("a cluster service builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_reaches_every_primary() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let cache = patient_service(&cluster, "app").await;

    let health = cache.health().await;
    assert!(health.connected, "{:?}", health.error);
    assert!(
        health
            .endpoint
            .as_deref()
            .unwrap_or("")
            .starts_with("cluster ")
    );
    let server = health.server.expect("server info");
    assert_eq!(server.db_keys, Some(0));

    // Keys in every slot range: 600 users spread over all three primaries.
    for id in 0..600 {
        assert!(
            cache.set(&format!("users:{id}"), &id, None).await,
            "users:{id}"
        );
    }
    for id in 0..50 {
        assert!(cache.set(&format!("orders:{id}"), &id, None).await);
    }
    let counts = keys_per_primary(&cluster, "app").await;
    assert_eq!(counts.len(), 3);
    assert!(counts.iter().all(|(_, n)| *n > 100), "{counts:?}");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<usize>(), 650);
    // DBSIZE summed over the primaries: the entries and the index's keys.
    let mut total = 0u64;
    for node in cluster.primaries() {
        total += raw::dbsize(&mut node.connection().await).await;
    }
    assert!(total > 650);
    assert_eq!(cache.health().await.server.unwrap().db_keys, Some(total));

    for id in [0, 299, 599] {
        assert_eq!(cache.get::<u32>(&format!("users:{id}")).await, Some(id));
    }
    assert!(cache.delete("users:0").await);
    assert_eq!(cache.get::<u32>("users:0").await, None);

    // Leases on every primary: a miss takes one, the fill goes through it.
    let loads = AtomicUsize::new(0);
    for id in 0..30 {
        let key = format!("carts:{id}");
        let value = cache
            .get_or_load(&key, None, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(id * 10)
            })
            .await
            .unwrap();
        assert_eq!(value, id * 10);
        let again = cache
            .get_or_load_with_status(&key, None, || async { Ok::<_, std::io::Error>(u32::MAX) })
            .await
            .unwrap();
        assert_eq!((again.value, again.from_cache), (id * 10, true));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 30);

    // A glob within a namespace, a whole namespace, and everything: none survives anywhere.
    assert_eq!(cache.invalidate_pattern("users:1??").await, 100);
    assert_eq!(cache.invalidate_pattern("users:*").await, 499);
    let counts = keys_per_primary(&cluster, "app").await;
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<usize>(),
        80,
        "{counts:?}"
    );
    for node in cluster.primaries() {
        let left = keys_on(node, "app").await;
        assert!(
            left.iter().all(|k| !k.starts_with("app:users:")),
            "{left:?}"
        );
    }
    assert_eq!(cache.clear_all().await, 80);
    assert_eq!(
        keys_per_primary(&cluster, "app")
            .await
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>(),
        0
    );
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());

    // Refresh-ahead and stale-if-error on every primary: versioned reads, the claims beside
    // the keys (in other slots), refills, and stale values; none served once invalidated.
    let fresh = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_cluster(cluster.urls())
            .prefix("fresh")
            .timeout(Duration::from_secs(2))
            .refresh_ahead(100.0)
            .stale_if_error(Duration::from_secs(60))
            .build(),
    )
    .await
    .unwrap();
    let ttl = Some(Duration::from_millis(300));
    let slow = |v: u32| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(v)
    };
    let failing = || async { Err::<u32, _>(std::io::Error::other("database down")) };
    for id in 0..30 {
        let key = format!("profiles:{id}");
        fresh.get_or_load(&key, ttl, || slow(id)).await.unwrap();
        // A load of 20 ms at beta 100 against 300 ms left: a draw refreshes about 6 times in 7.
        let again = fresh
            .get_or_load_with_status(&key, ttl, || slow(id + 100))
            .await
            .unwrap();
        assert!(
            again.value == id + 100 || again.from_cache,
            "{id}: {again:?}"
        );
    }
    assert!(fresh.stats().refreshes >= 10, "{:?}", fresh.stats());
    tokio::time::sleep(Duration::from_millis(400)).await;
    for id in 0..30 {
        let stale = fresh
            .get_or_load_with_status(&format!("profiles:{id}"), ttl, failing)
            .await
            .unwrap();
        assert!(stale.stale && stale.value >= id, "{id}: {stale:?}");
    }
    assert_eq!(fresh.invalidate_pattern("profiles:*").await, 30);
    for id in 0..30 {
        let key = format!("profiles:{id}");
        assert!(fresh.get_or_load(&key, ttl, failing).await.is_err());
    }
    assert_eq!(fresh.stats().errors, 0, "{:?}", fresh.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_list_comes_from_the_environment() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let nodes = cluster.urls()[..2].join(",");
    let vars = HashMap::from([
        ("REDIS_CLUSTER_NODES", nodes),
        ("CACHE_PREFIX", "env".to_string()),
    ]);
    let config = CacheConfig::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let cache = within(BOUND, "build", CacheService::from_config(config))
        .await
        .unwrap();
    assert!(cache.health().await.connected);
    assert!(cache.set("users:1", &"ada", None).await);
    assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("ada"));
    assert_eq!(cache.clear_all().await, 1);

    // A database other than 0 is a configuration error on a cluster.
    let error = CacheConfig::from_lookup(|name| match name {
        "REDIS_CLUSTER_NODES" => Some("redis://127.0.0.1:7000/2".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(error.to_string().contains("database 0"), "{error}");
}

/// Reads `key` through `cache` until it returns `expected`, or fails the test after `BOUND`.
async fn until_reads(cache: &CacheService, key: &str, expected: u32) -> Duration {
    let started = Instant::now();
    loop {
        if cache.get::<u32>(key).await == Some(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < BOUND,
            "{key} never read {expected}: the tier kept an old value"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Reads `keys` through `cache` until its tier serves them all (it serves once every
/// primary's tracking connection is up).
async fn until_tier_serves(cache: &CacheService, keys: &[String]) {
    let started = Instant::now();
    loop {
        let before = cache.stats().local_hits;
        for key in keys {
            let _ = cache.get::<u32>(key).await;
            let _ = cache.get::<u32>(key).await;
        }
        if cache.stats().local_hits >= before + keys.len() as u64 {
            return;
        }
        assert!(
            started.elapsed() < BOUND,
            "the tier never served on the cluster"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_tracks_every_primary_and_follows_a_failover() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let tiered = || async {
        within(
            BOUND,
            "build",
            CacheService::builder()
                .redis_cluster(cluster.urls())
                .prefix("tier")
                .local_tier(Duration::from_secs(600))
                .build(),
        )
        .await
        .unwrap()
    };
    let (writer, reader) = (tiered().await, tiered().await);
    // One key on each primary.
    let mut keys = Vec::new();
    for id in 0..60 {
        assert!(writer.set(&format!("users:{id}"), &id, None).await);
    }
    for node in cluster.primaries() {
        let key = keys_on(node, "tier")
            .await
            .pop()
            .expect("a key on every primary");
        keys.push(key.strip_prefix("tier:").unwrap().to_owned());
    }
    until_tier_serves(&reader, &keys).await;

    // Another instance's writes evict, on every primary, each by its own message: the tier
    // is never flushed meanwhile.
    let flushes = reader.stats().local_flushes;
    let mut delays = Vec::new();
    for round in 0..20u32 {
        for key in &keys {
            let value = 1000 + round;
            assert!(writer.set(key, &value, None).await);
            delays.push(until_reads(&reader, key, value).await);
        }
    }
    delays.sort();
    eprintln!(
        "cluster tier: cross-instance eviction p50 {:?}, max {:?} over {} writes",
        delays[delays.len() / 2],
        delays[delays.len() - 1],
        delays.len()
    );
    // So do another client's, made through the cluster.
    let mut raw = cluster.connection().await;
    for key in &keys {
        let () = redis::cmd("SET")
            .arg(format!("tier:{key}"))
            .arg("7")
            .query_async(&mut raw)
            .await
            .unwrap();
        until_reads(&reader, key, 7).await;
    }
    assert_eq!(
        reader.stats().local_flushes,
        flushes,
        "the tier was flushed instead of evicting key by key"
    );

    // A primary dies: the tier is flushed, and serves again once it tracks the new primary;
    // a write there then still evicts.
    let flushes = reader.stats().local_flushes;
    let victim = cluster.primaries()[0];
    let victim_key = keys_on(victim, "tier").await.pop().unwrap();
    let victim_key = victim_key.strip_prefix("tier:").unwrap().to_owned();
    victim.kill();
    let started = Instant::now();
    while reader.stats().local_flushes == flushes {
        assert!(
            started.elapsed() < BOUND,
            "the tier was not flushed when a primary died"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.wait_ok();
    let started = Instant::now();
    loop {
        let hits = reader.stats().local_hits;
        let _ = reader.get::<u32>(&victim_key).await;
        let _ = reader.get::<u32>(&victim_key).await;
        if reader.stats().local_hits > hits {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the tier never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cluster tier: serving again {:?} after the cluster recovered",
        started.elapsed()
    );
    let () = redis::cmd("SET")
        .arg(format!("tier:{victim_key}"))
        .arg("8")
        .query_async(&mut raw)
        .await
        .unwrap();
    until_reads(&reader, &victim_key, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_hits_resume() {
    cachekit_tests::init_tracing();
    let cluster = Arc::new(RedisCluster::start());
    let cache = service(&cluster, "fo").await;
    for id in 0..300 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    // The victim: a primary, with its keys copied to its replica before it dies.
    let victim = cluster.primaries()[0];
    replicated(victim).await;
    let on_victim = keys_on(victim, "fo").await;
    assert!(!on_victim.is_empty());
    let keys: Vec<String> = on_victim
        .iter()
        .take(20)
        .map(|k| k.strip_prefix("fo:").unwrap().to_owned())
        .collect();

    let killed = Instant::now();
    victim.kill();
    // When the cluster has three primaries again: the replica's promotion.
    let watcher = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            while cluster.primaries().len() < 3 {
                assert!(killed.elapsed() < Duration::from_secs(60), "no promotion");
                std::thread::sleep(Duration::from_millis(20));
            }
            killed.elapsed()
        })
    };
    let mut answered = 0usize;
    let mut from_loader = 0usize;
    let resumed = loop {
        let key = &keys[answered % keys.len()];
        let expected: u32 = key.strip_prefix("users:").unwrap().parse().unwrap();
        let fetched = within(
            BOUND,
            "get_or_load during failover",
            cache
                .get_or_load_with_status(key, None, || async { Ok::<_, std::io::Error>(expected) }),
        )
        .await
        .expect("the loader answers while the primary is gone");
        assert_eq!(fetched.value, expected);
        answered += 1;
        if fetched.from_cache {
            break killed.elapsed();
        }
        from_loader += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "hits never resumed after the failover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let promoted = watcher.join().expect("the promotion watcher");
    eprintln!(
        "failover: a replica was promoted {promoted:?} and hits resumed {resumed:?} after the \
         primary was killed; {answered} calls answered meanwhile, {from_loader} of them by the \
         loader"
    );
    cluster.wait_ok();
    // Every key the dead primary held is served from its promoted replica.
    for key in &keys {
        let expected: u32 = key.strip_prefix("users:").unwrap().parse().unwrap();
        assert_eq!(cache.get::<u32>(key).await, Some(expected), "{key}");
    }
    assert!(cache.health().await.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_the_acl_rules_runs_everything_on_a_cluster() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    // ACL users are per node: create it on each.
    for node in cluster.nodes() {
        let mut conn = node.connection().await;
        let mut setuser = redis::cmd("ACL");
        setuser.arg("SETUSER").arg("app").arg("on").arg(">pw");
        for rule in cachekit::acl_rules("acl") {
            setuser.arg(rule);
        }
        let () = setuser.query_async(&mut conn).await.unwrap();
    }
    let urls: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| format!("redis://app:pw@{}", node.addr()))
        .collect();
    let cache = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_cluster(urls)
            .prefix("acl")
            .build(),
    )
    .await
    .unwrap();
    let health = cache.health().await;
    assert_eq!(health.error, None);
    for id in 0..60 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    let loaded = cache
        .get_or_load("orders:1", None, || async { Ok::<_, std::io::Error>(5u8) })
        .await
        .unwrap();
    assert_eq!(loaded, 5);
    assert_eq!(cache.get::<u32>("users:7").await, Some(7));
    assert!(cache.delete("users:0").await);
    assert_eq!(cache.invalidate_pattern("users:*").await, 59);
    assert_eq!(cache.clear_all().await, 1);
    assert!(cache.health().await.server.is_some());
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
    for node in cluster.nodes() {
        let mut conn = node.connection().await;
        let log: Vec<redis::Value> = redis::cmd("ACL")
            .arg("LOG")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(log.is_empty(), "node {} refused: {log:?}", node.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_works_on_a_cluster() {
    cachekit_tests::init_tracing();
    let pki = cachekit_tests::tls::Pki::generate_for(&["127.0.0.1", "localhost"]);
    let cluster = RedisCluster::start_tls(&pki);
    let cache = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_cluster(cluster.tls_urls())
            .tls_ca_file(pki.ca_file())
            .prefix("tls")
            .build(),
    )
    .await
    .unwrap();
    let health = cache.health().await;
    assert!(health.connected, "{:?}", health.error);
    for id in 0..300 {
        assert!(
            cache.set(&format!("users:{id}"), &id, None).await,
            "users:{id}"
        );
    }
    let counts = keys_per_primary(&cluster, "tls").await;
    assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
    assert_eq!(cache.get::<u32>("users:42").await, Some(42));
    let loaded = cache
        .get_or_load("orders:1", None, || async { Ok::<_, std::io::Error>(3u8) })
        .await
        .unwrap();
    assert_eq!(loaded, 3);
    assert_eq!(cache.invalidate_pattern("users:*").await, 300);
    assert_eq!(cache.clear_all().await, 1);
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());

    // Without the CA, the handshake fails and the service degrades.
    let untrusted = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_cluster(cluster.tls_urls())
            .prefix("untrusted")
            // Six handshakes, each refused, within one operation even on a loaded machine: the
            // health check below then sees the refusal itself, not only a timeout.
            .timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .unwrap();
    let loaded = within(
        BOUND,
        "get_or_load",
        untrusted.get_or_load("k", None, || async { Ok::<_, std::io::Error>(1u8) }),
    )
    .await
    .unwrap();
    assert_eq!(loaded, 1);
    let health = untrusted.health().await;
    assert!(!health.connected);
    let error = health.error.unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_flushes_the_tier_within_the_topology_check() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let cache = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_cluster(cluster.urls())
            .prefix("manual")
            .local_tier(Duration::from_secs(600))
            .build(),
    )
    .await
    .unwrap();
    for id in 0..60 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    let old_primary = cluster.primaries()[0];
    let key = keys_on(old_primary, "manual").await.pop().unwrap();
    let key = key.strip_prefix("manual:").unwrap().to_owned();
    until_tier_serves(&cache, std::slice::from_ref(&key)).await;

    // The old primary's replica takes over while the old primary stays up, as a replica.
    let flushes = cache.stats().local_flushes;
    let replica = cluster
        .nodes()
        .iter()
        .find(|node| replica_of(node) == Some(old_primary.port()))
        .expect("the old primary's replica");
    let mut conn = replica.connection().await;
    let () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    while cache.stats().local_flushes == flushes {
        assert!(
            started.elapsed() < BOUND,
            "a manual failover did not flush the tier"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "manual failover: the tier was flushed {:?} after CLUSTER FAILOVER was sent",
        started.elapsed()
    );
    cluster.wait_ok();
    // A write on the new primary by another client still evicts.
    until_tier_serves(&cache, std::slice::from_ref(&key)).await;
    let mut raw = cluster.connection().await;
    let () = redis::cmd("SET")
        .arg(format!("manual:{key}"))
        .arg("99")
        .query_async(&mut raw)
        .await
        .unwrap();
    until_reads(&cache, &key, 99).await;
}

/// For a replica, its primary's port (from `ROLE`); `None` for a primary.
fn replica_of(node: &RedisServer) -> Option<u16> {
    let mut conn = node.client().get_connection().expect("a connection");
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).expect("ROLE");
    let name: String = redis::from_redis_value(role[0].clone()).ok()?;
    if name != "slave" {
        return None;
    }
    redis::from_redis_value::<u16>(role[2].clone()).ok()
}

/// One command on one node, over a blocking connection.
fn on(node: &RedisServer, cmd: &redis::Cmd) -> redis::Value {
    let mut conn = node.client().get_connection().expect("a connection");
    cmd.query(&mut conn)
        .unwrap_or_else(|e| panic!("{cmd:?} on {}: {e}", node.port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_follows_a_slot_moved_to_another_primary() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let cache = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_cluster(cluster.urls())
            .prefix("moved")
            .local_tier(Duration::from_secs(600))
            .build(),
    )
    .await
    .unwrap();
    for id in 0..60 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let physical = keys_on(from, "moved").await.pop().unwrap();
    let key = physical.strip_prefix("moved:").unwrap().to_owned();
    until_tier_serves(&cache, std::slice::from_ref(&key)).await;
    let flushes = cache.stats().local_flushes;

    // Move the key's slot from one primary to another, as `redis-cli --cluster reshard` does.
    let slot: u16 = redis::from_redis_value(on(
        from,
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(&physical),
    ))
    .unwrap();
    let id = |node: &RedisServer| -> String {
        redis::from_redis_value(on(node, redis::cmd("CLUSTER").arg("MYID"))).unwrap()
    };
    let (from_id, to_id) = (id(from), id(to));
    on(
        to,
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id),
    );
    on(
        from,
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id),
    );
    let keys: Vec<String> = redis::from_redis_value(on(
        from,
        redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000),
    ))
    .unwrap();
    on(
        from,
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port())
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys),
    );
    for node in cluster.primaries() {
        on(
            node,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id),
        );
    }
    cluster.wait_ok();
    assert!(keys_on(to, "moved").await.contains(&physical));

    // The key's new owner reports writes to it: another client's write evicts, with no flush.
    let mut raw = cluster.connection().await;
    let () = redis::cmd("SET")
        .arg(&physical)
        .arg("77")
        .query_async(&mut raw)
        .await
        .unwrap();
    until_reads(&cache, &key, 77).await;
    assert!(cache.set(&key, &78u32, None).await);
    assert_eq!(cache.get::<u32>(&key).await, Some(78));
    assert_eq!(
        cache.stats().local_flushes,
        flushes,
        "the move flushed the tier"
    );
}

/// How many `SCAN` commands the primaries have run.
async fn scans(cluster: &RedisCluster) -> u64 {
    let mut calls = 0;
    for node in cluster.primaries() {
        calls += raw::command_calls(&mut node.connection().await, "scan").await;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_answers_patterns_on_every_primary_without_scan() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let cache = patient_service(&cluster, "ix").await;
    for id in 0..1000 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    for id in 0..100 {
        assert!(cache.set(&format!("orders:{id}"), &id, None).await);
    }
    // Every entry was filed as it was written: the rebuild finds none missing.
    assert_eq!(cache.rebuild_index().await.unwrap(), 0);
    let index_keys = {
        let mut n = 0;
        for node in cluster.primaries() {
            n += keys_on(node, "ix").await.len();
            let mut conn = node.connection().await;
            let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg("ix#*#ix:users")
                .arg("COUNT")
                .arg(100_000)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(!found.is_empty(), "no index of users on {}", node.port());
        }
        n
    };
    assert_eq!(index_keys, 1100);

    let before = scans(&cluster).await;
    assert_eq!(cache.invalidate_pattern("users:1??").await, 100);
    assert_eq!(cache.invalidate_pattern("users:*").await, 900);
    assert_eq!(
        scans(&cluster).await,
        before,
        "a pattern walked the keyspace instead of using the index"
    );
    for node in cluster.primaries() {
        let left = keys_on(node, "ix").await;
        assert!(left.iter().all(|k| k.starts_with("ix:orders:")), "{left:?}");
    }
    assert_eq!(
        keys_per_primary(&cluster, "ix")
            .await
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>(),
        100
    );

    // A lease taken before an invalidation is found by it, and its fill refused. The loader
    // runs once the lease is taken; the invalidation comes while it waits.
    let (entered, go_on) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let loading = {
        let (cache, entered, go_on) = (cache.clone(), entered.clone(), go_on.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("users:5", None, || async move {
                    entered.notify_one();
                    go_on.notified().await;
                    Ok::<_, std::io::Error>(5u32)
                })
                .await
        })
    };
    within(BOUND, "the loader", entered.notified()).await;
    assert_eq!(
        cache.invalidate_pattern("users:*").await,
        1,
        "the lease marker"
    );
    go_on.notify_one();
    assert_eq!(loading.await.unwrap().unwrap(), 5);
    assert_eq!(
        cache.get::<u32>("users:5").await,
        None,
        "a fill raced an invalidation and was written after it"
    );
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_outlive_an_invalidation_on_a_cluster() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    const KEY_COUNT: u64 = 64;
    const INVALIDATIONS: usize = 120;
    const MINUTE: Option<Duration> = Some(Duration::from_secs(60));
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let fleet = [
        patient_service(&cluster, "app").await,
        patient_service(&cluster, "app").await,
    ];
    fleet[0].rebuild_index().await.unwrap();
    // Per version, the clock reading after which an invalidation must remove it: when its
    // `set` returned, or when its load began (its lease was taken before that).
    let clock = Arc::new(AtomicU64::new(1));
    let marks: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let (cache, clock, marks, done) = (
            fleet[w as usize % 2].clone(),
            clock.clone(),
            marks.clone(),
            done.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !done.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = format!("c:{}", (n >> 33) % KEY_COUNT);
                let version = clock.fetch_add(1, Ordering::SeqCst);
                if (n >> 20) % 2 == 0 {
                    if cache.set(&key, &version, MINUTE).await {
                        let at = clock.fetch_add(1, Ordering::SeqCst);
                        marks.lock().unwrap().insert(version, at);
                    }
                } else {
                    let (clock, marks) = (clock.clone(), marks.clone());
                    let _ = cache
                        .get_or_load(&key, MINUTE, || async move {
                            let at = clock.fetch_add(1, Ordering::SeqCst);
                            marks.lock().unwrap().insert(version, at);
                            tokio::time::sleep(Duration::from_micros(200)).await;
                            Ok::<_, std::io::Error>(version)
                        })
                        .await;
                }
            }
        }));
    }
    let mut conn = cluster.connection().await;
    let mut violations = Vec::new();
    let mut removed = 0;
    for i in 0..INVALIDATIONS {
        let (pattern, matches): (&str, fn(u64) -> bool) = if i % 2 == 0 {
            ("c:*", |_| true)
        } else {
            ("c:1*", |k| k.to_string().starts_with('1'))
        };
        let began = clock.fetch_add(1, Ordering::SeqCst);
        removed += fleet[i % 2]
            .try_invalidate_pattern(pattern)
            .await
            .expect("invalidate");
        for k in (0..KEY_COUNT).filter(|&k| matches(k)) {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("app:c:{k}"))
                .query_async(&mut conn)
                .await
                .expect("GET");
            let Some(version) = value.and_then(|v| serde_json::from_slice::<u64>(&v).ok()) else {
                continue;
            };
            if marks
                .lock()
                .unwrap()
                .get(&version)
                .is_some_and(|&at| at < began)
            {
                violations.push((k, version, pattern));
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    eprintln!(
        "cluster: {INVALIDATIONS} invalidations removed {removed} entries amid {} writes; \
         violations: {}",
        clock.load(Ordering::SeqCst) / 2,
        violations.len()
    );
    assert!(removed > 0, "the invalidations raced no writes");
    assert_eq!(
        violations,
        [],
        "entries outlived an invalidation that began after them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_index_of_a_foreign_type_makes_patterns_walk_until_a_rebuild() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let cache = patient_service(&cluster, "fx").await;
    // Sequential names rarely share a slot (CRC16 spreads them); a hash tag puts 20 in one.
    for id in 0..2980 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    for id in 0..20 {
        assert!(cache.set(&format!("users:{{team}}:{id}"), &id, None).await);
    }
    cache.rebuild_index().await.unwrap();
    // A slot's index of users holding two entries or more, on the node that serves it.
    let mut victim = None;
    'nodes: for node in cluster.primaries() {
        let mut conn = node.connection().await;
        let (_, indexes): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg("fx#*#ix:users")
            .arg("COUNT")
            .arg(1_000_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        for index in indexes {
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            if members.len() >= 2 {
                victim = Some((conn, index, members));
                break 'nodes;
            }
        }
    }
    let (mut conn, index, members) = victim.expect("a slot with two users");
    // Another program overwrites it; the next write there replaces it, and with it the slot's
    // record of the other entries.
    raw::set(&mut conn, &index, "not an index").await;
    assert!(cache.set(&members[0], &0u32, None).await);
    let zcard: u64 = redis::cmd("ZCARD")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(zcard, 1, "the repaired index holds only the new write");

    // The invalidation still removes every entry (it walks), and the next rebuild restores
    // the index.
    assert_eq!(cache.invalidate_pattern("users:*").await, 3000);
    for node in cluster.primaries() {
        assert_eq!(keys_on(node, "fx").await, Vec::<String>::new());
    }
    cache.rebuild_index().await.unwrap();
    for id in 0..100 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    let before = scans(&cluster).await;
    assert_eq!(cache.invalidate_pattern("users:*").await, 100);
    assert_eq!(
        scans(&cluster).await,
        before,
        "the rebuilt index answers again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_never_skips_a_failed_primary_whose_replica_will_serve_its_keys() {
    cachekit_tests::init_tracing();
    let cluster = RedisCluster::start();
    let cache = service(&cluster, "walk").await;
    for id in 0..300 {
        assert!(cache.set(&format!("users:{id}"), &id, None).await);
    }
    let victim = cluster.primaries()[0];
    replicated(victim).await;
    let victim_port = victim.port();
    victim.kill();
    // Once every other node marks it failed (`fail`, not just suspected), and before its
    // replica is promoted (which waits at least half a second more), a walk (this pattern has
    // no namespace) must not report success without its keys.
    let deadline = Instant::now() + BOUND;
    loop {
        let mut flagged = true;
        for node in cluster.nodes().iter().filter(|n| n.is_running()) {
            let mut conn = node.connection().await;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .unwrap();
            flagged &= nodes.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields
                    .get(1)
                    .is_some_and(|a| a.contains(&format!(":{victim_port}@")))
                    && fields
                        .get(2)
                        .is_some_and(|f| f.split(',').any(|flag| flag == "fail"))
            });
        }
        if flagged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead primary was never marked failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = cache.try_invalidate_pattern("*sers:*").await;
    eprintln!("walk with a failed primary: {outcome:?}");
    cluster.wait_ok();
    // Whatever it answered, once the cluster has recovered (and anything remembered has been
    // replayed, which reads start) no entry survives.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = cache.get::<u32>("users:1").await;
        let mut left = 0;
        for node in cluster.primaries() {
            left += keys_on(node, "walk").await.len();
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} entries outlived an invalidation that answered {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
