//! Criterion benchmarks of cachekit's pieces that need no server.

use cachekit::CacheService;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn key_building(c: &mut Criterion) {
    c.bench_function("hash_args (two integers)", |b| {
        b.iter(|| cachekit::key::hash_args(black_box(&(0u32, 100u32))))
    });
}

fn memory_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = CacheService::memory();
    runtime.block_on(cache.set("users:1", &"a value of modest size", None));
    c.bench_function("memory store hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cache.get::<String>("users:1").await) })
    });
}

criterion_group!(benches, key_building, memory_hit);
criterion_main!(benches);
