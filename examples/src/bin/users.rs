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

use cachekit::CacheService;
use cachekit_examples::{db, users};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cachekit_examples::init_tracing("warn");

    let cache = CacheService::from_env().await;
    let repo = users::UserRepo::connect(cache, &db::database_url_from_env()).await?;
    users::run_demo(&repo, &mut std::io::stdout()).await?;
    Ok(())
}
