//! The consistency checker: many concurrent readers (through `#[cached]`) and writers (update a
//! row, then `#[invalidates]`) over a few keys of a versioned in-memory "database", against a
//! real Redis, with two services on separate connections standing in for two processes.
//!
//! Every operation's start and end are recorded. The property checked (by
//! `cachekit_tests::checker`): a read that began after a write (and so its invalidation)
//! returned sees that write's version or a newer one. With
//! leases off the checker must find violations (the stale sets every hand-built cache-aside
//! layer has), which proves it can fail; with them on it must find none.

use cachekit::{CacheService, HasCache, cached, invalidates};
use cachekit_tests::RedisServer;
use cachekit_tests::checker::{Db, Read, Write, violations};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: u32 = 4;
const READERS_PER_SERVICE: usize = 16;
const WRITERS: usize = 4;
const TARGET_OPS: usize = 100_000;
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
    violations: usize,
}

async fn run(leases: bool) -> Outcome {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let db = Arc::new(Db::new(KEYS));
    let mut repos = Vec::new();
    for _ in 0..2 {
        let cache = CacheService::builder()
            .redis_url(server.url())
            .prefix("checker")
            .leases(leases)
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("service builds");
        repos.push(Arc::new(Repo {
            cache,
            db: db.clone(),
        }));
    }

    let reads = Arc::new(Mutex::new(Vec::with_capacity(TARGET_OPS)));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();

    for (n, repo) in repos
        .iter()
        .flat_map(|r| std::iter::repeat_n(r, READERS_PER_SERVICE))
        .enumerate()
    {
        let (repo, reads, done, operations) = (
            repo.clone(),
            reads.clone(),
            done.clone(),
            operations.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = n as u32;
            while !done.load(Ordering::Relaxed) {
                i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let id = (i >> 16) % KEYS;
                let start = Instant::now();
                let version = repo.read_row(id).await.expect("the loader never fails");
                reads.lock().unwrap().push(Read { id, start, version });
                if operations.fetch_add(1, Ordering::Relaxed) + 1 >= TARGET_OPS
                    || started.elapsed() > TIME_LIMIT
                {
                    done.store(true, Ordering::Relaxed);
                }
            }
        }));
    }
    for n in 0..WRITERS {
        let repo = repos[n % repos.len()].clone();
        let (writes, done, operations) = (writes.clone(), done.clone(), operations.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = n as u32 % KEYS;
            while !done.load(Ordering::Relaxed) {
                id = (id + 1) % KEYS;
                let version = repo.write_row(id).await.expect("writes never fail");
                writes.lock().unwrap().push(Write {
                    id,
                    end: Instant::now(),
                    version,
                });
                operations.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker task");
    }

    let reads = reads.lock().unwrap().clone();
    let writes = writes.lock().unwrap().clone();
    let outcome = Outcome {
        operations: reads.len() + writes.len(),
        violations: violations(&reads, &writes),
    };
    let stats = repos[0].cache.stats();
    eprintln!(
        "consistency checker (leases {}): {} operations ({} reads, {} writes) in {:.1} s, {} violations; \
         service 0: hits {} misses {} coalesced {} stale sets prevented {}",
        if leases { "on" } else { "off" },
        outcome.operations,
        reads.len(),
        writes.len(),
        started.elapsed().as_secs_f64(),
        outcome.violations,
        stats.hits,
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
