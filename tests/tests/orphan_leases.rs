//! Orphaned leases: every way a lease marker can be left in a key by a loader that will never
//! fill it, and the promise that it does not wedge the key.
//!
//! In each test a first service (through a [`FaultProxy`], 250 ms operation timeout) leaves, or
//! may leave, a marker behind (in the last, a foreign program leaves one with no expiry); then a
//! second service, connected directly and with a 30 s lease TTL, misses the same key. It must
//! load *and store* its value well before that TTL: its `get_or_load` returns its own value
//! within [`BOUND`], and the key then holds that value. The second check matters: a waiter that
//! gives up after its lease TTL loads without writing, so only a stored value proves the second
//! service took the lease rather than waited it out.
//!
//! Both services use a 30 s lease TTL, so a marker left by the first outlives the bound by far.

use std::convert::Infallible;
use std::time::Duration;

use cachekit::CacheService;
use cachekit_tests::proxy::Hold;
use cachekit_tests::{FaultProxy, RedisServer, raw, within};

/// How long the second service may take to load and store. Far below the lease TTL.
const BOUND: Duration = Duration::from_secs(5);
const LEASE_TTL: Duration = Duration::from_secs(30);
const OP_TIMEOUT: Duration = Duration::from_millis(250);
const PREFIX: &str = "faults";
/// What every lease marker starts with (`cachekit::backend::is_lease_marker`).
const LEASE_MARKER: &[u8] = b"\0cachekit-lease:";
const FIRST_VALUE: &str = "first-loaded";
const SECOND_VALUE: &str = "second-loaded";

fn physical(key: &str) -> String {
    format!("{PREFIX}:{key}")
}

/// The service that orphans the lease: on `url` (a proxy's), with a 250 ms operation timeout.
async fn first_service(url: &str) -> CacheService {
    first_service_with_timeout(url, OP_TIMEOUT).await
}

/// The same with another operation timeout (the lease marker lives 1.5 times that long).
async fn first_service_with_timeout(url: &str, timeout: Duration) -> CacheService {
    CacheService::builder()
        .redis_url(url)
        .prefix(PREFIX)
        .timeout(timeout)
        .lease_ttl(LEASE_TTL)
        .build()
        .await
        .expect("first service builds")
}

/// The service that must not be wedged: connected directly.
async fn second_service(server: &RedisServer) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix(PREFIX)
        .lease_ttl(LEASE_TTL)
        .build()
        .await
        .expect("second service builds")
}

/// Loads `key` through `cache` with a loader that returns `value`.
async fn load(cache: &CacheService, key: &str, value: &str) -> String {
    let value = value.to_string();
    let Ok(loaded) = cache
        .get_or_load(key, None, || async { Ok::<_, Infallible>(value) })
        .await;
    loaded
}

/// What the key holds, and its PTTL, for failure messages.
async fn describe(server: &RedisServer, key: &str) -> String {
    let mut conn = server.connection().await;
    let bytes: Option<Vec<u8>> = raw::get(&mut conn, &physical(key)).await;
    let pttl = raw::pttl(&mut conn, &physical(key)).await;
    match bytes {
        Some(bytes) => format!(
            "{:?} (PTTL {pttl} ms)",
            String::from_utf8_lossy(&bytes).as_ref()
        ),
        None => "nothing".to_string(),
    }
}

/// Loads the lease and fill scripts into the server's script cache through `cache`, so that the
/// next lease request goes out as one `EVALSHA` (not `EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`,
/// `EVALSHA`, as redis-rs's `Script::invoke_async` does the first time).
async fn warm_up(cache: &CacheService) {
    let value = within(BOUND, "the warm-up load", load(cache, "warm-up", "warm")).await;
    assert_eq!(value, "warm");
    let stored = within(
        BOUND,
        "the warm-up read",
        cache.try_get::<String>("warm-up"),
    )
    .await
    .expect("the warm-up read");
    assert_eq!(
        stored.as_deref(),
        Some("warm"),
        "the warm-up value was not stored: the scripts may not be cached"
    );
}

/// Waits until the server has run every command `cache` sent so far: one more round trip on
/// its connection, which is answered in order, after them.
async fn drain(cache: &CacheService) {
    within(
        BOUND,
        "a read through the first service",
        cache.try_get::<String>("drain"),
    )
    .await
    .expect("the first service's connection answers again");
}

/// Waits for `hold` to end, then for the server to run the held request and anything the
/// first service queued behind it.
async fn after_release(hold: &Hold, first: &CacheService) {
    assert!(
        within(BOUND, "the end of the hold", hold.released()).await,
        "the held lease request was lost"
    );
    drain(first).await;
}

/// The property of every test: a second service misses `key`, loads its own value and stores
/// it, well before the lease TTL.
async fn second_service_loads_and_stores(server: &RedisServer, key: &str) {
    let before = describe(server, key).await;
    let second = second_service(server).await;
    let started = std::time::Instant::now();
    let Ok(value) = tokio::time::timeout(BOUND, load(&second, key, SECOND_VALUE)).await else {
        panic!(
            "the second service was still waiting after {BOUND:?} (lease TTL {LEASE_TTL:?}): \
             the key held {before} when it began, and holds {} now",
            describe(server, key).await
        );
    };
    eprintln!(
        "{key}: the second service loaded after {:?} (the key held {before} when it began)",
        started.elapsed()
    );
    assert_eq!(
        value, SECOND_VALUE,
        "the second service did not load: it was served {value:?}; the key held {before} \
         when it began"
    );
    let mut conn = server.connection().await;
    let stored: Option<Vec<u8>> = raw::get(&mut conn, &physical(key)).await;
    let expected = serde_json::to_vec(SECOND_VALUE).expect("a string encodes");
    assert!(
        stored.as_deref() == Some(expected.as_slice()),
        "the second service loaded but did not store its value (it gave up waiting instead of \
         taking the lease): the key held {before} when it began, and holds {} now",
        describe(server, key).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cancelled_while_its_lease_request_is_in_flight_does_not_wedge_the_key() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    // A long operation timeout, so the marker would outlive the test's bound (it lives 1.5
    // timeouts): only the cancelled leader's give-back can free the key in time.
    let first = first_service_with_timeout(&proxy.url(), 4 * BOUND).await;
    warm_up(&first).await;

    let hold = proxy.hold_next(b"EVALSHA", Duration::from_secs(1));
    let leader = {
        let first = first.clone();
        tokio::spawn(async move { load(&first, "k", FIRST_VALUE).await })
    };
    within(BOUND, "the lease request reaching the proxy", hold.held()).await;
    leader.abort();
    match within(BOUND, "the cancelled leader", leader).await {
        Err(error) => assert!(error.is_cancelled(), "the leader failed: {error}"),
        Ok(value) => panic!("the leader finished ({value:?}) before it was cancelled"),
    }
    // The lease request now runs on the server, for a caller that is gone.
    after_release(&hold, &first).await;

    second_service_loads_and_stores(&server, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_request_that_times_out_but_runs_on_the_server_does_not_wedge_the_key() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let first = first_service(&proxy.url()).await;
    warm_up(&first).await;

    // Held past the 250 ms timeout: the caller gives up on it, the server runs it later.
    let hold = proxy.hold_next(b"EVALSHA", Duration::from_millis(600));
    let value = within(
        BOUND,
        "the first service's load",
        load(&first, "k", FIRST_VALUE),
    )
    .await;
    assert_eq!(
        value, FIRST_VALUE,
        "the first call returns its loader's value"
    );
    assert!(hold.is_held(), "the lease request was never held");
    after_release(&hold, &first).await;

    second_service_loads_and_stores(&server, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_cut_off_does_not_wedge_the_key() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let first = first_service(&proxy.url()).await;

    let fill_value = "fill-me-7f3a";
    let tripwire = proxy.cut_on(fill_value.as_bytes());
    let value = within(
        BOUND,
        "the first service's load",
        load(&first, "k", fill_value),
    )
    .await;
    assert_eq!(
        value, fill_value,
        "the first call returns its loader's value"
    );
    assert!(
        tripwire.has_fired(),
        "the fill never went out: nothing was cut"
    );

    second_service_loads_and_stores(&server, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_shut_down_mid_load_does_not_wedge_the_key() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;

    // The first service lives and loads on a runtime of its own, in its own thread.
    let url = proxy.url();
    let (shut_down, shutdown_requested) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the first service");
        runtime.spawn(async move {
            let first = first_service(&url).await;
            // A loader that never finishes.
            let _ = first
                .get_or_load(
                    "k",
                    None,
                    std::future::pending::<Result<String, Infallible>>,
                )
                .await;
        });
        let _ = shutdown_requested.recv();
        runtime.shutdown_background();
    });

    let mut conn = server.connection().await;
    within(BOUND, "the first service's lease marker", async {
        loop {
            let bytes: Option<Vec<u8>> = raw::get(&mut conn, &physical("k")).await;
            if bytes.is_some_and(|bytes| bytes.starts_with(LEASE_MARKER)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    shut_down
        .send(())
        .expect("the first service's thread waits");
    tokio::task::block_in_place(|| thread.join()).expect("the first service's thread");

    second_service_loads_and_stores(&server, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_marker_without_ttl_does_not_wedge_the_key() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    raw::set(&mut conn, &physical("k"), b"\0cachekit-lease:foreign").await;
    assert_eq!(raw::pttl(&mut conn, &physical("k")).await, -1);

    second_service_loads_and_stores(&server, "k").await;
}
