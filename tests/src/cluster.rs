//! A private Redis Cluster per test: 3 primaries and 3 replicas.
//!
//! Six [`RedisServer`]s start with `--cluster-enabled yes` on free ports (cluster bus ports
//! reserved too), `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes` joins
//! them, and [`RedisCluster::start`] returns once every node reports `cluster_state:ok` and
//! knows all six. A node timeout of 1 s makes a killed primary's replica take over within a
//! few seconds. Every node is killed when the cluster is dropped.

use std::ffi::OsString;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::RedisServer;
use crate::binary;
use crate::port::PortReservation;
use crate::tls::Pki;

/// How long the cluster may take to form, or to recover after a fault.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Node timeout: how long a primary may be silent before its replica takes over.
const NODE_TIMEOUT_MS: &str = "1000";

/// A running cluster of 3 primaries with one replica each.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _bus_ports: Vec<PortReservation>,
    /// The nodes' TLS ports, in node order, for a cluster started with TLS.
    tls_ports: Vec<PortReservation>,
}

impl RedisCluster {
    /// Starts the six nodes, creates the cluster and waits until it serves every slot.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is missing (the message says how to install them), or
    /// if the cluster does not form within 30 seconds.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`start`](Self::start), with every node also listening for TLS with the server
    /// certificate of `pki` (which must name `127.0.0.1`, the address nodes announce), and the
    /// nodes talking to each other over TLS (`tls-cluster`, `tls-replication`). Clients reach
    /// it at [`tls_urls`](Self::tls_urls); the plain ports stay open for the harness.
    pub fn start_tls(pki: &Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&Pki>) -> Self {
        let mut nodes = Vec::with_capacity(6);
        let mut bus_ports = Vec::with_capacity(6);
        let mut tls_ports = Vec::new();
        for _ in 0..6 {
            let bus = PortReservation::new();
            let mut args: Vec<OsString> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                NODE_TIMEOUT_MS,
                "--cluster-port",
                &bus.port().to_string(),
            ]
            .iter()
            .map(OsString::from)
            .collect();
            if let Some(pki) = pki {
                let tls = PortReservation::new();
                args.extend(pki.server_args(tls.port(), false));
                args.extend([
                    "--tls-cluster".into(),
                    "yes".into(),
                    "--tls-replication".into(),
                    "yes".into(),
                ]);
                tls_ports.push(tls);
            }
            nodes.push(RedisServer::start_with_args(&args));
            bus_ports.push(bus);
        }
        let cluster = Self {
            nodes,
            _bus_ports: bus_ports,
            tls_ports,
        };
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.addr().to_string()).collect();
        let output = Command::new(binary::redis_cli())
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|error| panic!("cannot run redis-cli --cluster create: {error}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and knows every running
    /// node, every replica is in sync with its primary, and the cluster has three primaries
    /// that answer.
    ///
    /// # Panics
    ///
    /// If that does not happen within 30 seconds.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let running: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
            let ok = running.iter().all(|node| {
                let info = query(node, &["CLUSTER", "INFO"]).unwrap_or_default();
                let nodes = query(node, &["CLUSTER", "NODES"]).unwrap_or_default();
                let known = nodes
                    .lines()
                    .filter(|line| !line.contains("fail") && !line.contains("handshake"))
                    .count();
                // A replica that has not finished its first sync could not take over.
                let role = query(node, &["ROLE"]).unwrap_or_default();
                let synced = role != "slave"
                    || query(node, &["INFO", "replication"])
                        .is_some_and(|info| info.contains("master_link_status:up"));
                info.contains("cluster_state:ok") && known >= running.len() && synced
            }) && self.primaries().len() == 3;
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {FORM_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node, primaries and replicas, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The running nodes that are primaries now (`ROLE` says `master`).
    pub fn primaries(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .filter(|node| query(node, &["ROLE"]).is_some_and(|role| role.starts_with("master")))
            .collect()
    }

    /// `redis://127.0.0.1:port` of every node, for a service's node list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://{}", node.addr()))
            .collect()
    }

    /// `rediss://127.0.0.1:tls-port` of every node of a cluster started with
    /// [`start_tls`](Self::start_tls); empty otherwise.
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|port| format!("rediss://127.0.0.1:{}", port.port()))
            .collect()
    }

    /// A cluster-aware redis-rs connection, for raw access in assertions.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("valid node URLs")
            .get_async_connection()
            .await
            .expect("a connection to the cluster")
    }
}

/// One command on one node over a fresh blocking connection, its reply as text (the first
/// element of an array reply): `None` if the node does not answer.
fn query(node: &RedisServer, args: &[&str]) -> Option<String> {
    let client = node.client();
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(250))
        .ok()?;
    conn.set_read_timeout(Some(Duration::from_millis(250)))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let value: redis::Value = cmd.query(&mut conn).ok()?;
    match value {
        redis::Value::Array(items) => items
            .into_iter()
            .next()
            .and_then(|first| redis::from_redis_value::<String>(first).ok()),
        other => redis::from_redis_value::<String>(other).ok(),
    }
}
