//! The standalone Redis store, on redis-rs's auto-reconnecting multiplexed connection.

use super::{Backend, BackendKind, LEASE_MARKER_PREFIX, Lease, ServerInfo, is_lease_marker};
use crate::CacheError;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::LazyLock;
use std::time::Duration;

/// Whether `KEYS[1]` holds exactly the string `v`, without copying a large or foreign value
/// into the script.
const HOLDS: &str = r"local function holds(k, v)
  if redis.call('TYPE', k)['ok'] ~= 'string' then return false end
  if redis.call('STRLEN', k) ~= #v then return false end
  return redis.call('GET', k) == v
end
";

/// Take the lease: if the key is empty, store the marker with the lease TTL and return nil;
/// else return what is there (a value, or another loader's marker). A marker without a TTL is
/// garbage (no live holder sets one), and a key of another type than a string is foreign data
/// that reads as a miss: both are replaced. Returns 1 for a value larger than the maximum (not
/// sent).
///
/// `ARGV`: marker, lease TTL in ms, marker prefix, maximum value size in bytes.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'string' then
  if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[4]) then return 1 end
  local v = redis.call('GET', KEYS[1])
  if string.sub(v, 1, #ARGV[3]) ~= ARGV[3] or redis.call('PTTL', KEYS[1]) ~= -1 then
    return v
  end
elseif t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false",
    )
});

/// Fill under the lease: store the value only if the key still holds our marker.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}if holds(KEYS[1], ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0"
    ))
});

/// Compare-and-delete: remove the key only if it holds exactly `ARGV[1]`.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}if holds(KEYS[1], ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0"
    ))
});

/// Renew the lease: extend the marker's TTL only if the key still holds it.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}if holds(KEYS[1], ARGV[1]) then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0"
    ))
});

/// One `SCAN` step: the next cursor (0 when the walk is done) and the matching keys.
async fn scan_step(
    conn: &mut ConnectionManager,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<Vec<u8>>), CacheError> {
    Ok(redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT)
        .query_async(conn)
        .await?)
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How many keys one `SCAN` step asks for when walking a pattern.
const SCAN_COUNT: u64 = 1000;
/// How many keys one `UNLINK` removes at most.
const UNLINK_BATCH: usize = 1000;

/// A Redis server reached through one multiplexed connection that reconnects by itself
/// (redis-rs's `ConnectionManager`): all clones of the service share it, and commands from
/// concurrent tasks are pipelined on it.
///
/// Pattern removal walks the keyspace with `SCAN ... MATCH` and removes each batch with
/// `UNLINK`; `KEYS`, `FLUSHDB` and `FLUSHALL` are never sent.
///
/// Reads fetch at most `max_value_bytes + 1` bytes (`GETRANGE`), so one huge value cannot hold
/// the connection for every other key: it reads as [`CacheError::TooLarge`].
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    endpoint: String,
    max_value_bytes: u64,
}

impl RedisBackend {
    /// Creates the backend without connecting: the connection is made on first use and remade
    /// after it drops. `endpoint` is the redacted address used in logs and `Debug`.
    pub(crate) fn connect_lazy(
        client: redis::Client,
        endpoint: String,
        connect_timeout: Duration,
        max_value_bytes: u64,
    ) -> Result<Self, CacheError> {
        let config = ConnectionManagerConfig::new()
            // No response timeout here: the service's guard bounds every call, once. (A
            // timed-out command never makes redis-rs reconnect either way.)
            .set_response_timeout(None)
            .set_connection_timeout(Some(connect_timeout))
            // One quick retry: the service's circuit breaker, not the connection, decides how
            // long to wait before trying an unreachable server again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200))
            // Commands from many tasks queue here while the connection is busy.
            .set_pipeline_buffer_size(1024);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            endpoint,
            max_value_bytes: max_value_bytes.max(1),
        })
    }

    /// The server's address as `host:port/db` (never with credentials).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Redis
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut conn = self.conn.clone();
        // GETRANGE reads like GET but sends at most max + 1 bytes. A missing key reads as the
        // empty string, which no stored value is (JSON is never empty).
        let value: Vec<u8> = redis::cmd("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(self.max_value_bytes)
            .query_async(&mut conn)
            .await?;
        if value.is_empty() {
            Ok(None)
        } else if value.len() as u64 > self.max_value_bytes {
            Err(CacheError::TooLarge {
                max: self.max_value_bytes,
            })
        } else {
            Ok(Some(value))
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("UNLINK").arg(key).query_async(&mut conn).await?;
        Ok(removed > 0)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let mut removed = 0;
        for batch in keys.chunks(UNLINK_BATCH) {
            let n: u64 = redis::cmd("UNLINK")
                .arg(batch)
                .query_async(&mut conn)
                .await?;
            removed += n;
        }
        Ok(removed)
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let mut cursor = 0;
        let mut removed = 0;
        loop {
            let (next, keys) = scan_step(&mut conn, cursor, pattern).await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn try_lease(
        &self,
        key: &str,
        marker: &[u8],
        ttl: Duration,
    ) -> Result<Lease, CacheError> {
        let mut conn = self.conn.clone();
        let found: redis::Value = LEASE
            .key(key)
            .arg(marker)
            .arg(millis(ttl))
            .arg(LEASE_MARKER_PREFIX)
            .arg(self.max_value_bytes)
            .invoke_async(&mut conn)
            .await?;
        match found {
            redis::Value::Nil => Ok(Lease::Acquired),
            redis::Value::BulkString(bytes) if is_lease_marker(&bytes) => Ok(Lease::Held),
            redis::Value::BulkString(bytes) => Ok(Lease::Value(bytes)),
            redis::Value::Int(1) => Err(CacheError::TooLarge {
                max: self.max_value_bytes,
            }),
            other => Err(CacheError::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply to the lease script",
                format!("{:?}", std::mem::discriminant(&other)),
            )))),
        }
    }

    async fn fill(
        &self,
        key: &str,
        marker: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let stored: u8 = FILL
            .key(key)
            .arg(marker)
            .arg(value)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }

    async fn release(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let removed: u8 = RELEASE
            .key(key)
            .arg(expected)
            .invoke_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    async fn renew(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let renewed: u8 = RENEW
            .key(key)
            .arg(marker)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").exec_async(&mut conn).await?;
        Ok(())
    }

    async fn server_info(&self, _prefix_pattern: &str) -> Result<Option<ServerInfo>, CacheError> {
        let mut conn = self.conn.clone();
        let (text, db_keys): (String, u64) = redis::pipe()
            .cmd("INFO")
            .cmd("DBSIZE")
            .query_async(&mut conn)
            .await?;
        let field = |name: &str| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k == name).then(|| v.trim().to_owned())
            })
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(ServerInfo {
            version: field("redis_version"),
            uptime_seconds: number("uptime_in_seconds"),
            used_memory_bytes: number("used_memory"),
            connected_clients: number("connected_clients"),
            db_keys: Some(db_keys),
        }))
    }
}
