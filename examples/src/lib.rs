//! The code behind cachekit's runnable examples, as a library so the integration tests in
//! `tests/` can start each example in-process against a private Redis.
//!
//! Each example reproduces a hand-built Redis caching layer from a Python service on
//! cachekit, over a real embedded database (SQLite through sqlx, created and seeded on start):
//!
//! - [`roles_api`]: an axum HTTP service with the roles document's endpoints and payloads
//!   (`GET /role/get/{user_id}` answering `"cached": true/false`, invalidation on writes,
//!   admin invalidation, `/health`, `/cache/stats`). Binary: `roles_api`.
//! - [`users`]: the other documents' patterns in one repository: list and filter queries under
//!   hashed keys, a per-user permission set with a one-hour TTL and a refresh, lookups by id,
//!   email and username sharing one cached user, and a password hash that never reaches the
//!   cache. Binary: `users`, a scripted demo.
//!
//! The binaries are thin `main`s: they build a [`CacheService`](cachekit::CacheService) with
//! `CacheService::from_env()` (Redis when `REDIS_URL` & co are set, the embedded store
//! otherwise) and a database from `DATABASE_URL` (default: in memory), then call in here.

pub mod db;
pub mod roles_api;
pub mod users;

/// Logs to stdout through `tracing`, filtered by `RUST_LOG`, or by `default_filter` (such as
/// `"info"`) when it is unset: what each example binary calls first. Colours only when stdout
/// is a terminal, so a log file or a pipe gets plain text.
pub fn init_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}
