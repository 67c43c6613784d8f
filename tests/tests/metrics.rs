//! The metrics a service reports through the `metrics` facade when `metrics(true)` is on, read
//! back from a recording recorder: every counter moves with what the service did, labelled by
//! namespace (never the key), faults by kind, the breaker's state as a gauge.
//!
//! One test in this binary: the recorder is global to the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachekit::CacheService;
use cachekit::metrics::names;
use cachekit_tests::{RedisServer, within};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct DbDown;

/// Label names and values, sorted.
type Labels = Vec<(String, String)>;

/// What the recorder holds: `(kind, name, labels)` and the value.
struct Recorded(Vec<(MetricKind, String, Labels, DebugValue)>);

impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let (kind, key) = key.into_parts();
                    let mut labels: Labels = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    (kind, key.name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut wanted: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        self.0
            .iter()
            .find(|(_, n, l, _)| n == name && *l == wanted)
            .map(|(_, _, _, value)| value)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    fn histogram_len(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.find(name, labels) {
            Some(DebugValue::Histogram(samples)) => samples.len(),
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.find(name, &[]) {
            Some(DebugValue::Gauge(value)) => value.into_inner(),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_with_what_the_service_did() {
    cachekit_tests::init_tracing();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("m")
        .metrics(true)
        .stale_if_error(Duration::from_secs(60))
        .timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let ok = |v: u32| async move { Ok::<_, DbDown>(v) };

    // A miss and its load, then a hit; a load that fails.
    assert_eq!(
        cache.get_or_load("users:1", None, || ok(1)).await.unwrap(),
        1
    );
    assert_eq!(
        cache.get_or_load("users:1", None, || ok(9)).await.unwrap(),
        1
    );
    assert!(
        cache
            .get_or_load("users:2", None, || async { Err::<u32, _>(DbDown) })
            .await
            .is_err()
    );
    // Concurrent misses of one key: one load, the others coalesced.
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, loads) = (cache.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("hot:1", None, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, DbDown>(5u32)
                })
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 5);
    }
    // A load racing an invalidation: its value is not written.
    let (entered, go_on) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let racing = {
        let (cache, entered, go_on) = (cache.clone(), entered.clone(), go_on.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("orders:1", None, || async move {
                    entered.notify_one();
                    go_on.notified().await;
                    Ok::<_, DbDown>(1u32)
                })
                .await
        })
    };
    within(LIMIT, "the load", entered.notified()).await;
    cache.delete("orders:1").await;
    go_on.notify_one();
    racing.await.unwrap().unwrap();
    // Past its TTL with the loader failing: served stale.
    let short = Some(Duration::from_millis(100));
    cache
        .get_or_load("profiles:1", short, || ok(3))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stale = cache
        .get_or_load_with_status("profiles:1", short, || async { Err::<u32, _>(DbDown) })
        .await
        .unwrap();
    assert!(stale.stale);
    // Invalidations: two entries of `users` by pattern, one of `roles` by key.
    cache.set("users:3", &3u32, None).await;
    cache.set("roles:1", &1u32, None).await;
    assert_eq!(cache.invalidate_pattern("users:*").await, 2);
    assert!(cache.delete("roles:1").await);

    // The server stops answering: timeouts, then the open breaker.
    server.pause();
    for _ in 0..6 {
        let _ = cache.get::<u32>("users:1").await;
    }
    let recorded = Recorded::take(&snapshotter);
    server.resume();

    let users = [("namespace", "users")];
    assert_eq!(
        recorded.counter(names::HITS, &[("namespace", "users"), ("tier", "store")]),
        1
    );
    assert_eq!(recorded.counter(names::LOADS, &users), 2);
    assert_eq!(recorded.counter(names::LOAD_ERRORS, &users), 1);
    assert_eq!(recorded.histogram_len(names::LOAD_DURATION, &users), 2);
    assert!(recorded.counter(names::MISSES, &users) >= 2);
    assert_eq!(recorded.counter(names::INVALIDATED, &users), 2);
    assert_eq!(
        recorded.counter(names::INVALIDATED, &[("namespace", "roles")]),
        1
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(recorded.counter(names::LOADS, &[("namespace", "hot")]), 1);
    assert!(recorded.counter(names::COALESCED, &[("namespace", "hot")]) >= 1);
    assert_eq!(
        recorded.counter(names::STALE_SETS_PREVENTED, &[("namespace", "orders")]),
        1
    );
    assert_eq!(
        recorded.counter(names::STALE_SERVED, &[("namespace", "profiles")]),
        1
    );
    assert!(recorded.counter(names::FAULTS, &[("kind", "timeout")]) >= 1);
    assert!(recorded.histogram_len(names::OPERATION_DURATION, &[("op", "get")]) >= 1);
    assert_eq!(
        recorded.gauge(names::BREAKER_STATE),
        2.0,
        "open after the timeouts"
    );
    // No label carries a key.
    for (_, name, labels, _) in &recorded.0 {
        for (label, value) in labels {
            assert!(!value.contains(':'), "{name} {label}={value}");
        }
    }
}
