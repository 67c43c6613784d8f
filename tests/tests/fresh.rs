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
    /// Loader runs inside a caller's call, which waited for it: a refresh drawn inline, or a
    /// load on a miss.
    loads_in_callers: u64,
    /// Refreshed values written back.
    refreshes: u64,
}

/// How the hot key is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refresh {
    Off,
    /// `get_or_load` on a service with `refresh_ahead(1.0)`: the caller that draws refreshes.
    InCaller,
    /// `get_or_refresh`: the refresh runs in a task of its own.
    InBackground,
    /// As `InCaller`, with the in-process tier on (TTL 60 s): the tier stops holding the value
    /// where reads draw.
    InCallerWithTier,
}

tokio::task_local! {
    /// Set in the readers' tasks: a loader that sees it runs inside a caller's call.
    static IN_CALLER: ();
}

/// 1,000 reads a second of one key for `run`, from two service instances of five tasks each,
/// TTL 1 s, a loader taking 50 ms.
async fn hot_key(server: &RedisServer, refresh: Refresh, run: Duration) -> HotKey {
    let configure = |b: cachekit::CacheServiceBuilder| match refresh {
        Refresh::InCaller => b.refresh_ahead(1.0),
        Refresh::InCallerWithTier => b.refresh_ahead(1.0).local_tier(Duration::from_secs(60)),
        _ => b,
    };
    let caches = [
        redis_cache(server, configure).await,
        redis_cache(server, configure).await,
    ];
    let (loads, in_callers) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (loads, in_callers) = (loads.clone(), in_callers.clone());
        move || {
            let (loads, in_callers) = (loads.clone(), in_callers.clone());
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                if IN_CALLER.try_with(|_| ()).is_ok() {
                    in_callers.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, DbDown>("profile".to_string())
            }
        }
    };
    let ttl = Some(Duration::from_secs(1));
    let filled = match refresh {
        Refresh::InBackground => {
            caches[0]
                .get_or_refresh("users:hot", ttl, load.clone())
                .await
        }
        _ => caches[0].get_or_load("users:hot", ttl, load.clone()).await,
    };
    assert_eq!(filled.unwrap(), "profile");
    let first = loads.load(Ordering::SeqCst);
    let misses_before: u64 = caches.iter().map(|c| c.stats().misses).sum();
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + run;
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..5 {
            let (cache, load, calls) = (cache.clone(), load.clone(), calls.clone());
            tasks.push(tokio::spawn(IN_CALLER.scope((), async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while Instant::now() < stop {
                    tick.tick().await;
                    let value = match refresh {
                        Refresh::InBackground => {
                            cache.get_or_refresh("users:hot", ttl, load.clone()).await
                        }
                        _ => cache.get_or_load("users:hot", ttl, load.clone()).await,
                    };
                    assert_eq!(value.unwrap(), "profile");
                    calls.fetch_add(1, Ordering::SeqCst);
                }
            })));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let misses = caches.iter().map(|c| c.stats().misses).sum::<u64>() - misses_before;
    HotKey {
        calls: calls.load(Ordering::SeqCst),
        loads: loads.load(Ordering::SeqCst) - first,
        misses,
        loads_in_callers: in_callers.load(Ordering::SeqCst),
        refreshes: caches.iter().map(|c| c.stats().refreshes).sum(),
    }
}

/// A hot key (1,000 reads/s, TTL 1 s, loader 50 ms) with refresh-ahead: no read finds it
/// missing once it is filled, and the loader runs about once per TTL, by one caller; with
/// `get_or_refresh`, in a task of its own, so no caller waits for it. Without refresh-ahead,
/// every expiry is a miss that callers wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_before_it_expires_by_one_caller() {
    cachekit_tests::init_tracing();
    let run = Duration::from_secs(5);
    let mut runs = Vec::new();
    for refresh in [
        Refresh::InBackground,
        Refresh::InCaller,
        Refresh::Off,
        Refresh::InCallerWithTier,
    ] {
        let server = RedisServer::start();
        let seen = hot_key(&server, refresh, run).await;
        println!("{refresh:?}: {seen:?}");
        assert!(seen.calls > 0, "{refresh:?}");
        runs.push(seen);
    }
    let [background, in_caller, off, with_tier] = &runs[..] else {
        unreachable!()
    };
    for (seen, in_callers) in [
        (background, 0),
        (in_caller, in_caller.loads),
        (with_tier, with_tier.loads),
    ] {
        assert_eq!(
            seen.misses, 0,
            "no read found the hot key missing: {seen:?}"
        );
        assert!(
            seen.refreshes >= 3,
            "it was refreshed, not left to expire: {seen:?}"
        );
        assert_eq!(seen.loads_in_callers, in_callers, "{seen:?}");
        // About once per TTL: never two refreshes at once, nor one per caller.
        assert!(
            seen.loads <= 2 * run.as_secs() + 1,
            "the loader ran about once per TTL: {seen:?}"
        );
    }
    assert!(
        off.misses >= 3 && off.loads_in_callers >= 3,
        "without refresh-ahead the key expires and reads miss: {off:?}"
    );
}

/// A service with refresh-ahead at beta 100 whose key `users:1` holds `"v1"` (TTL 2 s) after a
/// load that took 200 ms: a read now draws a refresh with probability about 0.9.
async fn eager_refresher(cache: &CacheService) {
    let first = cache
        .get_or_load("users:1", Some(Duration::from_secs(2)), || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, DbDown>("v1".to_string())
        })
        .await
        .unwrap();
    assert_eq!(first, "v1");
}

/// Reads `users:1` until a read draws a refresh, whose loader then waits for `go_on` and
/// returns `value` (or fails if `value` is `None`). Returns once that loader runs.
async fn start_refresh(
    cache: &CacheService,
    value: Option<&'static str>,
) -> (
    tokio::task::JoinHandle<Result<Fetched<String>, DbDown>>,
    Arc<Notify>,
) {
    let (entered, go_on) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let task = {
        let (cache, entered, go_on) = (cache.clone(), entered.clone(), go_on.clone());
        tokio::spawn(async move {
            for _ in 0..1_000 {
                let ran = AtomicBool::new(false);
                let fetched = cache
                    .get_or_load_with_status("users:1", Some(Duration::from_secs(2)), || async {
                        ran.store(true, Ordering::SeqCst);
                        entered.notify_one();
                        go_on.notified().await;
                        // As long as the first load, so the next draw is as likely.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        value.map(str::to_string).ok_or(DbDown)
                    })
                    .await;
                if ran.load(Ordering::SeqCst) {
                    return fetched;
                }
                assert_eq!(
                    fetched.unwrap().value,
                    "v1",
                    "no refresh yet: the current value"
                );
            }
            panic!("no read drew a refresh");
        })
    };
    within(LIMIT, "a read drawing a refresh", entered.notified()).await;
    (task, go_on)
}

/// How the race with the refresh's load is run.
#[derive(Debug, Clone, Copy)]
enum Race {
    Delete,
    Pattern,
    NewerSet,
}

async fn refresh_racing(cache: &CacheService, race: Race) -> Option<String> {
    eager_refresher(cache).await;
    let (refresh, go_on) = start_refresh(cache, Some("v1-reloaded-before-the-write")).await;
    match race {
        Race::Delete => assert!(cache.delete("users:1").await),
        Race::Pattern => assert_eq!(cache.invalidate_pattern("users:*").await, 1),
        Race::NewerSet => assert!(cache.set("users:1", &"v2", None).await),
    }
    go_on.notify_one();
    let refreshed = within(LIMIT, "the refresh", refresh)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (refreshed.value.as_str(), refreshed.from_cache),
        ("v1-reloaded-before-the-write", false),
        "the refreshing caller gets what it loaded"
    );
    assert_eq!(cache.stats().stale_sets_prevented, 1, "{race:?}");
    assert_eq!(cache.stats().refreshes, 0, "{race:?}");
    cache.get::<String>("users:1").await
}

/// A refresh whose load began before an invalidation (or a newer write) never writes its value
/// back: its write is conditioned on the version it read.
#[tokio::test]
async fn a_refresh_racing_an_invalidation_or_a_write_is_not_written() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    for race in [Race::Delete, Race::Pattern, Race::NewerSet] {
        let cache = redis_cache(&server, |b| {
            b.refresh_ahead(100.0).prefix(format!("race{}", race as u8))
        })
        .await;
        let left = refresh_racing(&cache, race).await;
        let expected = matches!(race, Race::NewerSet).then(|| "v2".to_string());
        assert_eq!(left, expected, "{race:?}");
        if let Race::NewerSet = race {
            let raw: Option<String> =
                raw::get(&mut server.connection().await, "race2:users:1").await;
            assert_eq!(
                raw.as_deref(),
                Some("\"v2\""),
                "plain JSON, the newer write's"
            );
        }
    }
    for race in [Race::Delete, Race::Pattern, Race::NewerSet] {
        let cache = CacheService::builder()
            .memory(1 << 20)
            .refresh_ahead(100.0)
            .build()
            .await
            .unwrap();
        let left = refresh_racing(&cache, race).await;
        let expected = matches!(race, Race::NewerSet).then(|| "v2".to_string());
        assert_eq!(left, expected, "embedded store, {race:?}");
    }
}

/// While one caller refreshes, every other caller, on this instance and another, gets the
/// current value at once; the loader runs once; the new value is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_caller_refreshes_the_others_get_the_current_value() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let a = redis_cache(&server, |b| b.refresh_ahead(100.0)).await;
    let b = redis_cache(&server, |b| b.refresh_ahead(100.0)).await;
    eager_refresher(&a).await;
    // `b` draws too: it learns the load time from a load of its own.
    b.get_or_load("other", None, || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, DbDown>(0)
    })
    .await
    .unwrap();
    let (refresh, go_on) = start_refresh(&a, Some("v2")).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for i in 0..64 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let loads = loads.clone();
        readers.push(tokio::spawn(async move {
            cache
                .get_or_load_with_status("users:1", Some(Duration::from_secs(2)), || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, DbDown>("v-other".to_string())
                })
                .await
                .unwrap()
        }));
    }
    for reader in readers {
        let fetched = within(LIMIT, "a reader during the refresh", reader)
            .await
            .unwrap();
        assert_eq!((fetched.value.as_str(), fetched.from_cache), ("v1", true));
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        0,
        "only the claim's holder loads"
    );
    go_on.notify_one();
    let refreshed = within(LIMIT, "the refresh", refresh)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (refreshed.value.as_str(), refreshed.from_cache),
        ("v2", false)
    );
    assert_eq!(a.stats().refreshes, 1);
    assert_eq!(b.get::<String>("users:1").await.as_deref(), Some("v2"));
    let pttl = raw::pttl(&mut server.connection().await, "fresh:users:1").await;
    assert!(pttl > 1_000, "written back with a whole TTL: {pttl} ms");
}

/// A refresh whose loader fails leaves the current value, and its caller gets it.
#[tokio::test]
async fn a_failed_refresh_serves_the_current_value() {
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| b.refresh_ahead(100.0)).await;
    eager_refresher(&cache).await;
    let (refresh, go_on) = start_refresh(&cache, None).await;
    go_on.notify_one();
    let fetched = within(LIMIT, "the refresh", refresh)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (fetched.value.as_str(), fetched.from_cache, fetched.stale),
        ("v1", true, false)
    );
    assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("v1"));
    // The claim was given back: the next draw refreshes.
    let (refresh, go_on) = start_refresh(&cache, Some("v2")).await;
    go_on.notify_one();
    assert_eq!(
        within(LIMIT, "the refresh", refresh)
            .await
            .unwrap()
            .unwrap()
            .value,
        "v2"
    );
}

/// The database fails for 10 s; keys cached before (TTL 1 s, grace 60 s) are served past their
/// TTL, flagged stale, and callers see no error. Once it is back, values are fresh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_served_from_stale_values_within_the_grace_period() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let a = redis_cache(&server, |b| b.stale_if_error(Duration::from_secs(60))).await;
    let b = redis_cache(&server, |b| b.stale_if_error(Duration::from_secs(60))).await;
    let down = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicU64::new(1));
    let ttl = Some(Duration::from_secs(1));
    let read = {
        let (down, version) = (down.clone(), version.clone());
        move |cache: CacheService, id: u32| {
            let (down, version) = (down.clone(), version.clone());
            async move {
                cache
                    .get_or_load_with_status(&format!("users:{id}"), ttl, || async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if down.load(Ordering::SeqCst) {
                            Err(DbDown)
                        } else {
                            Ok(format!("user {id} v{}", version.load(Ordering::SeqCst)))
                        }
                    })
                    .await
            }
        }
    };
    for id in 0..20 {
        read(a.clone(), id).await.unwrap();
    }
    down.store(true, Ordering::SeqCst);
    version.store(2, Ordering::SeqCst);
    let outage = Duration::from_secs(10);
    let until = Instant::now() + outage;
    let (errors, stale, fresh) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut readers = Vec::new();
    for task in 0..8u32 {
        let cache = if task % 2 == 0 { a.clone() } else { b.clone() };
        let (errors, stale, fresh, read) =
            (errors.clone(), stale.clone(), fresh.clone(), read.clone());
        readers.push(tokio::spawn(async move {
            let mut id = task;
            while Instant::now() < until {
                match read(cache.clone(), id % 20).await {
                    Err(DbDown) => errors.fetch_add(1, Ordering::SeqCst),
                    Ok(fetched) if fetched.stale => {
                        assert_eq!(fetched.value, format!("user {} v1", id % 20));
                        stale.fetch_add(1, Ordering::SeqCst)
                    }
                    Ok(_) => fresh.fetch_add(1, Ordering::SeqCst),
                };
                id += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
    let (errors, stale, fresh) = (
        errors.load(Ordering::SeqCst),
        stale.load(Ordering::SeqCst),
        fresh.load(Ordering::SeqCst),
    );
    let served = a.stats().stale_served + b.stats().stale_served;
    println!(
        "outage of {outage:?}, grace 60 s, TTL 1 s: {errors} errors, {stale} stale values served \
         ({served} counted), {fresh} values within their TTL"
    );
    assert_eq!(errors, 0, "no caller saw the outage");
    assert!(
        stale > 0 && served == stale,
        "{stale} stale, {served} counted"
    );

    down.store(false, Ordering::SeqCst);
    let after = read(a.clone(), 3).await.unwrap();
    assert_eq!(
        (after.value.as_str(), after.stale, after.from_cache),
        ("user 3 v2", false, false)
    );
    assert_eq!(read(b.clone(), 3).await.unwrap().value, "user 3 v2");
    let pttl = raw::pttl(&mut server.connection().await, "fresh:users:3").await;
    assert!(
        pttl > 60_000,
        "stored for the TTL plus the grace period: {pttl} ms"
    );
}

/// A value past its TTL that an invalidation removed, before the loader ran or while it ran,
/// is never served as stale: the loader's error is returned.
async fn invalidated_values_are_not_served_stale(cache: &CacheService) {
    let ttl = Some(Duration::from_millis(300));
    let fill = |v: &'static str| {
        cache.get_or_load("users:1", ttl, move || async move {
            Ok::<_, DbDown>(v.to_string())
        })
    };
    let fail = || async { Err::<String, _>(DbDown) };
    // Past its TTL, not invalidated: served stale.
    fill("v1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stale = cache
        .get_or_load_with_status("users:1", ttl, fail)
        .await
        .unwrap();
    assert_eq!((stale.value.as_str(), stale.stale), ("v1", true));
    assert_eq!(
        cache.get::<String>("users:1").await,
        None,
        "`get` does not serve it"
    );
    // Removed before the loader ran.
    cache.delete("users:1").await;
    assert!(
        cache
            .get_or_load_with_status("users:1", ttl, fail)
            .await
            .is_err()
    );
    // Removed while the loader ran.
    fill("v2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (entered, go_on) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let reader = {
        let (cache, entered, go_on) = (cache.clone(), entered.clone(), go_on.clone());
        tokio::spawn(async move {
            cache
                .get_or_load_with_status("users:1", ttl, || async move {
                    entered.notify_one();
                    go_on.notified().await;
                    Err::<String, _>(DbDown)
                })
                .await
        })
    };
    within(LIMIT, "the loader", entered.notified()).await;
    assert_eq!(cache.invalidate_pattern("users:*").await, 1);
    go_on.notify_one();
    let result = within(LIMIT, "the read", reader).await.unwrap();
    assert!(
        result.is_err(),
        "not served after the invalidation: {result:?}"
    );
    assert_eq!(cache.stats().stale_served, 1);
}

#[tokio::test]
async fn a_value_an_invalidation_removed_is_never_served_stale() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let grace = Duration::from_secs(60);
    invalidated_values_are_not_served_stale(
        &redis_cache(&server, |b| b.stale_if_error(grace)).await,
    )
    .await;
    let memory = CacheService::builder()
        .memory(1 << 20)
        .stale_if_error(grace)
        .build()
        .await
        .unwrap();
    invalidated_values_are_not_served_stale(&memory).await;
}

static PROFILE_DB_DOWN: AtomicBool = AtomicBool::new(false);
static PROFILE_LOADS: AtomicUsize = AtomicUsize::new(0);

/// `#[cached(..., grace = N)]` and `refresh_ahead`: per function, on a service without either.
#[cached(cache = cache, ttl = 1, key = "profiles:{id}", grace = 60, refresh_ahead = 2.0, status)]
async fn profile(cache: &CacheService, id: u32) -> Result<String, DbDown> {
    let _ = cache;
    PROFILE_LOADS.fetch_add(1, Ordering::SeqCst);
    if PROFILE_DB_DOWN.load(Ordering::SeqCst) {
        Err(DbDown)
    } else {
        Ok(format!("profile {id}"))
    }
}

#[tokio::test]
async fn the_macro_takes_a_grace_period_and_refresh_ahead_per_function() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| b).await;
    assert_eq!(profile(&cache, 7).await.unwrap(), "profile 7");
    let pttl = raw::pttl(&mut server.connection().await, "fresh:profiles:7").await;
    assert!(
        pttl > 60_000,
        "stored for the TTL plus the grace period: {pttl} ms"
    );
    PROFILE_DB_DOWN.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let stale = profile_with_status(&cache, 7).await.unwrap();
    assert_eq!((stale.value.as_str(), stale.stale), ("profile 7", true));
    PROFILE_DB_DOWN.store(false, Ordering::SeqCst);
    let fresh = profile_with_status(&cache, 7).await.unwrap();
    assert_eq!((fresh.stale, fresh.from_cache), (false, false));
    assert_eq!(
        cache.stats().refreshes,
        1,
        "reloaded under the claim and written back"
    );
}

/// `get_or_refresh`: the caller that draws gets the current value at once; the refresh runs in
/// a task of its own, and one racing an invalidation is not written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_returns_at_once_and_never_outlives_an_invalidation() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| b.refresh_ahead(100.0)).await;
    eager_refresher(&cache).await;
    let (entered, go_on) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let drawn = Arc::new(AtomicBool::new(false));
    let ttl = Some(Duration::from_secs(2));
    within(LIMIT, "a read drawing a refresh", async {
        while !drawn.load(Ordering::SeqCst) {
            let (entered, go_on, drawn) = (entered.clone(), go_on.clone(), drawn.clone());
            let value = cache
                .get_or_refresh("users:1", ttl, move || async move {
                    drawn.store(true, Ordering::SeqCst);
                    entered.notify_one();
                    go_on.notified().await;
                    Ok::<_, DbDown>("v1-reloaded-before-the-delete".to_string())
                })
                .await
                .unwrap();
            assert_eq!(
                value, "v1",
                "the caller gets the current value, drawn or not"
            );
        }
    })
    .await;
    within(LIMIT, "the background loader", entered.notified()).await;
    assert!(cache.delete("users:1").await);
    go_on.notify_one();
    within(LIMIT, "the refresh refused", async {
        while cache.stats().stale_sets_prevented == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(cache.get::<String>("users:1").await, None);
    assert_eq!(cache.stats().refreshes, 0);
}

/// The in-process tier holds a value no longer than its TTL: past it, within the grace period,
/// the read goes to the store and the loader, and the value is served only as stale.
#[tokio::test]
async fn the_tier_never_serves_into_the_grace_period() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| {
        b.local_tier(Duration::from_secs(60))
            .stale_if_error(Duration::from_secs(60))
    })
    .await;
    let ttl = Some(Duration::from_millis(500));
    let load = || async { Ok::<_, DbDown>("v1".to_string()) };
    // The tier serves once its tracking connection is up.
    within(LIMIT, "a tier hit", async {
        while cache.stats().local_hits == 0 {
            cache.delete("users:1").await;
            for _ in 0..3 {
                cache.get_or_load("users:1", ttl, load).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let past = cache
        .get_or_load_with_status("users:1", ttl, || async { Err::<String, _>(DbDown) })
        .await
        .unwrap();
    assert_eq!((past.value.as_str(), past.stale), ("v1", true), "{past:?}");
}

/// With leases off, a loaded value is written for its TTL plus the grace period, once.
#[tokio::test]
async fn without_leases_the_grace_period_is_added_once() {
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| {
        b.leases(false).stale_if_error(Duration::from_secs(60))
    })
    .await;
    let ttl = Some(Duration::from_secs(10));
    cache
        .get_or_load("users:1", ttl, || async { Ok::<_, DbDown>(1u8) })
        .await
        .unwrap();
    cache.set("users:2", &2u8, ttl).await;
    let mut conn = server.connection().await;
    for key in ["fresh:users:1", "fresh:users:2"] {
        let pttl = raw::pttl(&mut conn, key).await;
        assert!((60_000..=70_000).contains(&pttl), "{key}: {pttl} ms");
    }
}

/// A read the server refuses (here `PEXPIRETIME` left out of an ACL user's commands, as on a
/// server before Redis 7.0) goes to the loader: never a lease that would hand back a value
/// past its TTL as a hit.
#[tokio::test]
async fn a_refused_read_goes_to_the_loader_not_to_a_value_past_its_ttl() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let grace = Duration::from_secs(60);
    let writer = redis_cache(&server, |b| b.stale_if_error(grace)).await;
    let ttl = Some(Duration::from_millis(100));
    writer.set("users:1", &"old", ttl).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admin = server.connection().await;
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg("app").arg("on").arg(">pw");
    for rule in cachekit::acl_rules("fresh") {
        if rule != "+pexpiretime" {
            setuser.arg(rule);
        }
    }
    let () = setuser.query_async(&mut admin).await.unwrap();
    let restricted = CacheService::builder()
        .redis_url(format!("redis://app:pw@{}", server.addr()))
        .prefix("fresh")
        .stale_if_error(grace)
        .build()
        .await
        .unwrap();
    let fetched = restricted
        .get_or_load_with_status("users:1", ttl, || async {
            Ok::<_, DbDown>("new".to_string())
        })
        .await
        .unwrap();
    assert_eq!((fetched.value.as_str(), fetched.from_cache), ("new", false));
}

/// A user-supplied store that reports no TTLs: refresh-ahead and grace periods are off, and
/// values live for their TTL, not their TTL plus the grace period.
#[derive(Debug, Default)]
struct NoTtls(cachekit::backend::MemoryBackend);

#[async_trait::async_trait]
impl cachekit::Backend for NoTtls {
    fn kind(&self) -> cachekit::BackendKind {
        cachekit::BackendKind::Custom
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, cachekit::CacheError> {
        self.0.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), cachekit::CacheError> {
        self.0.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, cachekit::CacheError> {
        self.0.delete(key).await
    }
    async fn delete_matching(&self, pattern: &str) -> Result<u64, cachekit::CacheError> {
        self.0.delete_matching(pattern).await
    }
    async fn ping(&self) -> Result<(), cachekit::CacheError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_store_without_ttls_keeps_values_for_their_ttl_only() {
    let cache = CacheService::builder()
        .backend(NoTtls::default())
        .stale_if_error(Duration::from_secs(60))
        .refresh_ahead(1.0)
        .build()
        .await
        .unwrap();
    let ttl = Some(Duration::from_millis(100));
    cache.set("users:1", &1u8, ttl).await;
    cache
        .get_or_load("users:2", ttl, || async { Ok::<_, DbDown>(2u8) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.get::<u8>("users:1").await, None);
    assert_eq!(cache.get::<u8>("users:2").await, None);
    let failed = cache
        .get_or_load("users:2", ttl, || async { Err::<u8, _>(DbDown) })
        .await;
    assert!(failed.is_err(), "nothing past its TTL to serve");
}

/// A caller that finds a value past its TTL while another reloads it waits for that value, and
/// counts one miss, not one per look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_for_another_callers_reload_counts_one_miss() {
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| b.stale_if_error(Duration::from_secs(60))).await;
    let ttl = Some(Duration::from_millis(100));
    cache.set("users:1", &"v1", ttl).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let misses = cache.stats().misses;
    let (entered, go_on) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let reloader = {
        let (cache, entered, go_on) = (cache.clone(), entered.clone(), go_on.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("users:1", ttl, || async move {
                    entered.notify_one();
                    go_on.notified().await;
                    Ok::<_, DbDown>("v2".to_string())
                })
                .await
        })
    };
    within(LIMIT, "the reload", entered.notified()).await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("users:1", ttl, || async {
                    Ok::<_, DbDown>("v-waiter".to_string())
                })
                .await
        })
    };
    // The waiter read the value past its TTL (its one miss) and waits for the reload.
    within(LIMIT, "the waiter's read", async {
        while cache.stats().misses - misses < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await; // it polls meanwhile
    go_on.notify_one();
    assert_eq!(
        within(LIMIT, "the reload", reloader)
            .await
            .unwrap()
            .unwrap(),
        "v2"
    );
    assert_eq!(
        within(LIMIT, "the waiter", waiter).await.unwrap().unwrap(),
        "v2"
    );
    assert_eq!(cache.stats().misses - misses, 2, "{:?}", cache.stats());
}

/// A refresh's write is refused when the key was rewritten with other bytes that end at the
/// same millisecond (a `SET ... PXAT` of the expiry read): the version alone would not tell.
#[tokio::test]
async fn a_refresh_is_refused_over_other_bytes_at_the_same_expiry() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = redis_cache(&server, |b| b.refresh_ahead(100.0)).await;
    eager_refresher(&cache).await;
    let (refresh, go_on) = start_refresh(&cache, Some("v1-reloaded")).await;
    let mut conn = server.connection().await;
    let expiry: i64 = redis::cmd("PEXPIRETIME")
        .arg("fresh:users:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg("fresh:users:1")
        .arg("\"written by another client\"")
        .arg("PXAT")
        .arg(expiry)
        .query_async(&mut conn)
        .await
        .unwrap();
    go_on.notify_one();
    within(LIMIT, "the refresh", refresh)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cache.stats().stale_sets_prevented, 1);
    let raw: Option<String> = raw::get(&mut conn, "fresh:users:1").await;
    assert_eq!(raw.as_deref(), Some("\"written by another client\""));
}
