//! The quickstart: a repository annotated with `#[cached]` and `#[invalidates]`, showing a
//! miss, a hit, an invalidation and the statistics.
//!
//! With no configuration it runs on the embedded in-process store; with `REDIS_URL` set
//! (e.g. `REDIS_URL=redis://127.0.0.1:6379 bash scripts/quickstart.sh`) it uses Redis.

use cachekit::{CacheService, HasCache, cached, invalidates};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug)]
struct NotFound;

/// A stand-in for a database table: each query takes 25 ms.
struct UserRepo {
    cache: CacheService,
    table: Mutex<HashMap<u64, String>>,
}

impl HasCache for UserRepo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl UserRepo {
    #[cached(ttl = 300, key = "users:{id}", status)]
    async fn get_user(&self, id: u64) -> Result<User, NotFound> {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let name = table.get(&id).cloned().ok_or(NotFound)?;
        Ok(User { id, name })
    }

    #[invalidates("users:{id}")]
    async fn rename_user(&self, id: u64, name: &str) -> Result<(), NotFound> {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let row = table.get_mut(&id).ok_or(NotFound)?;
        *row = name.to_owned();
        Ok(())
    }
}

async fn timed_read(repo: &UserRepo, label: &str) -> Result<(), NotFound> {
    let started = Instant::now();
    let fetched = repo.get_user_with_status(1).await?;
    println!(
        "{label:<13} {:<7} {:>8.3} ms  {:?}",
        if fetched.from_cache { "hit" } else { "miss" },
        started.elapsed().as_secs_f64() * 1000.0,
        fetched.value
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only on a terminal: a pipe or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let cache = CacheService::from_env().await;
    println!(
        "backend: {}, prefix: {}",
        cache.stats().backend,
        cache.prefix()
    );
    cache.delete("users:1").await; // start from a cold key
    let repo = UserRepo {
        cache: cache.clone(),
        table: Mutex::new(HashMap::from([(1, "Ada".to_owned())])),
    };

    timed_read(&repo, "first read")
        .await
        .map_err(|_| "user 1 missing")?;
    timed_read(&repo, "second read")
        .await
        .map_err(|_| "user 1 missing")?;
    repo.rename_user(1, "Ada Lovelace")
        .await
        .map_err(|_| "user 1 missing")?;
    println!("renamed user 1: users:1 invalidated");
    timed_read(&repo, "after write")
        .await
        .map_err(|_| "user 1 missing")?;
    timed_read(&repo, "again")
        .await
        .map_err(|_| "user 1 missing")?;

    let stats = cache.stats();
    println!(
        "stats: hits={} misses={} hit_rate={:.2} sets={} deletes={} errors={} breaker={}",
        stats.hits,
        stats.misses,
        stats.hit_rate(),
        stats.sets,
        stats.deletes,
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
