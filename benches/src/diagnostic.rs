//! Diagnostic contenders (`--diagnostics`): cachekit with parts of its cost taken out, to see
//! where its time goes.

use crate::Error;
use cachekit::backend::{Backend, BackendKind};
use cachekit::{CacheError, CacheService};
use redis::aio::ConnectionManager;
use std::time::Duration;

/// cachekit's Redis backend, copied: the same `ConnectionManager` settings and the same `GET`,
/// but reporting itself as the embedded store, which cachekit trusts not to hang. So the
/// service calls it without its guard: no `tokio::time::timeout` around the call and no
/// circuit breaker. Reads only.
#[derive(Clone)]
pub(crate) struct UnguardedRedis {
    conn: ConnectionManager,
}

impl std::fmt::Debug for UnguardedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnguardedRedis").finish_non_exhaustive()
    }
}

impl UnguardedRedis {
    /// A service with cachekit's `prefix` over this backend.
    pub(crate) async fn service(client: redis::Client) -> Result<CacheService, Error> {
        let conn =
            ConnectionManager::new_with_config(client, crate::runner::manager_config()).await?;
        Ok(CacheService::builder()
            .backend(Self { conn })
            .prefix(crate::PREFIX)
            .build()
            .await?)
    }
}

fn unsupported() -> CacheError {
    CacheError::Config("the diagnostic backend only reads".into())
}

#[async_trait::async_trait]
impl Backend for UnguardedRedis {
    fn kind(&self) -> BackendKind {
        // The lie that switches the guard off (see the type's docs).
        BackendKind::Memory
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(CacheError::from)
    }

    async fn set(&self, _: &str, _: &[u8], _: Duration) -> Result<(), CacheError> {
        Err(unsupported())
    }

    async fn delete(&self, _: &str) -> Result<bool, CacheError> {
        Err(unsupported())
    }

    async fn delete_matching(&self, _: &str) -> Result<u64, CacheError> {
        Err(unsupported())
    }

    async fn count_matching(&self, _: &str, _: u64) -> Result<(u64, bool), CacheError> {
        Err(unsupported())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
