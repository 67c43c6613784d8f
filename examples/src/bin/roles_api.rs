//! The roles service of the first seed document on cachekit: an axum app over SQLite.
//!
//! ```bash
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p cachekit-examples --bin roles_api
//! curl -s localhost:3000/role/get/1      # "cached":false, then "cached":true
//! ```
//!
//! `GET /metrics` serves cachekit's metrics in the Prometheus text format (on unless
//! `CACHE_METRICS=false`).
//!
//! Environment: `REDIS_URL` & co (see cachekit's docs; with none set, the embedded store),
//! `DATABASE_URL` (default `sqlite::memory:`, created and seeded on start), `BIND`
//! (`host:port`) or `PORT` (default `127.0.0.1:3000`), `RUST_LOG` (default `info`).
//! Ctrl-C stops it after the requests in flight.

use cachekit::{CacheConfig, CacheService};
use cachekit_examples::{db, roles_api};
use std::time::Duration;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cachekit_examples::init_tracing("info");

    let bind = roles_api::bind_address(|name| std::env::var(name).ok())?;
    // The recorder first: the service registers its metrics with it when first used.
    let metrics = roles_api::install_prometheus()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let cache = match CacheConfig::from_env() {
        Ok(mut config) => {
            // Metrics on unless the environment says otherwise.
            if std::env::var_os("CACHE_METRICS").is_none() {
                config.metrics = true;
            }
            CacheService::from_config(config).await?
        }
        // Logged by `from_env`, which gives a service that caches nothing.
        Err(_) => CacheService::from_env().await,
    };
    let app = roles_api::app(cache.clone(), &db::database_url_from_env())
        .await?
        .merge(roles_api::metrics_router(metrics));
    let listener = TcpListener::bind(bind).await?;
    println!(
        "roles_api listening on http://{} (cache: {}, prefix `{}`); Ctrl-C to stop",
        listener.local_addr()?,
        cache.stats().backend,
        cache.prefix()
    );
    roles_api::serve(listener, app, roles_api::shutdown_signal()).await?;
    println!("roles_api stopped");
    Ok(())
}
