//! Criterion benchmarks of cachekit's pieces that need no server: key building, encoding and
//! decoding the ~1 KB user record, hits on the embedded store, and what cachekit adds around a
//! backend read.

use cachekit::backend::{Backend, BackendKind};
use cachekit::{CacheError, CacheService};
use cachekit_benches::{User, UserRepo};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

/// The keys `#[cached]` builds: `format!` of the template, and for unnamed arguments the
/// SHA-256 of their JSON appended (the code the macro generates, written out).
fn key_building(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    group.bench_function("template users:{id}", |b| {
        b.iter(|| format!("users:{}", black_box(12345u64)))
    });
    group.bench_function("hashed users:list:<sha256 of (skip, limit)>", |b| {
        b.iter(|| {
            let (skip, limit) = black_box((0u32, 100u32));
            format!("users:list:{}", cachekit::key::hash_args(&(&skip, &limit)))
        })
    });
    group.bench_function("hash_args alone (two integers)", |b| {
        b.iter(|| cachekit::key::hash_args(black_box(&(0u32, 100u32))))
    });
    group.finish();
}

/// serde_json on the record every benchmark caches.
fn codec(c: &mut Criterion) {
    let user = User::sample(1);
    let json = User::sample_json(1);
    let mut group = c.benchmark_group(format!("codec ({} B user record)", json.len()));
    group.bench_function("encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&user)).unwrap())
    });
    group.bench_function("decode", |b| {
        b.iter(|| serde_json::from_slice::<User>(black_box(&json)).unwrap())
    });
    group.finish();
}

/// Hits on the embedded store, through `CacheService::get` and through `#[cached]`.
fn embedded_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = CacheService::memory();
    let repo = UserRepo::new(cache.clone());
    runtime.block_on(async {
        assert!(cache.set("users:1", &User::sample(1), None).await);
        assert!(cache.set("small", &7u32, None).await);
        repo.get_user(1).await.unwrap();
    });
    let mut group = c.benchmark_group("embedded store hit");
    group.bench_function("CacheService::get (user record)", |b| {
        b.to_async(&runtime)
            .iter(|| async { cache.get::<User>(black_box("users:1")).await.unwrap() })
    });
    group.bench_function("#[cached] (user record)", |b| {
        b.to_async(&runtime)
            .iter(|| async { repo.get_user(black_box(1)).await.unwrap() })
    });
    group.bench_function("CacheService::get (u32)", |b| {
        b.to_async(&runtime)
            .iter(|| async { cache.get::<u32>(black_box("small")).await.unwrap() })
    });
    group.finish();
    assert_eq!(repo.loads(), 0, "every #[cached] call was a hit");
}

/// A store that answers every read with the user record after yielding once, as a network
/// read does (pending, then ready): the Redis path of cachekit with the network taken out.
#[derive(Debug)]
struct YieldingBackend {
    json: Vec<u8>,
}

#[async_trait::async_trait]
impl Backend for YieldingBackend {
    fn kind(&self) -> BackendKind {
        // Not the embedded store: calls go through the timeout and the breaker, as on Redis.
        BackendKind::Custom
    }
    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        tokio::task::yield_now().await;
        Ok(Some(self.json.clone()))
    }
    async fn set(&self, _key: &str, _value: &[u8], _ttl: Duration) -> Result<(), CacheError> {
        Ok(())
    }
    async fn delete(&self, _key: &str) -> Result<bool, CacheError> {
        Ok(false)
    }
    async fn delete_matching(&self, _pattern: &str) -> Result<u64, CacheError> {
        Ok(0)
    }
    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

/// cachekit's own cost on a Redis-style hit: the same read with and without it. The baseline
/// is what raw redis-rs code does after the network: take the bytes, decode them.
fn wrapper_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let json = User::sample_json(1);
    let cache = runtime.block_on(async {
        CacheService::builder()
            .backend(YieldingBackend { json: json.clone() })
            .build()
            .await
            .expect("builds")
    });
    let repo = UserRepo::new(cache.clone());
    let mut group = c.benchmark_group("read over a backend that yields once");
    group.bench_function("baseline: yield, copy, decode", |b| {
        b.to_async(&runtime).iter(|| async {
            tokio::task::yield_now().await;
            let bytes = black_box(&json).clone();
            serde_json::from_slice::<User>(&bytes).unwrap()
        })
    });
    group.bench_function("baseline + tokio::time::timeout", |b| {
        b.to_async(&runtime).iter(|| async {
            tokio::time::timeout(Duration::from_millis(250), async {
                tokio::task::yield_now().await;
                let bytes = black_box(&json).clone();
                serde_json::from_slice::<User>(&bytes).unwrap()
            })
            .await
            .unwrap()
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
}

criterion_group!(benches, key_building, codec, embedded_hit, wrapper_overhead);
criterion_main!(benches);
