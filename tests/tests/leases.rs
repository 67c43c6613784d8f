//! Leases across processes: several services on separate connections to one Redis stand in for
//! a fleet. One loader runs per key fleet-wide; waiters get its value; a dead lease holder
//! delays waiters by at most the lease TTL.

use cachekit::CacheService;
use cachekit_tests::{RedisServer, raw};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

async fn service(server: &RedisServer, lease_ttl: Duration) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix("fleet")
        .lease_ttl(lease_ttl)
        .build()
        .await
        .expect("service builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_across_four_services_runs_the_loader_once() {
    let server = RedisServer::start();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        fleet.push(service(&server, Duration::from_secs(10)).await);
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for i in 0..400 {
        let (cache, runs) = (fleet[i % fleet.len()].clone(), runs.clone());
        calls.push(tokio::spawn(async move {
            cache
                .get_or_load("report:2026", None, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(vec![1u32, 2, 3])
                })
                .await
                .expect("the loader never fails")
        }));
    }
    for call in calls {
        assert_eq!(call.await.expect("task"), vec![1, 2, 3]);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one loader for the whole fleet"
    );
    let coalesced: u64 = fleet.iter().map(|c| c.stats().coalesced).sum();
    assert!(
        coalesced > 0,
        "callers in the leader's process shared its flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leases_each_service_loads_for_itself() {
    let server = RedisServer::start();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let cache = CacheService::builder()
            .redis_url(server.url())
            .prefix("fleet")
            .leases(false)
            .build()
            .await
            .expect("service builds");
        fleet.push(cache);
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(fleet.len()));
    let mut calls = Vec::new();
    for cache in &fleet {
        let (cache, runs, barrier) = (cache.clone(), runs.clone(), barrier.clone());
        calls.push(tokio::spawn(async move {
            cache
                .get_or_load("report:2026", None, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    barrier.wait().await; // all four are loading at once
                    Ok::<_, std::io::Error>(1u8)
                })
                .await
                .expect("the loader never fails")
        }));
    }
    for call in calls {
        assert_eq!(call.await.expect("task"), 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

/// A lease left by a holder that died: the key holds a marker nobody will fill.
async fn plant_dead_lease(server: &RedisServer, key: &str, ttl: Duration) {
    let mut conn = server.connection().await;
    raw::set_px(
        &mut conn,
        &format!("fleet:{key}"),
        b"\0cachekit-lease:dead-holder",
        ttl,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_delays_waiters_only_until_its_lease_expires() {
    let server = RedisServer::start();
    plant_dead_lease(&server, "users:1", Duration::from_millis(300)).await;
    let cache = service(&server, Duration::from_secs(10)).await;

    // The marker reads as a miss, never as a value.
    assert_eq!(cache.get::<String>("users:1").await, None);

    let value = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_or_load("users:1", None, || async {
            Ok::<_, std::io::Error>("Ada".to_string())
        }),
    )
    .await
    .expect("the waiter is not stuck behind the dead lease")
    .expect("loaded");
    assert_eq!(value, "Ada");
    // Once the dead lease expired, the waiter took the lease and filled the key.
    assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("Ada"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gives_up_after_its_lease_ttl_and_loads_without_writing() {
    let server = RedisServer::start();
    plant_dead_lease(&server, "users:2", Duration::from_secs(60)).await;
    let cache = service(&server, Duration::from_millis(300)).await;

    let value = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_or_load("users:2", None, || async {
            Ok::<_, std::io::Error>("Grace".to_string())
        }),
    )
    .await
    .expect("the waiter gives up instead of waiting out a 60 s lease")
    .expect("loaded");
    assert_eq!(value, "Grace");

    // It did not overwrite the other holder's lease.
    let mut conn = server.connection().await;
    let raw: Vec<u8> = raw::get(&mut conn, "fleet:users:2").await;
    assert!(
        raw.starts_with(b"\0cachekit-lease:"),
        "the key still holds the marker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_from_another_service_voids_a_lease_in_flight() {
    let server = RedisServer::start();
    let reader = service(&server, Duration::from_secs(10)).await;
    let writer = service(&server, Duration::from_secs(10)).await;

    let loading = Arc::new(tokio::sync::Notify::new());
    let go_on = Arc::new(tokio::sync::Notify::new());
    let load = {
        let (reader, loading, go_on) = (reader.clone(), loading.clone(), go_on.clone());
        tokio::spawn(async move {
            reader
                .get_or_load("users:3", None, || async {
                    loading.notify_one();
                    go_on.notified().await;
                    Ok::<_, std::io::Error>("old".to_string())
                })
                .await
                .expect("loaded")
        })
    };
    loading.notified().await;
    assert_eq!(
        writer.invalidate_pattern("users:*").await,
        1,
        "the lease marker"
    );
    go_on.notify_one();
    assert_eq!(load.await.expect("task"), "old");

    assert_eq!(
        reader.get::<String>("users:3").await,
        None,
        "the stale value was refused"
    );
    assert_eq!(reader.stats().stale_sets_prevented, 1);
}
