//! The quickstart: a repository cached with cachekit, showing a miss, a hit, an invalidation
//! and the statistics.
//!
//! With no configuration it runs on the embedded in-process store; with `REDIS_URL` set
//! (e.g. `REDIS_URL=redis://127.0.0.1:6379 bash scripts/quickstart.sh`) it uses Redis.

use cachekit::CacheService;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

/// A stand-in for a database table: each query takes 25 ms.
struct UserRepo {
    cache: CacheService,
}

impl UserRepo {
    async fn query_user(&self, id: u64) -> Result<User, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(25)).await;
        Ok(User {
            id,
            name: format!("user {id}"),
            email: format!("user{id}@example.com"),
        })
    }

    async fn get_user(&self, id: u64) -> Result<(User, bool), std::io::Error> {
        let fetched = self
            .cache
            .get_or_load_with_status(
                &format!("users:{id}"),
                Some(Duration::from_secs(300)),
                || self.query_user(id),
            )
            .await?;
        Ok((fetched.value, fetched.from_cache))
    }

    async fn rename_user(&self, id: u64, _name: &str) -> Result<(), std::io::Error> {
        // ... the UPDATE would run here; then the cached copies go.
        self.cache.invalidate_pattern("users:*").await;
        let _ = id;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let cache = CacheService::from_env().await;
    println!(
        "backend: {}  prefix: {}",
        cache.stats().backend,
        cache.prefix()
    );
    let repo = UserRepo {
        cache: cache.clone(),
    };
    cache.clear_all().await;

    for label in ["first read", "second read"] {
        let started = Instant::now();
        let (user, from_cache) = repo.get_user(1).await?;
        println!(
            "{label:<12} {:<9} {:>9.3} ms  {user:?}",
            if from_cache { "(hit)" } else { "(miss)" },
            started.elapsed().as_secs_f64() * 1000.0
        );
    }

    repo.rename_user(1, "Ada").await?;
    println!("renamed user 1: users:* invalidated");
    let started = Instant::now();
    let (_, from_cache) = repo.get_user(1).await?;
    println!(
        "{:<12} {:<9} {:>9.3} ms",
        "after write",
        if from_cache { "(hit)" } else { "(miss)" },
        started.elapsed().as_secs_f64() * 1000.0
    );

    let stats = cache.stats();
    println!(
        "stats: hits={} misses={} hit_rate={:.2} sets={} invalidations={} errors={} breaker={}",
        stats.hits,
        stats.misses,
        stats.hit_rate(),
        stats.sets,
        stats.invalidations,
        stats.errors,
        stats.breaker
    );
    let health = cache.health().await;
    println!(
        "health: connected={} latency={:?}",
        health.connected,
        health.latency()
    );
    Ok(())
}
