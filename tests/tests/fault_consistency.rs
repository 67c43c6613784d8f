//! The consistency checker under network faults: readers whose connections to Redis stall at
//! random, writers that reach Redis directly.
//!
//! Two reader services, each behind its own [`FaultProxy`] in chaos mode (stalls of 300-700 ms
//! separated by free gaps of 300-700 ms), read a few keys of a versioned in-memory "database"
//! through `get_or_load`, with a 250 ms operation timeout and a circuit breaker that opens for
//! 200 ms. Writers on a third service, connected without a proxy, update a row and then
//! `try_delete` its key, or invalidate its namespace (`row3:*`) through the invalidation index. A stalled connection is the hard case for cache-aside: a request that
//! timed out on the client is still delivered, late, and runs on the server after whatever
//! happened meanwhile.
//!
//! The property checked (by `cachekit_tests::checker`): a read that began after an invalidation
//! returned `Ok` sees the written version or a newer one. A write counts as an invalidation
//! (at the time the call returned) only if it succeeded; failures are counted and
//! printed. With leases off the checker must find violations, which proves it can fail.
//!
//! ```bash
//! RUST_LOG=error cargo test -p cachekit-tests --test fault_consistency -- --nocapture
//! ```
//!
//! (`RUST_LOG=error` hides the services' warnings about each timed-out call.)
//!
//! With the in-process tier on the readers, reads can lag a write made on the writer service
//! until its invalidation reaches the reader's tier, and a stall holds invalidations back
//! until the tier's heartbeat finds it out and flushes the tier. That run measures how stale
//! such reads were (printed); it checks that the tiers served reads and were flushed under
//! the stalls, not a bound in time.

use std::convert::Infallible;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachekit::CacheService;
use cachekit_tests::checker::{Db, Read, Write, stale_lags, violations};
use cachekit_tests::{FaultProxy, RedisServer};

const KEYS: u32 = 6;
const READER_SERVICES: usize = 2;
const READERS_PER_SERVICE: usize = 16;
const WRITERS: usize = 4;
const TARGET_READS: usize = 100_000;
/// The run stops here even short of [`TARGET_READS`] (the leases-on test then fails).
const TIME_LIMIT: Duration = Duration::from_secs(90);
/// How long one read may take before the test calls it hung. Generous: a read is bounded by
/// a few operation timeouts, or by the lease TTL (10 s by default) when it waits on a lease.
const READ_BOUND: Duration = Duration::from_secs(30);
const STALL: RangeInclusive<Duration> = Duration::from_millis(300)..=Duration::from_millis(700);
const GAP: RangeInclusive<Duration> = Duration::from_millis(300)..=Duration::from_millis(700);
/// Seeds the chaos of reader service `n` with `SEED + n`.
const SEED: u64 = 0x5EED_F417;

fn key(id: u32) -> String {
    format!("row{id}:v")
}

struct Outcome {
    reads: usize,
    writes: usize,
    violations: usize,
    local_hits: u64,
    local_flushes: u64,
}

async fn run(leases: bool) -> Outcome {
    run_with(leases, false).await
}

async fn run_with(leases: bool, tier: bool) -> Outcome {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let db = Arc::new(Db::new(KEYS));

    let mut proxies = Vec::new();
    let mut chaos = Vec::new();
    let mut readers = Vec::new();
    for n in 0..READER_SERVICES {
        let proxy = FaultProxy::start(server.addr()).await;
        let mut builder = CacheService::builder()
            .redis_url(proxy.url())
            .prefix("faults")
            .timeout(Duration::from_millis(250))
            .circuit_breaker(5, Duration::from_millis(200))
            .leases(leases);
        if tier {
            builder = builder.local_tier(Duration::from_secs(600));
        }
        let cache = builder.build().await.expect("reader service builds");
        chaos.push(proxy.chaos(SEED + n as u64, STALL, GAP));
        proxies.push(proxy);
        readers.push(cache);
    }
    let writer = CacheService::builder()
        .redis_url(server.url())
        .prefix("faults")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("writer service builds");
    writer.rebuild_index().await.expect("the index is complete");

    let reads = Arc::new(Mutex::new(Vec::with_capacity(TARGET_READS)));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let failed_invalidations = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let read_count = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();

    for (n, cache) in readers
        .iter()
        .flat_map(|cache| std::iter::repeat_n(cache, READERS_PER_SERVICE))
        .enumerate()
    {
        let (cache, db, reads, done, read_count) = (
            cache.clone(),
            db.clone(),
            reads.clone(),
            done.clone(),
            read_count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = n as u32;
            while !done.load(Ordering::Relaxed) {
                i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let id = (i >> 16) % KEYS;
                let key = key(id);
                let start = Instant::now();
                let read = cache.get_or_load(&key, None, || async {
                    Ok::<_, Infallible>(db.read(id).await)
                });
                let Ok(version) = tokio::time::timeout(READ_BOUND, read)
                    .await
                    .unwrap_or_else(|_| panic!("a read of {key} hung for {READ_BOUND:?}"));
                reads.lock().unwrap().push(Read { id, start, version });
                if read_count.fetch_add(1, Ordering::Relaxed) + 1 >= TARGET_READS
                    || started.elapsed() > TIME_LIMIT
                {
                    done.store(true, Ordering::Relaxed);
                }
                if tier {
                    // A read the tier serves never waits: let the writers run.
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }));
    }
    for n in 0..WRITERS {
        let (writer, db, writes, failed, done) = (
            writer.clone(),
            db.clone(),
            writes.clone(),
            failed_invalidations.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut id = n as u32 % KEYS;
            while !done.load(Ordering::Relaxed) {
                id = (id + 1) % KEYS;
                let version = db.write(id).await;
                // Every other write invalidates the row's namespace through the index.
                let invalidated = if version % 2 == 0 {
                    writer.try_delete(&key(id)).await.map(u64::from)
                } else {
                    writer.try_invalidate_pattern(&format!("row{id}:*")).await
                };
                match invalidated {
                    Ok(_) => writes.lock().unwrap().push(Write {
                        id,
                        end: Instant::now(),
                        version,
                    }),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker task");
    }
    let elapsed = started.elapsed();
    let windows: Vec<u64> = chaos.iter().map(|chaos| chaos.windows()).collect();
    drop(chaos);

    let reads = reads.lock().unwrap().clone();
    let writes = writes.lock().unwrap().clone();
    let mut lags = stale_lags(&reads, &writes);
    lags.sort();
    let outcome = Outcome {
        reads: reads.len(),
        writes: writes.len(),
        violations: violations(&reads, &writes),
        local_hits: readers.iter().map(|c| c.stats().local_hits).sum(),
        local_flushes: readers.iter().map(|c| c.stats().local_flushes).sum(),
    };
    let lag = |p: f64| {
        let rank = ((p / 100.0) * lags.len() as f64).ceil() as usize;
        lags.get(rank.clamp(1, lags.len().max(1)) - 1).copied()
    };
    eprintln!(
        "fault consistency checker (leases {}, tier {}): {} reads, {} writes ({} invalidations \
         failed) in {:.1} s, {} violations ({:.2}% of reads; lag p50 {:?} p99 {:?} max {:?}); \
         stall windows per reader proxy {windows:?} (seeds {SEED:#x} + n)",
        if leases { "on" } else { "off" },
        if tier { "on" } else { "off" },
        outcome.reads,
        outcome.writes,
        failed_invalidations.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        outcome.violations,
        100.0 * outcome.violations as f64 / outcome.reads.max(1) as f64,
        lag(50.0),
        lag(99.0),
        lags.last(),
    );
    for (n, cache) in readers.iter().enumerate() {
        eprintln!("  reader service {n}: {:?}", cache.stats());
    }
    eprintln!("  writer service: {:?}", writer.stats());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_stalls_no_read_sees_a_value_older_than_a_completed_invalidation() {
    let outcome = run(true).await;
    assert!(
        outcome.reads >= TARGET_READS,
        "only {} reads ran within {TIME_LIMIT:?}",
        outcome.reads
    );
    assert!(
        outcome.writes > 0,
        "no invalidation completed: nothing was checked"
    );
    assert_eq!(
        outcome.violations, 0,
        "stale reads with leases on under stalled connections ({} of {} reads)",
        outcome.violations, outcome.reads
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_stalls_without_leases_the_checker_finds_stale_reads() {
    let outcome = run(false).await;
    assert!(
        outcome.violations > 0,
        "the checker found no stale read with leases off over {} reads and {} writes: it \
         cannot fail",
        outcome.reads,
        outcome.writes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_stalls_the_tier_is_flushed_and_its_staleness_measured() {
    let outcome = run_with(true, true).await;
    assert!(
        outcome.reads >= TARGET_READS,
        "only {} reads ran within {TIME_LIMIT:?}",
        outcome.reads
    );
    assert!(outcome.writes > 0, "no invalidation completed");
    assert!(outcome.local_hits > 0, "the tiers served nothing");
    assert!(
        outcome.local_flushes > 0,
        "no stall flushed a tier: the heartbeat never noticed one"
    );
}
