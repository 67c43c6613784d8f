//! The connection a [`RedisBackend`](super::RedisBackend) sends its commands through: one
//! server, or a Redis Cluster.

use crate::CacheError;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;
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
