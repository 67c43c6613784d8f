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

    /// The primaries of the cluster, from `CLUSTER NODES` as one node sees it; `None` for one
    /// server. A primary that node marks as failed is left out: its slots are unreachable until
    /// a replica takes over, and the command that needs them fails then.
    pub(crate) async fn primaries(&self) -> Result<Option<Vec<Primary>>, CacheError> {
        let Self::Cluster(link) = self else {
            return Ok(None);
        };
        let mut conn = link.get().await?;
        let value = conn
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let text: String = redis::from_redis_value(value).map_err(redis::RedisError::from)?;
        Ok(Some(parse_primaries(&text)))
    }

    /// Which slots each primary serves, from `CLUSTER SLOTS`; `None` for one server.
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

/// The primaries in a `CLUSTER NODES` reply: lines of `id host:port@cport[,hostname] flags
/// master ...`, whose flags include `master` and not `fail` (a `fail?` is only suspected, and
/// still serves).
fn parse_primaries(text: &str) -> Vec<Primary> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.contains(&"fail") || flags.contains(&"noaddr") {
                return None;
            }
            let host_port = address.split(['@', ',']).next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            let port = port.parse().ok().filter(|&p| p != 0)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(Primary {
                host: host.to_owned(),
                port,
            })
        })
        .collect()
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

    #[test]
    fn primaries_are_the_masters_not_failed() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,redis-3.internal master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238316232 5 disconnected
824f 127.0.0.1:30006@40006 myself,master - 0 0 6 connected 0-5460
a1b2 :0@0 master,noaddr - 0 0 7 disconnected
c3d4 [::1]:30007@40007 master,fail? - 0 0 8 connected
";
        let found = parse_primaries(text);
        let addresses: Vec<(&str, u16)> = found.iter().map(|p| (p.host.as_str(), p.port)).collect();
        assert_eq!(
            addresses,
            [
                ("127.0.0.1", 30002),
                ("127.0.0.1", 30003),
                ("127.0.0.1", 30006),
                ("::1", 30007)
            ]
        );
    }
}
