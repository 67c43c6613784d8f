//! Reads batched behind reads in flight, against a private `redis-server`: many tasks reading
//! distinct keys through one service each get their own key's value, a key of the wrong type
//! fails its own read only, a read after a write sees the write, and a stalled server fails a
//! batch within the operation timeout.
//!
//! ```bash
//! cargo test -p cachekit-tests --test batching
//! ```

use std::sync::Arc;
use std::time::Duration;

use cachekit::CacheService;
use cachekit_tests::{FaultProxy, RedisServer, init_tracing, within};
use tokio::task::JoinSet;

/// Far above the operation timeout: a call that takes longer is hung.
const BOUND: Duration = Duration::from_secs(10);
const TASKS: u64 = 64;
/// The pace of the runtime test's events; its operation timeout is five steps.
const STEP: Duration = Duration::from_millis(200);
const KEYS: u64 = 1_000;

async fn service(url: String, prefix: &str) -> CacheService {
    CacheService::builder()
        .redis_url(url)
        .prefix(prefix)
        .build()
        .await
        .expect("a valid configuration builds")
}

/// `users:{id}` holds `id * 10`, for every id below `KEYS`.
async fn prime(cache: &CacheService) {
    for id in 0..KEYS {
        assert!(cache.set(&format!("users:{id}"), &(id * 10), None).await);
    }
}

/// A service with an operation timeout of five steps and a breaker these tests' timeouts
/// never open (every read reaches the batcher), its keys primed.
async fn paced(url: String, prefix: &str) -> CacheService {
    let cache = CacheService::builder()
        .redis_url(url)
        .prefix(prefix)
        .timeout(STEP * 5)
        .circuit_breaker(1_000_000, Duration::from_secs(1))
        .build()
        .await
        .expect("a valid configuration builds");
    prime(&cache).await;
    cache
}

/// Waits for every task, failing the test if one panicked or all take longer than `bound`.
async fn join_all(bound: Duration, what: &str, mut tasks: JoinSet<()>) {
    within(bound, what, async {
        while let Some(done) = tasks.join_next().await {
            done.expect("a task panicked");
        }
    })
    .await;
}

/// `TASKS` tasks each reading every key once, in an order of their own, checking each value is
/// its key's.
async fn read_everything(cache: &CacheService) {
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let cache = cache.clone();
        tasks.spawn(async move {
            for i in 0..KEYS {
                let id = (i * 7 + task * 13) % KEYS;
                let value = cache.get::<u64>(&format!("users:{id}")).await;
                assert_eq!(value, Some(id * 10), "task {task} read users:{id}");
            }
        });
    }
    join_all(BOUND, "reads", tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_distinct_keys_leave_in_batches_each_with_its_own_value() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(server.url(), "batch").await;
    prime(&cache).await;
    read_everything(&cache).await;
    let stats = cache.stats();
    assert_eq!(stats.hits, TASKS * KEYS, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert!(
        stats.reads_batched > 0,
        "64 tasks never queued behind two reads: {stats:?}"
    );
    println!(
        "{} of {} reads left in batches",
        stats.reads_batched,
        TASKS * KEYS
    );

    // A lone reader sends each read at once.
    let before = cache.stats().reads_batched;
    for id in 0..100 {
        assert_eq!(
            cache.get::<u64>(&format!("users:{id}")).await,
            Some(id * 10)
        );
    }
    assert_eq!(cache.stats().reads_batched, before);
}

/// A list under the prefix answers `WRONGTYPE` to its own read inside a batch; the other reads
/// of the batch get their values, and the list is removed as any unreadable key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_fails_its_own_read_only() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = service(server.url(), "wrong").await;
    prime(&cache).await;
    let lists: Vec<u64> = (0..KEYS).step_by(100).collect();
    for id in &lists {
        let _: () = redis::cmd("DEL")
            .arg(format!("wrong:users:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(format!("wrong:users:{id}"))
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let lists = Arc::new(lists);
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let (cache, lists) = (cache.clone(), lists.clone());
        tasks.spawn(async move {
            for i in 0..KEYS {
                let id = (i * 7 + task * 13) % KEYS;
                let value = cache.get::<u64>(&format!("users:{id}")).await;
                if lists.contains(&id) {
                    // The list, or nothing once a reader removed it.
                    assert_eq!(value, None, "users:{id}");
                } else {
                    assert_eq!(value, Some(id * 10), "task {task} read users:{id}");
                }
            }
        });
    }
    join_all(BOUND, "reads", tasks).await;
    let stats = cache.stats();
    assert!(stats.reads_batched > 0, "{stats:?}");
    assert!(stats.faults.wrong_type >= 1, "{stats:?}");
    assert_eq!(
        stats.faults.timeouts + stats.faults.connection,
        0,
        "{stats:?}"
    );
    assert_eq!(stats.breaker, cachekit::BreakerState::Closed, "{stats:?}");
}

/// A write that returned is seen by every read that began after it, batched or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_sees_the_write() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(server.url(), "order").await;
    prime(&cache).await;
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let cache = cache.clone();
        tasks.spawn(async move {
            // Each task owns the keys congruent to it, writes a new version, reads it back.
            for version in 1..=20u64 {
                for id in (task..KEYS).step_by(TASKS as usize) {
                    let key = format!("users:{id}");
                    assert!(cache.set(&key, &version, None).await);
                    assert_eq!(cache.get::<u64>(&key).await, Some(version), "{key}");
                }
            }
        });
    }
    join_all(BOUND * 3, "writes and reads", tasks).await;
    let stats = cache.stats();
    assert!(stats.reads_batched > 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

/// Reads queued behind a stalled server fail within the operation timeout, and reads succeed
/// again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_fails_queued_reads_within_the_timeout() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = CacheService::builder()
        .redis_url(proxy.url())
        .prefix("stall")
        // Never opened by this test's timeouts: every read reaches the batcher.
        .circuit_breaker(1_000_000, Duration::from_secs(1))
        .build()
        .await
        .expect("a valid configuration builds");
    prime(&cache).await;
    proxy.stall();
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let cache = cache.clone();
        tasks.spawn(async move { cache.get::<u64>(&format!("users:{task}")).await });
    }
    within(BOUND, "reads against a stalled server", async {
        while let Some(done) = tasks.join_next().await {
            assert_eq!(done.expect("a reader panicked"), None);
        }
    })
    .await;
    let stalled = cache.stats();
    assert_eq!(stalled.faults.timeouts, TASKS, "{stalled:?}");
    proxy.resume();
    read_everything(&cache).await;
    let stats = cache.stats();
    assert_eq!(stats.faults.timeouts, TASKS, "{stats:?}");
    assert!(stats.reads_batched > 0, "{stats:?}");
}

/// A queued read is bounded by the operation timeout from when it was made, not from when its
/// batch leaves. Against a paused server, two reads go out at once and reads queued behind
/// them could leave as a batch only when those give up, one timeout later; the queued reads
/// must give up then too, not one timeout after their batch left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_read_fails_within_the_timeout_of_when_it_queued() {
    init_tracing();
    let server = RedisServer::start();
    let timeout = STEP * 5;
    let cache = paced(server.url(), "queued").await;
    tokio::task::block_in_place(|| server.pause());
    let mut tasks = JoinSet::new();
    for id in 0..TASKS {
        let cache = cache.clone();
        tasks.spawn(async move {
            assert_eq!(cache.get::<u64>(&format!("users:{id}")).await, None);
        });
    }
    // Every read queued at about the same time, so all are done about one timeout later;
    // half a timeout of slack, well short of the second timeout a batch timed from when it
    // left would take.
    join_all(
        timeout + timeout / 2,
        "reads queued behind a paused server",
        tasks,
    )
    .await;
    let stats = cache.stats();
    assert_eq!(stats.faults.timeouts, TASKS, "{stats:?}");
    server.resume();
    read_everything(&cache).await;
}

/// A read of `users:0` or `users:1` that was sent and not answered yet.
type Held<'a> = std::pin::Pin<Box<dyn Future<Output = Option<u64>> + 'a>>;

/// Two reads sent (each polled once, on the runtime the caller is in) and not answered yet:
/// they hold both slots on the wire until polled to the end or dropped. A thread descheduled
/// during a first poll can find its reply already there; such a pair is dropped (freeing its
/// slots) and sent again.
fn hold_both_slots(cache: &CacheService) -> Vec<Held<'_>> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    for _attempt in 0..10 {
        let mut held: Vec<Held<'_>> = ["users:0", "users:1"]
            .iter()
            .map(|key| Box::pin(cache.get::<u64>(key)) as Held<'_>)
            .collect();
        // Both polled (each takes its slot), then checked.
        let pending: Vec<bool> = held
            .iter_mut()
            .map(|read| read.as_mut().poll(&mut context).is_pending())
            .collect();
        if pending.iter().all(|&pending| pending) {
            return held;
        }
    }
    panic!("every pair of reads was answered within its first poll")
}

/// The two reads on the wire hold their slots until their futures are polled to the end or
/// dropped. Futures polled once and then left (a `select!` branch kept for later, a slow
/// consumer of a buffered stream) keep the queue from leaving; reads queued behind them must
/// still end within the operation timeout, as misses, rather than wait for those futures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_queued_behind_reads_nobody_polls_still_end_within_the_timeout() {
    init_tracing();
    let server = RedisServer::start();
    let timeout = STEP * 5;
    let cache = paced(server.url(), "held").await;
    let held = hold_both_slots(&cache);
    let began = std::time::Instant::now();
    let queued = within(
        timeout * 2,
        "a read queued behind reads nobody polls",
        async { cache.get::<u64>("users:2").await },
    )
    .await;
    assert_eq!(queued, None);
    // It ended at its deadline, not before: it waited its timeout for a chance to be sent.
    assert!(
        began.elapsed() >= timeout,
        "ended after {:?}",
        began.elapsed()
    );
    assert_eq!(cache.stats().faults.timeouts, 1);
    // Polled again, the held reads finish with the replies that came meanwhile, and give
    // their slots back.
    for (id, read) in (0u64..).zip(held) {
        assert_eq!(within(BOUND, "a held read", read).await, Some(id * 10));
    }
    read_everything(&cache).await;
}

/// A service outlives the runtime it was used on (a service in a `static`, shared by tests
/// that each run their own runtime): batches in flight when that runtime shuts down are
/// dropped unfinished, and must give their slots back, or every later read would queue for
/// a batch that is never sent.
#[test]
fn batches_dropped_with_their_runtime_give_their_slots_back() {
    init_tracing();
    let server = RedisServer::start();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    };
    let first = runtime();
    let cache = first.block_on(async {
        let cache = paced(server.url(), "runtimes").await;
        // Against a paused server: two reads go out at once, one step apart; reads queue
        // behind them; when the first gives up (its timeout), the queue leaves as a batch;
        // more reads queue; when the second gives up, they leave as a second batch. Both
        // batches are out when the runtime shuts down.
        tokio::task::block_in_place(|| server.pause());
        let read = |id: u64| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<u64>(&format!("users:{id}")).await })
        };
        read(0);
        tokio::time::sleep(STEP).await;
        read(1);
        tokio::time::sleep(STEP).await;
        (2..12).for_each(|id| drop(read(id)));
        tokio::time::sleep(STEP * 3 + STEP / 2).await;
        (12..22).for_each(|id| drop(read(id)));
        tokio::time::sleep(STEP).await;
        cache
    });
    first.shutdown_background();
    server.resume();

    runtime().block_on(async {
        // The connection went with the first runtime; the service reconnects on this one.
        let deadline = std::time::Instant::now() + BOUND;
        while !cache.set("users:0", &0u64, None).await {
            assert!(std::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        read_everything(&cache).await;
    });
}

/// A batch launched on a current-thread runtime that is then kept and not driven (between two
/// `block_on` calls) does not run until that runtime is driven again. A read queued into it
/// from another runtime still ends within the operation timeout, as a miss, instead of waiting
/// for that runtime.
#[test]
fn reads_queued_into_a_batch_on_a_runtime_nobody_drives_still_end_within_the_timeout() {
    init_tracing();
    let server = RedisServer::start();
    let timeout = STEP * 5;
    let driven = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let cache = driven.block_on(paced(server.url(), "idle"));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    // Two reads sent from the current-thread runtime and left unanswered: they hold both slots.
    let mut held = {
        let _on_idle = idle.enter();
        hold_both_slots(&cache)
    };
    // A read from the other runtime queues behind them.
    let mut queued = Box::pin(cache.get::<u64>("users:2"));
    {
        let _on_driven = driven.enter();
        assert!(queued.as_mut().poll(&mut context).is_pending(), "queued");
    }
    // The first held read ends: the queue leaves as a batch spawned on the current-thread
    // runtime its slot was taken on, which nothing drives until it is dropped.
    let batched = cache.stats().reads_batched;
    drop(held.remove(0));
    assert_eq!(
        cache.stats().reads_batched,
        batched + 1,
        "the queue left as a batch"
    );
    let read = driven.block_on(within(
        timeout * 2,
        "a read queued into a batch on a runtime nobody drives",
        queued,
    ));
    assert_eq!(read, None);
    assert!(cache.stats().faults.timeouts >= 1, "{:?}", cache.stats());
    // Dropped, the idle runtime drops the batch, which gives its slot back.
    {
        let _on_idle = idle.enter();
        held.clear();
    }
    drop(idle);
    driven.block_on(read_everything(&cache));
}
