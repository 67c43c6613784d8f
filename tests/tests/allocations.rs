//! Heap allocations per hit, counted by dhat's allocator, so that a change that adds some to the
//! hit path shows here. Counts, not timings: each read is done many times and the average taken,
//! on a current-thread runtime (the connection's driver task included).
//!
//! ```bash
//! cargo test -p cachekit-tests --test allocations -- --nocapture
//! ```

use cachekit::CacheService;
use cachekit_tests::RedisServer;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CALLS: u64 = 2_000;
const KEY: &str = "users:1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
}

fn user() -> User {
    User {
        id: 1,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        roles: vec!["admin".into(), "editor".into()],
    }
}

/// Average heap allocations of one run of `$call` (an expression awaited in place), over
/// [`CALLS`] runs after as many warm-up runs.
macro_rules! per_call {
    ($call:expr) => {{
        for _ in 0..CALLS {
            $call;
        }
        let before = dhat::HeapStats::get().total_blocks;
        for _ in 0..CALLS {
            $call;
        }
        (dhat::HeapStats::get().total_blocks - before) as f64 / CALLS as f64
    }};
}

#[test]
fn allocations_per_hit() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = CacheService::builder()
            .redis_url(server.url())
            .prefix("alloc")
            .build()
            .await
            .unwrap();
        let tiered = CacheService::builder()
            .redis_url(server.url())
            .prefix("alloc")
            .local_tier(Duration::from_secs(600))
            .build()
            .await
            .unwrap();
        let memory = CacheService::memory();
        assert!(redis.set(KEY, &user(), None).await);
        assert!(memory.set(KEY, &user(), None).await);
        let mut raw = server.connection().await;
        // The tier's channel comes up in the background; it serves once it has.
        while tiered.stats().local_hits == 0 {
            assert!(tiered.get::<Arc<User>>(KEY).await.is_some());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let raw_hit = per_call!({
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg("alloc:users:1")
                .query_async(&mut raw)
                .await
                .unwrap();
            let user: User = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(user.id, 1);
        });
        let redis_hit = per_call!(assert_eq!(
            redis.get::<User>(KEY).await.map(|u| u.id),
            Some(1)
        ));
        let memory_hit = per_call!(assert_eq!(
            memory.get::<User>(KEY).await.map(|u| u.id),
            Some(1)
        ));
        let tier_hit = per_call!(assert_eq!(
            tiered.get::<Arc<User>>(KEY).await.map(|u| u.id),
            Some(1)
        ));
        let json = serde_json::to_vec(&user()).unwrap();
        let decode_only = per_call!(assert_eq!(
            serde_json::from_slice::<User>(&json).unwrap().id,
            1
        ));
        eprintln!(
            "allocations per hit: raw redis-rs GET + serde_json {raw_hit:.2}, cachekit on Redis \
             {redis_hit:.2}, embedded store {memory_hit:.2}, in-process tier (Arc) {tier_hit:.2}; \
             decoding alone {decode_only:.2}"
        );
        assert_eq!(
            tiered.stats().hits,
            1,
            "every read after the first was served by the tier"
        );
        // The budgets: what each path allocated when this test was written (rounded up by
        // half an allocation for moka's and the driver's occasional housekeeping). Lower them
        // when a change saves some; a change that needs more must say why here.
        assert!(
            tier_hit < 0.5,
            "an in-process tier hit allocates: {tier_hit}"
        );
        assert!(
            memory_hit <= decode_only + MEMORY_OVER_DECODE,
            "an embedded store hit allocates {memory_hit} (decoding alone {decode_only})"
        );
        assert!(
            redis_hit <= raw_hit + REDIS_OVER_RAW,
            "a Redis hit allocates {redis_hit}, raw redis-rs {raw_hit}"
        );
    });
}

/// What cachekit's Redis hit may allocate beyond raw redis-rs's `GET` and decode: none
/// measured (its prefixed key, shared with the read's flight, is offset by a command buffer
/// sized up front; the built-in backend's read is not a boxed future).
const REDIS_OVER_RAW: f64 = 0.5;

/// What an embedded store hit may allocate beyond decoding: 3 measured (the prefixed key, the
/// boxed backend future, the copy of the stored bytes).
const MEMORY_OVER_DECODE: f64 = 3.5;
