//! SQLite for the examples: an in-memory database by default, or a file.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;

/// The database used when `DATABASE_URL` is unset: in memory, created and seeded on start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite::memory:";

/// The database URL from `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url_from_env() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// Opens a pool on a SQLite URL (`sqlite::memory:`, `sqlite://roles.db`, `sqlite:roles.db`),
/// creating a database file that does not exist yet, with foreign keys enforced.
///
/// An in-memory database lives as long as its connections, so its pool holds exactly one that
/// is never closed; a file database gets a few.
pub async fn connect(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = if is_in_memory(url) {
        SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        SqlitePoolOptions::new().max_connections(4)
    };
    pool.connect_with(options).await
}

/// Whether a SQLite URL names an in-memory database.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Whether a database error is the violation of a `UNIQUE` constraint (or primary key).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_urls_are_recognized() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite:file:roles?mode=memory&cache=shared"));
        assert!(!is_in_memory("sqlite://roles.db"));
    }

    #[tokio::test]
    async fn an_in_memory_pool_keeps_its_tables() {
        let pool = connect(DEFAULT_DATABASE_URL).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&pool)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
