//! Faults that are not outages: a full server, a cut connection that swallows an invalidation,
//! one enormous value, a stalled server, a failing loader under a stampede, a loader slower
//! than its lease. Each test runs against its own `redis-server` (directly or through a
//! [`FaultProxy`]) and asserts counts, values and states; durations are printed, never
//! asserted, except as generous bounds that call a call hung.
//!
//! ```bash
//! RUST_LOG=error cargo test -p cachekit-tests --test faults -- --nocapture
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachekit::{BreakerState, CacheService, FaultKind};
use cachekit_tests::logs::Captured;
use cachekit_tests::{FaultProxy, RedisServer, init_tracing, raw, within};
use redis::aio::MultiplexedConnection;

/// How long any one call may take before the test calls it hung. Far above every operation
/// timeout and loader delay used here.
const BOUND: Duration = Duration::from_secs(10);

/// `get_or_load` of `key` with a loader that returns `value` and cannot fail.
async fn load(cache: &CacheService, key: &str, value: &str) -> String {
    let value = value.to_string();
    let Ok(loaded) = within(
        BOUND,
        "get_or_load",
        cache.get_or_load(key, None, || async { Ok::<_, Infallible>(value) }),
    )
    .await;
    loaded
}

/// `GET key` behind the cache's back, as text.
async fn raw_get(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = raw::get(conn, key).await;
    bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// `value` as the cache stores it (JSON).
fn json(value: &str) -> String {
    serde_json::to_string(value).expect("a string encodes")
}

/// One field of `INFO section`, as a number.
async fn info_field(conn: &mut MultiplexedConnection, section: &str, field: &str) -> u64 {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw INFO {section} failed: {error}"));
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no numeric `{field}`:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_do_not_open_the_breaker_and_an_invalidation_still_lands() {
    init_tracing();
    let server =
        RedisServer::start_with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let mut conn = server.connection().await;
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("oom")
        // Two transport faults would open it for an hour: any misclassified reply shows.
        .circuit_breaker(2, Duration::from_secs(3600))
        .build()
        .await
        .expect("service builds");

    // Cached while there is room.
    assert_eq!(load(&cache, "users:1", "old").await, "old");
    assert_eq!(
        raw_get(&mut conn, "oom:users:1").await,
        Some(json("old")),
        "the first load was not cached"
    );
    assert!(within(BOUND, "set", cache.set("users:2", &"kept", None)).await);

    // Fill the server until it refuses writes, with keys outside the prefix.
    let filler = vec![b'f'; 100 * 1024];
    let mut fillers = Vec::new();
    let refused = loop {
        assert!(
            fillers.len() < 1000,
            "100 MB written under a 2 MB maxmemory without an OOM reply"
        );
        let key = format!("filler:{}", fillers.len());
        let reply: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&key)
            .arg(&filler)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(()) => fillers.push(key),
            Err(error) => break error,
        }
    };
    assert_eq!(refused.code(), Some("OOM"), "the filler failed: {refused}");
    // The refused command's own 100 KiB counted toward the limit; without it the server sits
    // just under it, and would take small writes. Lower the limit below what is used, by more
    // than any buffer the server may free meanwhile, so that it stays full.
    let used = info_field(&mut conn, "memory", "used_memory").await;
    let limit = used - 256 * 1024;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query_async(&mut conn)
        .await
        .expect("raw CONFIG SET maxmemory");
    eprintln!(
        "OOM after {} filler values of {} KiB; used_memory {used} bytes, maxmemory lowered \
         to {limit} bytes",
        fillers.len(),
        filler.len() / 1024,
    );

    // Every write is refused; each call fails alone, none of it feeds the breaker.
    const CALLS: usize = 20;
    for i in 0..CALLS {
        let key = format!("other:{i}");
        assert!(
            !within(BOUND, "set", cache.set(&key, &i, None)).await,
            "a set was accepted by a full server"
        );
        let value = format!("loaded-{i}");
        assert_eq!(load(&cache, &key, &value).await, value);
    }
    let error = within(BOUND, "try_set", cache.try_set("other:try", &1, None))
        .await
        .expect_err("a full server accepted a write");
    assert_eq!(error.fault_kind(), Some(FaultKind::OutOfMemory), "{error}");
    assert!(!error.is_transport(), "{error}");

    // Reads still work, and so does removal.
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("users:2"))
            .await
            .as_deref(),
        Some("kept"),
        "a cached key stopped hitting while the server was full"
    );
    let deleted = within(BOUND, "try_delete", cache.try_delete("users:1"))
        .await
        .expect("the invalidation did not land on a full server");
    assert!(deleted, "the cached key was not found to delete");

    let stats = cache.stats();
    eprintln!("while full: {stats:?}");
    assert!(
        stats.faults.out_of_memory >= CALLS as u64,
        "OOM replies not counted: {stats:?}"
    );
    assert_eq!(
        stats.faults.timeouts + stats.faults.connection,
        0,
        "OOM replies counted as transport faults: {stats:?}"
    );
    assert_eq!(stats.breaker, BreakerState::Closed, "{stats:?}");
    assert_eq!(
        stats.invalidations_deferred, 0,
        "a delete that landed was remembered: {stats:?}"
    );

    // Room again: the old value is gone for good, and the next load is cached.
    let () = redis::cmd("DEL")
        .arg(&fillers)
        .query_async(&mut conn)
        .await
        .expect("raw DEL of the fillers");
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("users:1")).await,
        None
    );
    assert_eq!(load(&cache, "users:1", "new").await, "new");
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("users:1"))
            .await
            .as_deref(),
        Some("new")
    );
    assert_eq!(raw_get(&mut conn, "oom:users:1").await, Some(json("new")));
    assert_eq!(cache.stats().breaker, BreakerState::Closed);
}

/// Waits until the server has no client but the caller's own connection: after a proxy cut,
/// proof that nothing the service sends can reach the server.
async fn until_alone(conn: &mut MultiplexedConnection) {
    within(BOUND, "the cut connections closing", async {
        while info_field(conn, "clients", "connected_clients").await > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_lost_to_a_cut_connection_is_applied_before_the_next_read() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut conn = server.connection().await;
    let cache = CacheService::builder()
        .redis_url(proxy.url())
        .prefix("cut")
        .timeout(Duration::from_millis(250))
        .circuit_breaker(2, Duration::from_millis(300))
        .build()
        .await
        .expect("service builds");
    assert_eq!(load(&cache, "users:1", "old").await, "old");
    assert_eq!(raw_get(&mut conn, "cut:users:1").await, Some(json("old")));

    // The writer's invalidations meet a cut connection: none reaches the server.
    proxy.cut();
    until_alone(&mut conn).await;
    assert!(
        !within(BOUND, "delete", cache.delete("users:1")).await,
        "a delete through a cut connection reported success"
    );
    let error = within(BOUND, "try_delete", cache.try_delete("users:1"))
        .await
        .expect_err("a delete through a cut connection succeeded");
    assert!(error.is_transport() || error.is_skipped(), "{error}");
    assert_eq!(
        within(
            BOUND,
            "invalidate_pattern",
            cache.invalidate_pattern("users:*")
        )
        .await,
        0
    );
    assert_eq!(
        raw_get(&mut conn, "cut:users:1").await,
        Some(json("old")),
        "an invalidation reached the server through the cut"
    );
    let stats = cache.stats();
    eprintln!("during the cut: {stats:?}");
    assert!(stats.invalidations_deferred >= 1, "{stats:?}");

    // Back: reads until the breaker closes; not one may return the old value.
    proxy.restore();
    let mut reads = 0;
    within(BOUND, "the breaker closing", async {
        loop {
            let read = cache.get::<String>("users:1").await;
            reads += 1;
            assert_eq!(
                read, None,
                "read {reads} after the cut served the value a lost invalidation removed"
            );
            if cache.stats().breaker == BreakerState::Closed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let stats = cache.stats();
    eprintln!("after {reads} reads the breaker is closed: {stats:?}");
    assert!(stats.invalidations_replayed >= 1, "{stats:?}");
    assert_eq!(
        raw_get(&mut conn, "cut:users:1").await,
        None,
        "the lost invalidation was never applied"
    );
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("users:1")).await,
        None
    );
    assert_eq!(load(&cache, "users:1", "new").await, "new");
    assert_eq!(raw_get(&mut conn, "cut:users:1").await, Some(json("new")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_value_does_not_take_the_cache_down() {
    init_tracing();
    let server = RedisServer::start();
    // Writing 20 MB can outlast redis-rs's default response timeout (500 ms) on a loaded
    // machine: this connection only sets up and checks, so it waits longer.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = server
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("a connection to redis-server");
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("poison")
        .timeout(Duration::from_millis(250))
        .circuit_breaker(2, Duration::from_secs(3600))
        .build()
        .await
        .expect("service builds");
    assert!(within(BOUND, "set", cache.set("small", &"fine", None)).await);
    // 20 MB of valid JSON: read whole, it would decode as a `String` and be served.
    let poison = json(&"x".repeat(20 << 20));

    const ROUNDS: u64 = 3;
    for round in 0..ROUNDS {
        raw::set(&mut conn, "poison:big", poison.as_str()).await;
        let started = Instant::now();
        let read = within(BOUND, "get", cache.get::<String>("big")).await;
        eprintln!(
            "round {round}: get of the 20 MB value took {:?}",
            started.elapsed()
        );
        assert!(read.is_none(), "the oversized value was served");
        assert!(
            !raw::exists(&mut conn, "poison:big").await,
            "the oversized value was left in place"
        );

        raw::set(&mut conn, "poison:big", poison.as_str()).await;
        let started = Instant::now();
        assert_eq!(load(&cache, "big", "small again").await, "small again");
        eprintln!(
            "round {round}: get_or_load over the 20 MB value took {:?}",
            started.elapsed()
        );
        assert_eq!(
            raw_get(&mut conn, "poison:big").await,
            Some(json("small again")),
            "the loader's value did not replace the oversized one"
        );
        assert!(within(BOUND, "delete", cache.delete("big")).await);

        let hits = cache.stats().hits;
        assert_eq!(
            within(BOUND, "get", cache.get::<String>("small"))
                .await
                .as_deref(),
            Some("fine")
        );
        assert_eq!(cache.stats().hits, hits + 1, "the small key did not hit");
    }
    let stats = cache.stats();
    eprintln!("{stats:?}");
    assert_eq!(
        stats.faults.too_large,
        2 * ROUNDS,
        "each read of the oversized value counts once: {stats:?}"
    );
    assert_eq!(stats.breaker, BreakerState::Closed, "{stats:?}");
}

/// Readers of one key that arrive while its read is stalled wait behind that read, not for
/// another one after it: the whole pile costs one timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_piled_behind_a_stalled_read_share_its_timeout() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = CacheService::builder()
        .redis_url(proxy.url())
        .prefix("pile")
        .timeout(Duration::from_millis(250))
        .circuit_breaker(100, Duration::from_secs(1))
        .build()
        .await
        .expect("service builds");
    assert!(cache.set("hot", &"v", None).await);
    assert_eq!(cache.get::<String>("hot").await.as_deref(), Some("v"));
    proxy.stall();
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get::<String>("hot").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // the first read is in the air
    let pile: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<String>("hot").await })
        })
        .collect();
    assert_eq!(within(BOUND, "the first read", first).await.unwrap(), None);
    for reader in pile {
        assert_eq!(within(BOUND, "a piled reader", reader).await.unwrap(), None);
    }
    // A request sent after the first would time out meanwhile, still stalled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = cache.stats();
    assert_eq!(
        stats.faults.timeouts, 1,
        "the readers behind the stalled read sent requests of their own: {stats:?}"
    );
    proxy.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_against_a_stalled_redis_times_out_once() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut conn = server.connection().await;
    let cache = CacheService::builder()
        .redis_url(proxy.url())
        .prefix("stall")
        .timeout(Duration::from_millis(250))
        // Stays closed: what the call skips is up to its budget, not the breaker.
        .circuit_breaker(100, Duration::from_secs(1))
        .build()
        .await
        .expect("service builds");
    // Connection made and scripts cached, so that the call below sends one command per step.
    assert_eq!(load(&cache, "warm-up", "warm").await, "warm");
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("warm-up"))
            .await
            .as_deref(),
        Some("warm")
    );
    assert_eq!(cache.stats().errors, 0);
    // Lease, fill, renewal and release are scripts.
    let scripts_before = raw::command_calls(&mut conn, "evalsha").await;

    proxy.stall();
    let loads = AtomicUsize::new(0);
    let started = Instant::now();
    let value = within(
        BOUND,
        "get_or_load",
        cache.get_or_load("k", None, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(1)
        }),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(value, Ok(1));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // A command the call left to run in the background would time out meanwhile, still
    // stalled. Waiting longer can only let more show, never fail a correct library.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = cache.stats();
    eprintln!(
        "get_or_load against a stalled Redis took {elapsed:?} (op timeout 250 ms); {stats:?}"
    );
    assert_eq!(
        stats.faults.timeouts, 1,
        "one call against the stalled server cost more than one timeout: {stats:?}"
    );
    assert_eq!(stats.errors, 1, "{stats:?}");
    assert_eq!(stats.breaker, BreakerState::Closed, "{stats:?}");

    // The stalled read is delivered now, with anything queued behind it; the read below
    // comes after all of it on the same connection.
    proxy.resume();
    assert_eq!(
        within(BOUND, "get", cache.get::<i32>("k")).await,
        None,
        "a value no lease vouched for was cached"
    );
    assert_eq!(raw_get(&mut conn, "stall:k").await, None);
    let scripts = raw::command_calls(&mut conn, "evalsha").await - scripts_before;
    eprintln!("scripts the server ran for the call: {scripts}");
    assert_eq!(
        scripts, 0,
        "the call skipped its lease, yet a lease script reached the server"
    );
}

/// A loader shared by many callers: the first run fails after a long wait, later runs succeed
/// quickly. Counts runs and the most that ran at once.
#[derive(Default)]
struct FlakyLoader {
    runs: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl FlakyLoader {
    const FIRST_RUN: Duration = Duration::from_secs(2);
    const LATER_RUNS: Duration = Duration::from_millis(200);

    async fn load(&self) -> Result<String, String> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let result = if run == 0 {
            tokio::time::sleep(Self::FIRST_RUN).await;
            Err("the database timed out".to_string())
        } else {
            tokio::time::sleep(Self::LATER_RUNS).await;
            Ok("loaded".to_string())
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_failed_loader_rejoin_instead_of_polling_redis() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("stampede")
        .build()
        .await
        .expect("service builds");
    // Connection made and scripts cached before counting.
    assert_eq!(load(&cache, "warm-up", "warm").await, "warm");

    const CALLERS: usize = 500;
    let loader = Arc::new(FlakyLoader::default());
    let before = info_field(&mut conn, "stats", "total_commands_processed").await;
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cache, loader) = (cache.clone(), loader.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("report", None, || async move { loader.load().await })
                    .await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(CALLERS);
    for call in calls {
        results.push(
            within(BOUND, "a stampeding caller", call)
                .await
                .expect("caller task"),
        );
    }
    let elapsed = started.elapsed();
    // The first INFO ran before the count it returned: it is in the second one's.
    let commands = info_field(&mut conn, "stats", "total_commands_processed").await - before - 1;

    let failed = results.iter().filter(|result| result.is_err()).count();
    let runs = loader.runs.load(Ordering::SeqCst);
    let most_at_once = loader.most_at_once.load(Ordering::SeqCst);
    eprintln!(
        "{CALLERS} callers, first load failing after {:?}: {commands} Redis commands in {:.2} s \
         ({:.0} commands/s); {runs} loader runs, at most {most_at_once} at once, {failed} \
         callers got the error; {:?}",
        FlakyLoader::FIRST_RUN,
        elapsed.as_secs_f64(),
        commands as f64 / elapsed.as_secs_f64(),
        cache.stats()
    );
    assert_eq!(
        failed, 1,
        "only the failed loader's own caller sees its error"
    );
    for result in results.iter().filter(|result| result.is_ok()) {
        assert_eq!(result.as_deref(), Ok("loaded"));
    }
    assert_eq!(most_at_once, 1, "loaders ran side by side");
    assert_eq!(runs, 2, "one failed load, then one that succeeded");
    assert!(
        commands < 5_000,
        "{commands} Redis commands for {CALLERS} callers of one key: the waiters polled Redis"
    );
    assert_eq!(
        raw_get(&mut conn, "stampede:report").await,
        Some(json("loaded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_slower_than_the_lease_keeps_its_lease() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let service = || {
        CacheService::builder()
            .redis_url(server.url())
            .prefix("slow")
            // The lease marker lives 150 ms in Redis unless renewed.
            .timeout(Duration::from_millis(100))
            .lease_ttl(Duration::from_millis(500))
            .build()
    };
    let slow = service().await.expect("service builds");
    let other = service().await.expect("service builds");

    let loading = {
        let slow = slow.clone();
        tokio::spawn(async move {
            slow.get_or_load("report", None, || async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, Infallible>("slow".to_string())
            })
            .await
        })
    };
    // Another process misses the key while the slow load runs, long after the marker's own
    // TTL: it must find the lease still held, wait its 500 ms, and load without storing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let marker: Option<Vec<u8>> = raw::get(&mut conn, "slow:report").await;
    assert!(
        marker.is_some_and(|bytes| bytes.starts_with(b"\0cachekit-lease:")),
        "no lease marker 300 ms into the load"
    );
    assert_eq!(load(&other, "report", "other").await, "other");

    let Ok(value) = within(BOUND, "the slow load", loading)
        .await
        .expect("the slow load's task");
    assert_eq!(value, "slow");
    let (slow_stats, other_stats) = (slow.stats(), other.stats());
    eprintln!("slow loader: {slow_stats:?}\nother service: {other_stats:?}");
    assert_eq!(
        raw_get(&mut conn, "slow:report").await,
        Some(json("slow")),
        "the slow loader's fill was refused: its lease lapsed"
    );
    assert_eq!(slow_stats.stale_sets_prevented, 0, "{slow_stats:?}");
    assert_eq!(slow_stats.sets, 1, "{slow_stats:?}");
    assert_eq!(
        other_stats.sets, 0,
        "the other service stored a value: it took the slow loader's lease"
    );
}

/// The password of [`no_part_of_a_password_reaches_logs`]: its marker `7f3a9c` is what the
/// test looks for, so the raw and the percent-encoded forms are both caught.
const PASSWORD: &str = "pw-7f3a9c:@/%-x";
const PASSWORD_MARK: &str = "7f3a9c";
/// A wrong password, with a marker of its own.
const WRONG_PASSWORD: &str = "wrong-5b1e2d";
const WRONG_MARK: &str = "5b1e2d";

/// Every `tracing` event at every level, from a service with a password: built from a URL and
/// from variables, with the wrong password, through a server kill and restart, and from a URL
/// that does not parse; plus what the services return (`Debug`, health, stats, errors). None
/// may contain the password.
///
/// Unlike the others, this test drives its own current-thread runtime: a subscriber set for
/// one thread then sees every event, from every task, without replacing the process-wide
/// subscriber the other tests share.
#[test]
fn no_part_of_a_password_reaches_logs() {
    let captured = Captured::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut returned = Vec::new();
    {
        let _default = captured.install();
        runtime.block_on(run_with_password(&mut returned));
    }
    let logs = captured.text();
    eprintln!(
        "{} log lines captured, {} returned texts checked",
        logs.lines().count(),
        returned.len()
    );
    assert!(
        logs.contains("using Redis at 127.0.0.1:")
            && logs.contains("backend unreachable at start-up"),
        "the capture missed the start-up lines, or the wrong password was accepted:\n{logs}"
    );
    for mark in [PASSWORD_MARK, WRONG_MARK] {
        for line in logs.lines() {
            assert!(!line.contains(mark), "a password reached the logs: {line}");
        }
        for text in &returned {
            assert!(!text.contains(mark), "a password was returned: {text}");
        }
    }
}

/// The scenarios of [`no_part_of_a_password_reaches_logs`]; what the services return is
/// pushed to `returned`.
async fn run_with_password(returned: &mut Vec<String>) {
    let server = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
    let service = |url: String| {
        CacheService::builder()
            .redis_url(url)
            .prefix("secret")
            .timeout(Duration::from_millis(250))
            .circuit_breaker(1, Duration::from_millis(200))
            .build()
    };

    let good = service(server.url_with_auth(None, PASSWORD))
        .await
        .expect("service builds");
    assert_eq!(load(&good, "k", "v").await, "v");
    assert_eq!(
        within(BOUND, "get", good.get::<String>("k"))
            .await
            .as_deref(),
        Some("v")
    );

    let port = server.port().to_string();
    let vars = [
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_PASSWORD", PASSWORD),
        ("CACHE_PREFIX", "secret"),
    ];
    let config = cachekit::CacheConfig::from_lookup(|name| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_string())
    })
    .expect("the variables are valid");
    returned.push(format!("{config:?}"));
    let from_vars = CacheService::from_config(config)
        .await
        .expect("service builds");
    assert_eq!(
        within(BOUND, "get", from_vars.get::<String>("k"))
            .await
            .as_deref(),
        Some("v")
    );

    let wrong = service(server.url_with_auth(None, WRONG_PASSWORD))
        .await
        .expect("a service with a wrong password still builds, degraded");
    assert_eq!(load(&wrong, "k", "loaded").await, "loaded");
    let health = within(BOUND, "health", wrong.health()).await;
    assert!(!health.connected, "{health:?}");
    returned.push(format!("{wrong:?} {health:?} {:?}", wrong.stats()));
    returned.push(serde_json::to_string(&health).expect("health serializes"));
    if let Err(error) = within(BOUND, "try_get", wrong.try_get::<String>("k")).await {
        returned.push(format!("{error} {error:?}"));
    }

    // An outage and a reconnection, which authenticates again.
    server.kill();
    assert_eq!(load(&good, "k", "loaded").await, "loaded");
    if let Err(error) = within(BOUND, "try_set", good.try_set("k", &"x", None)).await {
        returned.push(format!("{error} {error:?}"));
    }
    returned.push(format!(
        "{:?}",
        within(BOUND, "health", good.health()).await
    ));
    server.restart();
    within(BOUND, "the reconnection", async {
        while good.stats().breaker != BreakerState::Closed {
            let _ = good.get::<String>("k").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(load(&good, "k", "again").await, "again");
    assert_eq!(
        within(BOUND, "get", good.get::<String>("k"))
            .await
            .as_deref(),
        Some("again"),
        "the service did not reconnect with its password"
    );
    returned.push(format!("{good:?} {:?}", good.stats()));

    // A URL that does not parse, with the password in it.
    let encoded = server.url_with_auth(Some("app"), PASSWORD);
    let invalid = encoded.replace(&format!(":{port}/"), ":99999/");
    assert_ne!(invalid, encoded);
    match service(invalid).await {
        Ok(service) => panic!("a URL with port 99999 built a service: {service:?}"),
        Err(error) => returned.push(format!("{error} {error:?}")),
    }
    let bad_vars = [("REDIS_URL", encoded.replace("redis://", "redis:// "))];
    match cachekit::CacheConfig::from_lookup(|name| {
        bad_vars
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    }) {
        Ok(config) => returned.push(format!("{config:?}")),
        Err(error) => returned.push(format!("{error} {error:?}")),
    }
}

/// A removal the server refuses for a passing reason (a replica answers `READONLY`) is
/// remembered like one that could not reach it, and applied once the server takes writes again,
/// before a read is served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_refused_by_a_replica_is_applied_once_it_takes_writes() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("replica")
        .build()
        .await
        .expect("service builds");
    assert_eq!(load(&cache, "users:1", "old").await, "old");

    // A replica of a primary that does not exist: it keeps its data and refuses writes.
    let unused = cachekit_tests::RedisServer::start();
    let port = unused.port();
    drop(unused);
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query_async(&mut conn)
        .await
        .expect("REPLICAOF");
    let error = within(BOUND, "try_delete", cache.try_delete("users:1"))
        .await
        .unwrap_err();
    assert_eq!(error.fault_kind(), Some(FaultKind::ReadOnly), "{error}");
    assert_eq!(cache.stats().invalidations_deferred, 1);
    assert_eq!(
        raw_get(&mut conn, "replica:users:1").await,
        Some(json("old"))
    );
    // Readable, but not served while the removal waits.
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("users:1")).await,
        None
    );

    let () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn)
        .await
        .expect("REPLICAOF NO ONE");
    let deadline = Instant::now() + BOUND;
    while cache.stats().invalidations_replayed == 0 {
        assert_eq!(
            within(BOUND, "get", cache.get::<String>("users:1")).await,
            None
        );
        assert!(
            Instant::now() < deadline,
            "never replayed: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw_get(&mut conn, "replica:users:1").await, None);
    assert_eq!(load(&cache, "users:1", "new").await, "new");
}

/// A load that spans an invalidation made in this process does not write the in-process
/// fallback store, which that invalidation already cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_spanning_an_invalidation_does_not_refill_the_fallback_store() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = CacheService::builder()
        .redis_url(proxy.url())
        .prefix("fallback-race")
        .timeout(Duration::from_millis(250))
        .circuit_breaker(100, Duration::from_secs(1))
        .fallback(cachekit::Fallback::memory())
        .build()
        .await
        .expect("service builds");
    assert_eq!(load(&cache, "warm-up", "warm").await, "warm");

    proxy.stall();
    let loading = Arc::new(tokio::sync::Notify::new());
    let go_on = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (cache, loading, go_on) = (cache.clone(), loading.clone(), go_on.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("users:1", None, || async move {
                    loading.notify_one();
                    go_on.notified().await;
                    Ok::<_, Infallible>("old".to_string()) // read before the write below
                })
                .await
        })
    };
    within(BOUND, "the load starting", loading.notified()).await;
    // The writer's invalidation, in this process: it cannot reach Redis and is remembered.
    assert!(!within(BOUND, "delete", cache.delete("users:1")).await);
    go_on.notify_one();
    let Ok(loaded) = within(BOUND, "the reader", reader)
        .await
        .expect("reader task");
    assert_eq!(loaded, "old", "the caller gets what it loaded");

    // Still stalled: reads go to the fallback store, which must not hold the old value.
    assert_eq!(
        within(BOUND, "get", cache.get::<String>("users:1")).await,
        None
    );
    proxy.resume();
}

/// A server that stops answering shows only as a timeout; when connections were refused or cut
/// before (at start-up here), `health()` names that failure too, and forgets it once the server
/// has answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_last_connection_failure_behind_a_timeout() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.cut();
    let cache = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_url(proxy.url())
            .prefix("health")
            .circuit_breaker(1, Duration::from_millis(200))
            .build(),
    )
    .await
    .expect("a service builds while its server is unreachable");
    // Connections are accepted again but never answered.
    proxy.stall();
    proxy.restore();
    let health = within(BOUND, "health", cache.health()).await;
    assert!(!health.connected);
    let error = health.error.unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    assert!(
        error.contains("the last connection attempt failed:"),
        "a timeout alone hides the refused connections before it: {error}"
    );

    proxy.resume();
    let deadline = Instant::now() + BOUND;
    while !cache.set("users:1", &1, None).await {
        assert!(
            Instant::now() < deadline,
            "never reconnected: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.stall();
    let error = within(BOUND, "health", cache.health())
        .await
        .error
        .unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    assert!(
        !error.contains("connection attempt"),
        "the server answered since that failure: {error}"
    );
    proxy.resume();
}
