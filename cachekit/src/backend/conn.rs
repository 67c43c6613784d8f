//! The connection a [`RedisBackend`](super::RedisBackend) sends its commands through: one
//! server, or a Redis Cluster.

use crate::CacheError;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::{Arc, LazyLock};
use tokio::sync::OnceCell;

/// One server or a cluster, behind redis-rs's `ConnectionLike`, so every command is written
/// once for both.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server: a multiplexed connection that reconnects by itself.
    Single(ConnectionManager),
    /// A cluster: each command goes to the primary of its key's slot.
    Cluster(Arc<ClusterLink>),
}

/// A cluster connection made on first use, so that a service builds while the cluster is
/// unreachable; a failed attempt is retried by the next command. Once made, redis-rs keeps it
/// up: it follows `MOVED` and `ASK`, and refreshes the slot map after a failover.
pub(crate) struct ClusterLink {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl ClusterLink {
    pub(crate) fn new(client: ClusterClient) -> Self {
        Self {
            client,
            conn: OnceCell::new(),
        }
    }

    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// The hash slot of `key`: CRC16/XMODEM of its hash tag (the part between its first `{` and
/// the next `}`, if not empty) or of the whole key, modulo 16,384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// For each slot, a short tag whose slot it is: `{tag}` in a key name puts the key there.
static SLOT_TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut tags = vec![String::new(); usize::from(SLOTS)];
    let mut missing = usize::from(SLOTS);
    let mut n = 0u64;
    while missing > 0 {
        let tag = format!("{n:x}");
        let slot = usize::from(slot_of(tag.as_bytes()));
        if tags[slot].is_empty() {
            tags[slot] = tag;
            missing -= 1;
        }
        n += 1;
    }
    tags
});

/// The tag of `slot` (see [`SLOT_TAGS`]).
pub(crate) fn slot_tag(slot: u16) -> &'static str {
    &SLOT_TAGS[usize::from(slot % SLOTS)]
}

/// A primary of a cluster, as its peers announce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Conn {
    /// Whether this is a cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The primaries that serve the cluster's slots, as redis-rs addresses them (from
    /// `CLUSTER SLOTS`, sorted); `None` for one server. A primary that has failed but still
    /// owns its slots is listed: a command sent to it fails, rather than its keys being
    /// skipped. An error if some slot has no owner.
    pub(crate) async fn primaries(&self) -> Result<Option<Vec<Primary>>, CacheError> {
        let Some(owners) = self.slot_owners().await? else {
            return Ok(None);
        };
        let mut primaries: Vec<Primary> = owners.into_iter().map(|(primary, _)| primary).collect();
        primaries.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        Ok(Some(primaries))
    }

    /// Which slots each primary serves, from `CLUSTER SLOTS` (the addresses redis-rs routes
    /// to); `None` for one server. An error if some slot has no owner.
    pub(crate) async fn slot_owners(&self) -> Result<Option<Vec<(Primary, Vec<u16>)>>, CacheError> {
        let Self::Cluster(link) = self else {
            return Ok(None);
        };
        let mut conn = link.get().await?;
        let value = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let ranges: Vec<(u16, u16, Vec<Value>)> = match value {
            Value::Array(ranges) => ranges
                .into_iter()
                .filter_map(|range| match range {
                    Value::Array(fields) if fields.len() >= 3 => {
                        let start = redis::from_redis_value::<u16>(fields[0].clone()).ok()?;
                        let end = redis::from_redis_value::<u16>(fields[1].clone()).ok()?;
                        match &fields[2] {
                            Value::Array(node) => Some((start, end, node.clone())),
                            _ => None,
                        }
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut owners: Vec<(Primary, Vec<u16>)> = Vec::new();
        for (start, end, node) in ranges {
            let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
                continue;
            };
            let (Ok(host), Ok(port)) = (
                redis::from_redis_value::<String>(host.clone()),
                redis::from_redis_value::<u16>(port.clone()),
            ) else {
                continue;
            };
            let primary = Primary { host, port };
            let slots = (start..=end.min(SLOTS - 1)).collect::<Vec<_>>();
            match owners.iter_mut().find(|(p, _)| *p == primary) {
                Some((_, owned)) => owned.extend(slots),
                None => owners.push((primary, slots)),
            }
        }
        let covered: usize = owners.iter().map(|(_, slots)| slots.len()).sum();
        if covered != usize::from(SLOTS) {
            return Err(CacheError::Backend(Box::new(std::io::Error::other(
                format!("the cluster serves {covered} of its {SLOTS} slots"),
            ))));
        }
        Ok(Some(owners))
    }

    /// Sends `pipeline` (not a transaction) to the node at `primary` as it is, whatever slots
    /// its keys are in: each reply says how its command went there. On one server, to that
    /// server.
    pub(crate) async fn pipeline_on_node(
        &self,
        primary: Option<&Primary>,
        pipeline: &Pipeline,
        count: usize,
    ) -> Result<Vec<Value>, CacheError> {
        match (self, primary) {
            (Self::Cluster(link), Some(primary)) => {
                let mut conn = link.get().await?;
                Ok(conn
                    .route_pipeline(
                        pipeline.clone(),
                        0,
                        count,
                        SingleNodeRoutingInfo::ByAddress {
                            host: primary.host.clone(),
                            port: primary.port,
                        },
                    )
                    .await?)
            }
            (conn, _) => Ok(pipeline.query_async(&mut conn.clone()).await?),
        }
    }

    /// Sends `cmd` to the node at `primary` only (for commands that are not about one key,
    /// such as `SCAN`); on one server, to that server.
    pub(crate) async fn on_node<T: redis::FromRedisValue>(
        &self,
        primary: Option<&Primary>,
        cmd: &Cmd,
    ) -> Result<T, CacheError> {
        match (self, primary) {
            (Self::Cluster(link), Some(primary)) => {
                let mut conn = link.get().await?;
                let value = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: primary.host.clone(),
                            port: primary.port,
                        }),
                    )
                    .await?;
                Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
            }
            (conn, _) => Ok(cmd.query_async(&mut conn.clone()).await?),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(link) => {
                Box::pin(async move { link.get().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(link) => Box::pin(async move {
                link.get()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec_and_every_slot_has_a_tag() {
        // The examples of the Redis Cluster specification.
        assert_eq!(slot_of(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        for slot in [0, 1, 5461, 12_182, SLOTS - 1] {
            let key = format!("app#{{{}}}#ix:users", slot_tag(slot));
            assert_eq!(slot_of(key.as_bytes()), slot, "{key}");
        }
    }
}
