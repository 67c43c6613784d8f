//! The consistency checker: many concurrent readers (through `#[cached]`) and writers (update a
//! row, then `#[invalidates]`) over a few keys of a versioned in-memory "database", against a
//! real Redis, with two services on separate connections standing in for two processes.
//!
//! Every operation's start and end are recorded. The property checked (by
//! `cachekit_tests::checker`): a read that began after a write (and so its invalidation)
//! returned sees that write's version or a newer one. With
//! leases off the checker must find violations (the stale sets every hand-built cache-aside
//! layer has), which proves it can fail; with them on it must find none.
//!
//! The run with leases on is repeated on a Redis Cluster (3 primaries, 3 replicas).
//!
//! With the in-process tier on, reads are checked against the writes of their own instance
//! (none may be stale), and across instances each stale read's lag behind the write it missed
//! is measured: the window in which the other instance's tier had not yet heard of the
//! write.

use cachekit::{CacheService, HasCache, cached, invalidates};
use cachekit_tests::checker::{Db, Read, Write, stale_lags, violations};
use cachekit_tests::{RedisCluster, RedisServer};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: u32 = 4;
const READERS_PER_SERVICE: usize = 16;
const WRITERS: usize = 4;
const TARGET_OPS: usize = 100_000;
/// With the tier on, reads served in-process are so cheap that the target is reached after a
/// handful of writes: such a run also waits for this many.
const TIER_MIN_WRITES: usize = 4_000;
const TIME_LIMIT: Duration = Duration::from_secs(90);

struct Repo {
    cache: CacheService,
    db: Arc<Db>,
}

impl HasCache for Repo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Repo {
    #[cached(ttl = 600, key = "row:{id}")]
    async fn read_row(&self, id: u32) -> Result<u64, std::io::Error> {
        Ok(self.db.read(id).await)
    }

    #[invalidates("row:{id}")]
    async fn write_row(&self, id: u32) -> Result<u64, std::io::Error> {
        Ok(self.db.write(id).await)
    }
}

struct Outcome {
    operations: usize,
    reads: usize,
    violations: usize,
    /// Stale reads against the writes made on the reader's own instance.
    own_instance: usize,
    /// How stale each stale read was, sorted.
    lags: Vec<Duration>,
    local_hits: u64,
}

async fn run(leases: bool) -> Outcome {
    run_with(leases, false, false).await
}

/// The Redis a run uses, kept alive for the run.
enum Store {
    Server(RedisServer),
    Cluster(RedisCluster),
}

async fn run_with(leases: bool, tier: bool, cluster: bool) -> Outcome {
    cachekit_tests::init_tracing();
    let store = if cluster {
        Store::Cluster(RedisCluster::start())
    } else {
        Store::Server(RedisServer::start())
    };
    let db = Arc::new(Db::new(KEYS));
    let mut repos = Vec::new();
    for _ in 0..2 {
        let builder = match &store {
            Store::Server(server) => CacheService::builder().redis_url(server.url()),
            Store::Cluster(cluster) => CacheService::builder().redis_cluster(cluster.urls()),
        };
        let mut builder = builder
            .prefix("checker")
            .leases(leases)
            .timeout(Duration::from_secs(2));
        if tier {
            builder = builder.local_tier(Duration::from_secs(600));
        }
        let cache = builder.build().await.expect("service builds");
        repos.push(Arc::new(Repo {
            cache,
            db: db.clone(),
        }));
    }

    let reads = Arc::new(Mutex::new(Vec::with_capacity(TARGET_OPS)));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));
    let min_writes = if tier { TIER_MIN_WRITES } else { 0 };
    let started = Instant::now();
    let mut tasks = Vec::new();

    for (n, (instance, repo)) in repos
        .iter()
        .enumerate()
        .flat_map(|r| std::iter::repeat_n(r, READERS_PER_SERVICE))
        .enumerate()
    {
        let (repo, reads, done, operations, written) = (
            repo.clone(),
            reads.clone(),
            done.clone(),
            operations.clone(),
            written.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = n as u32;
            while !done.load(Ordering::Relaxed) {
                i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let id = (i >> 16) % KEYS;
                let start = Instant::now();
                let version = repo.read_row(id).await.expect("the loader never fails");
                reads
                    .lock()
                    .unwrap()
                    .push((instance, Read { id, start, version }));
                if operations.fetch_add(1, Ordering::Relaxed) + 1 >= TARGET_OPS
                    && written.load(Ordering::Relaxed) >= min_writes
                    || started.elapsed() > TIME_LIMIT
                {
                    done.store(true, Ordering::Relaxed);
                }
                if tier {
                    // A read the tier serves never waits: let the writers run.
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for n in 0..WRITERS {
        let instance = n % repos.len();
        let repo = repos[instance].clone();
        let (writes, done, operations, written) = (
            writes.clone(),
            done.clone(),
            operations.clone(),
            written.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut id = n as u32 % KEYS;
            while !done.load(Ordering::Relaxed) {
                id = (id + 1) % KEYS;
                let version = repo.write_row(id).await.expect("writes never fail");
                let end = Instant::now();
                writes
                    .lock()
                    .unwrap()
                    .push((instance, Write { id, end, version }));
                operations.fetch_add(1, Ordering::Relaxed);
                written.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker task");
    }

    let tagged_reads = reads.lock().unwrap().clone();
    let tagged_writes = writes.lock().unwrap().clone();
    let of = |instance: Option<usize>| {
        let reads: Vec<Read> = tagged_reads
            .iter()
            .filter(|(i, _)| instance.is_none_or(|n| *i == n))
            .map(|&(_, r)| r)
            .collect();
        let writes: Vec<Write> = tagged_writes
            .iter()
            .filter(|(i, _)| instance.is_none_or(|n| *i == n))
            .map(|&(_, w)| w)
            .collect();
        (reads, writes)
    };
    let (reads, writes) = of(None);
    let own_instance = (0..repos.len())
        .map(|n| {
            let (reads, writes) = of(Some(n));
            violations(&reads, &writes)
        })
        .sum();
    let mut lags = stale_lags(&reads, &writes);
    lags.sort();
    let local_hits = repos.iter().map(|r| r.cache.stats().local_hits).sum();
    let outcome = Outcome {
        operations: reads.len() + writes.len(),
        reads: reads.len(),
        violations: lags.len(),
        own_instance,
        lags,
        local_hits,
    };
    let stats = repos[0].cache.stats();
    let lag = |p: f64| {
        let lags = &outcome.lags;
        let rank = ((p / 100.0) * lags.len() as f64).ceil() as usize;
        lags.get(rank.clamp(1, lags.len().max(1)) - 1).copied()
    };
    eprintln!(
        "consistency checker (leases {}, tier {}, {}): {} operations ({} reads, {} writes) in {:.1} s, \
         {} violations ({} against the reader's own instance; lag p50 {:?} p99 {:?} max {:?}); \
         service 0: hits {} local hits {} misses {} coalesced {} stale sets prevented {}",
        if leases { "on" } else { "off" },
        if tier { "on" } else { "off" },
        if cluster { "cluster" } else { "one server" },
        outcome.operations,
        reads.len(),
        writes.len(),
        started.elapsed().as_secs_f64(),
        outcome.violations,
        outcome.own_instance,
        lag(50.0),
        lag(99.0),
        outcome.lags.last(),
        stats.hits,
        stats.local_hits,
        stats.misses,
        stats.coalesced,
        stats.stale_sets_prevented,
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leases_the_checker_finds_stale_reads() {
    let outcome = run(false).await;
    assert!(
        outcome.violations > 0,
        "the checker found no stale read with leases off over {} operations: it cannot fail",
        outcome.operations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leases_no_read_sees_a_version_older_than_a_completed_write() {
    let outcome = run(true).await;
    assert!(
        outcome.operations >= TARGET_OPS,
        "only {} operations ran within {TIME_LIMIT:?}",
        outcome.operations
    );
    assert_eq!(outcome.violations, 0, "stale reads with leases on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_tier_no_read_is_older_than_its_own_instances_completed_write() {
    let outcome = run_with(true, true, false).await;
    assert!(
        outcome.operations >= TARGET_OPS,
        "only {} operations ran within {TIME_LIMIT:?}",
        outcome.operations
    );
    assert!(outcome.local_hits > 0, "the tiers served nothing");
    assert!(
        outcome.operations - outcome.reads >= TIER_MIN_WRITES,
        "only {} writes ran within {TIME_LIMIT:?}",
        outcome.operations - outcome.reads
    );
    assert_eq!(
        outcome.own_instance, 0,
        "stale reads after the reader's own instance's invalidation returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_no_read_sees_a_version_older_than_a_completed_write() {
    let outcome = run_with(true, false, true).await;
    assert!(
        outcome.operations >= TARGET_OPS,
        "only {} operations ran within {TIME_LIMIT:?}",
        outcome.operations
    );
    assert_eq!(outcome.violations, 0, "stale reads on the cluster");
}
