//! `CacheService::warm_up`: every item loaded through the cache, at most the given number at
//! once, in the background; failures and panics counted; progress logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cachekit::CacheService;
use cachekit_tests::logs::Captured;
use cachekit_tests::{RedisServer, raw};

#[tokio::test]
async fn every_item_is_loaded_through_the_cache_a_bounded_number_at_a_time() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("warm")
        .build()
        .await
        .unwrap();
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let warming = {
        let (cache, in_flight, most) = (cache.clone(), in_flight.clone(), most.clone());
        cache.clone().warm_up(0..200u32, 4, move |id| {
            let (cache, in_flight, most) = (cache.clone(), in_flight.clone(), most.clone());
            async move {
                cache
                    .get_or_load(&format!("users:{id}"), None, || async move {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(id)
                    })
                    .await
            }
        })
    };
    let report = warming.finished().await;
    assert_eq!((report.loaded, report.failed), (200, 0));
    assert_eq!(
        most.load(Ordering::SeqCst),
        4,
        "at most 4 loads at once, and 4 used"
    );
    let mut conn = server.connection().await;
    for id in [0, 99, 199] {
        assert!(raw::exists(&mut conn, &format!("warm:users:{id}")).await);
        assert_eq!(cache.get::<u32>(&format!("users:{id}")).await, Some(id));
    }
}

#[tokio::test]
async fn start_up_goes_on_and_failures_and_panics_are_counted_and_logged() {
    let logs = Captured::default();
    let _subscriber = logs.install();
    let cache = CacheService::memory();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let warming = {
        let (cache, gate) = (cache.clone(), gate.clone());
        cache.clone().warm_up(0..10u32, 3, move |id| {
            let (cache, gate) = (cache.clone(), gate.clone());
            async move {
                let _open = gate.acquire().await;
                assert_ne!(id, 7, "a loader that panics");
                cache
                    .get_or_load(&format!("k:{id}"), None, || async move {
                        if id % 2 == 1 {
                            Err(format!("item {id} is not in the database"))
                        } else {
                            Ok(id)
                        }
                    })
                    .await
            }
        })
    };
    // Nothing could load yet, and the caller was not held up.
    tokio::task::yield_now().await;
    assert!(!warming.is_finished());
    assert_eq!(cache.get::<u32>("k:0").await, None);
    gate.add_permits(10);
    let report = warming.finished().await;
    assert_eq!((report.loaded, report.failed), (5, 5));
    assert_eq!(cache.get::<u32>("k:4").await, Some(4));
    assert_eq!(cache.get::<u32>("k:3").await, None);

    let text = logs.text();
    assert!(text.contains("warm-up started"), "{text}");
    assert!(text.contains("warm-up finished"), "{text}");
    assert!(
        text.contains("loaded=5") && text.contains("failed=5"),
        "{text}"
    );
    assert!(text.contains("is not in the database"), "{text}");
    // Only the first three failures are logged one by one.
    assert_eq!(text.matches("warm-up: an item").count(), 3, "{text}");
}
