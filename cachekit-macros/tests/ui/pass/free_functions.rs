// Free functions: the service from `cache = <expr>`, or the process-wide default.
#![deny(warnings)]

use cachekit::{CacheService, cached, invalidates};
use std::sync::{Arc, LazyLock, OnceLock};

static LAZY: LazyLock<CacheService> = LazyLock::new(CacheService::memory);
static ONCE: OnceLock<CacheService> = OnceLock::new();

fn make() -> CacheService {
    CacheService::memory()
}

#[cached(key = "global:{id}")]
async fn from_global(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "lazy:{id}", cache = *LAZY)]
async fn from_lazy(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "once:{id}", cache = ONCE.get_or_init(CacheService::memory))]
async fn from_once(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "temporary:{id}", cache = make())]
async fn from_a_temporary(id: u64) -> Option<u64> {
    Some(id)
}

// A parameter used by `cache` is the service, not part of the key.
#[cached(key = "param", cache = cache)]
async fn from_a_parameter(cache: &CacheService, id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "arc", cache = cache)]
async fn from_an_arc(cache: Arc<CacheService>, id: u64) -> Option<u64> {
    Some(id)
}

#[invalidates("global:{id}", "lazy:*", cache = *LAZY)]
async fn invalidate(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

#[invalidates("global:{id}")]
async fn invalidate_global(id: u64) {
    let _ = id;
}

async fn use_them() {
    let _ = from_global(1).await;
    let _ = from_lazy(1).await;
    let _ = from_once(1).await;
    let _ = from_a_temporary(1).await;
    let _ = from_a_parameter(&CacheService::memory(), 1).await;
    let _ = from_an_arc(Arc::new(CacheService::memory()), 1).await;
    let _ = invalidate(1).await;
    invalidate_global(1).await;
}

fn main() {
    let _ = use_them;
}
