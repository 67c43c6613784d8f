//! Criterion benchmarks of Redis hits: raw redis-rs (the baseline), `CacheService::get` and a
//! `#[cached]` method, all reading the same ~1 KB JSON user record from one Redis.
//!
//! Uses `REDIS_URL` if set, else starts a private `redis-server`.

use cachekit::CacheService;
use cachekit_benches::{PREFIX, User, UserRepo};
use cachekit_tests::RedisServer;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn redis_hit(c: &mut Criterion) {
    let server = std::env::var("REDIS_URL").is_err().then(RedisServer::start);
    let url = server
        .as_ref()
        .map_or_else(|| std::env::var("REDIS_URL").unwrap(), RedisServer::url);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cache, mut conn) = runtime.block_on(async {
        let cache = CacheService::builder()
            .redis_url(&url)
            .prefix(PREFIX)
            .build()
            .await
            .expect("cachekit builds");
        assert!(cache.set("users:1", &User::sample(1), None).await);
        let conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis-rs connects");
        (cache, conn)
    });
    let repo = UserRepo::new(cache.clone());

    let mut group = c.benchmark_group("redis hit (user record)");
    group.bench_function("redis-rs GET + serde_json (baseline)", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = conn.clone();
            async move {
                let key = format!("{PREFIX}:users:{}", black_box(1));
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                serde_json::from_slice::<User>(&bytes).unwrap()
            }
        })
    });
    group.bench_function("CacheService::get", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = format!("users:{}", black_box(1));
            cache.get::<User>(&key).await.unwrap()
        })
    });
    group.bench_function("#[cached]", |b| {
        b.to_async(&runtime)
            .iter(|| async { repo.get_user(black_box(1)).await.unwrap() })
    });
    group.finish();
    assert_eq!(repo.loads(), 0, "every #[cached] call was a hit");
    let _: () = runtime.block_on(async {
        redis::cmd("DEL")
            .arg(format!("{PREFIX}:users:1"))
            .exec_async(&mut conn)
            .await
            .unwrap()
    });
    drop(server);
}

criterion_group!(benches, redis_hit);
criterion_main!(benches);
