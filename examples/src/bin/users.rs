//! The users patterns of the seed documents on cachekit, as a scripted demo over SQLite:
//! hashed list and filter keys, a one-hour permission set with a refresh, three lookups
//! sharing one cached user, and a password hash that never reaches the cache.
//!
//! ```bash
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p cachekit-examples --bin users
//! ```
//!
//! Environment: `REDIS_URL` & co (with none set, the embedded store), `DATABASE_URL`
//! (default `sqlite::memory:`; the demo recreates its tables on every run), `RUST_LOG`
//! (default `warn`).

use std::sync::Arc;

use cachekit::CacheService;
use cachekit_examples::{db, users};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cachekit_examples::init_tracing("warn");

    let cache = CacheService::from_env().await;
    let repo =
        Arc::new(users::UserRepo::connect(cache.clone(), &db::database_url_from_env()).await?);

    // Warm the first users' permission sets at start-up, four loads at a time, through the
    // cached method itself. A service would let start-up go on and drop the handle; the demo
    // waits, so that its output does not depend on how far the warm-up got.
    let warming = {
        let repo = repo.clone();
        cache.warm_up(1..=4i64, 4, move |id| {
            let repo = repo.clone();
            async move { repo.permissions(id).await }
        })
    };
    let report = warming.finished().await;
    println!(
        "warm-up: {} permission sets loaded, {} failed, in {} ms",
        report.loaded,
        report.failed,
        report.elapsed.as_millis()
    );

    users::run_demo(&repo, &mut std::io::stdout()).await?;
    Ok(())
}
