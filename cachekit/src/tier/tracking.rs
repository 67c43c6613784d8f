//! The tier's invalidation channel: a RESP3 connection of its own on which Redis reports every
//! write to a key under the prefix (`CLIENT TRACKING ON BCAST PREFIX {prefix}:`), whoever made
//! it, and every key that expires or is evicted.
//!
//! Broadcast mode rather than default mode: default mode reports only keys read on the
//! tracking connection itself, so every read would have to go through it (or its redirect),
//! and a key read once before tracking was on would never be reported. Broadcast mode reports
//! writes to any key under the prefix, read or not, at the price of messages for keys this
//! process does not hold (each costs a hash lookup here).
//!
//! The tier serves only while this channel is known to be up:
//!
//! - It is vouched for once `CLIENT TRACKING` has been accepted (and flushed at that moment,
//!   so nothing from before the channel existed survives).
//! - A heartbeat `PING` every [`HEARTBEAT`] proves the channel still delivers: Redis sends
//!   invalidation messages in order with replies on the connection, so a `PING` answered means
//!   every message for writes before it has arrived. A `PING` unanswered within the operation
//!   timeout, a dropped connection, or a closed channel flushes the tier and bypasses it until
//!   a new channel is up. So a stalled or partitioned channel can leave the tier serving for at
//!   most one heartbeat plus one timeout after the last proof.
//!
//! On a Redis Cluster each primary reports the writes to its own keys, so the channel is one
//! connection per primary that owns slots (found with `CLUSTER SLOTS`, a failed one included, so
//! the tier is not vouched for until its slots have a live owner), and it is vouched for only while
//! all of them are up: the heartbeat goes to each. A primary that dies drops its connection,
//! which flushes the tier before its replica can take a write. A replica promoted while the
//! old primary stays up is found by comparing the primaries every [`TOPOLOGY_EVERY`]
//! heartbeats (1 s), which flushes the tier and tracks the new set. Slots moving between
//! tracked primaries need nothing: the key's new owner reports its writes.

use super::Tier;
use crate::CacheError;
use crate::RedisConfig;
use crate::backend::conn::{Conn, Primary};
use crate::stats::Counters;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the channel proves it is up. With the operation timeout (250 ms by default), it
/// bounds how long a stalled channel can go unnoticed: 350 ms by default.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);

/// The longest pause between attempts to open the channel again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The client name the channel's connection gives itself (`CLIENT LIST` shows it).
pub(crate) const CLIENT_NAME: &str = "cachekit-tracking";

/// How often, in heartbeats, a cluster's channel checks that it still tracks every primary:
/// a replica promoted while the old primary stays up (a manual failover) is noticed this late.
const TOPOLOGY_EVERY: u32 = 10;

/// Where the channel's connections go.
#[derive(Clone)]
pub(crate) enum Nodes {
    /// One server: one connection, from this RESP3 client.
    One(redis::Client),
    /// A cluster: one connection to each primary, found through `conn`, made with the
    /// credentials and TLS settings of `template` (whose host and port are replaced).
    Cluster { conn: Conn, template: RedisConfig },
}

impl Nodes {
    /// The clients to track with, and (on a cluster) the primaries they are for.
    async fn clients(&self) -> Result<(Vec<redis::Client>, Vec<Primary>), String> {
        match self {
            Self::One(client) => Ok((vec![client.clone()], Vec::new())),
            Self::Cluster { conn, template } => {
                let primaries = primaries(conn).await?;
                let clients = primaries
                    .iter()
                    .map(|primary| {
                        RedisConfig {
                            host: primary.host.clone(),
                            port: primary.port,
                            ..template.clone()
                        }
                        .tracking_client()
                        .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((clients, primaries))
            }
        }
    }
}

/// A cluster's primaries (sorted by [`Conn::primaries`]), or why they could not be listed.
async fn primaries(conn: &Conn) -> Result<Vec<Primary>, String> {
    let listed = conn.primaries().await.map_err(|e: CacheError| match e {
        CacheError::Redis(e) => describe(&e),
        other => other.to_string(),
    })?;
    let primaries = listed.unwrap_or_default();
    if primaries.is_empty() {
        return Err("the cluster lists no primary".into());
    }
    Ok(primaries)
}

/// How the channel connects and how long it waits.
#[derive(Clone)]
pub(crate) struct Channel {
    /// The server, or the cluster's primaries.
    pub(crate) nodes: Nodes,
    /// `{prefix}:`.
    pub(crate) key_prefix: String,
    pub(crate) connect_timeout: Duration,
    /// The bound on `CLIENT TRACKING` and each heartbeat.
    pub(crate) timeout: Duration,
}

/// Why a channel ended.
enum Ended {
    /// The service (and so its tier) is gone: stop.
    TierDropped,
    /// The channel failed; open another.
    Lost(String),
}

impl Channel {
    /// Keeps a channel open for `tier` until the tier is dropped, counting its failures in
    /// `counters`. Spawn it.
    pub(crate) async fn run(self, tier: Weak<Tier>, counters: Arc<Counters>) {
        // However this task ends (its runtime shut down, say), the tier stops serving: no
        // channel is left to vouch for it.
        struct Unvouch(Weak<Tier>);
        impl Drop for Unvouch {
            fn drop(&mut self) {
                if let Some(tier) = self.0.upgrade() {
                    tier.vouch(false);
                }
            }
        }
        let _unvouch = Unvouch(tier.clone());
        let first = Duration::from_millis(50);
        let mut backoff = first;
        let mut failures = 0u32;
        loop {
            let (ended, vouched) = self.session(&tier).await;
            let Some(live) = tier.upgrade() else { return };
            live.vouch(false);
            drop(live);
            let Ended::Lost(why) = ended else { return };
            if vouched {
                Counters::bump(&counters.local_flushes);
                tracing::warn!(
                    error = %why,
                    "cachekit: the in-process tier's invalidation channel failed; the tier is \
                     flushed and bypassed until it is back"
                );
                (backoff, failures) = (first, 0);
            } else {
                if failures == 0 {
                    tracing::warn!(
                        error = %why,
                        "cachekit: cannot open the in-process tier's invalidation channel; the \
                         tier is bypassed until it opens"
                    );
                }
                failures = failures.saturating_add(1);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One tracking connection to the node of `client`, its pushes sent to `sender`.
    async fn track(
        &self,
        client: &redis::Client,
        sender: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<redis::aio::MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_push_sender(sender)
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        // The config holds a sender too: dropped, the connections' end closes the channel.
        let mut conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_) => return Err("connecting timed out".into()),
        };
        drop(config);
        // A name for `CLIENT LIST`; an ACL that refuses it costs nothing but the name.
        let mut name = redis::cmd("CLIENT");
        name.arg("SETNAME").arg(CLIENT_NAME);
        let _ = tokio::time::timeout(self.timeout, name.exec_async(&mut conn)).await;
        let mut track = redis::cmd("CLIENT");
        track
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&self.key_prefix);
        match tokio::time::timeout(self.timeout, track.exec_async(&mut conn)).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("CLIENT TRACKING timed out".into()),
        }
    }

    /// One channel, from connecting until it fails. Also says whether it got as far as
    /// vouching for the tier. On a cluster, it is one connection per primary, all of which
    /// must be up for the tier to be vouched for.
    async fn session(&self, tier: &Weak<Tier>) -> (Ended, bool) {
        let (sender, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let (clients, tracked) = match self.nodes.clients().await {
            Ok(found) => found,
            Err(why) => return (Ended::Lost(why), false),
        };
        let mut conns = Vec::with_capacity(clients.len());
        for client in &clients {
            match self.track(client, sender.clone()).await {
                Ok(conn) => conns.push(conn),
                Err(why) => return (Ended::Lost(why), false),
            }
        }
        // Only the connections hold senders now: once they are all gone, the channel closes.
        drop(sender);
        match tier.upgrade() {
            Some(live) => live.vouch(true),
            None => return (Ended::TierDropped, false),
        }
        tracing::debug!("cachekit: the in-process tier's invalidation channel is up");
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return (Ended::Lost("the connection closed".into()), true);
                    };
                    let Some(live) = tier.upgrade() else {
                        return (Ended::TierDropped, true);
                    };
                    match push.kind {
                        PushKind::Invalidate => apply(&live, &push.data),
                        PushKind::Disconnection => {
                            return (Ended::Lost("the connection dropped".into()), true);
                        }
                        _ => {}
                    }
                }
                _ = beat.tick() => {
                    if tier.strong_count() == 0 {
                        return (Ended::TierDropped, true);
                    }
                    let ping = redis::cmd("PING");
                    for conn in &mut conns {
                        match tokio::time::timeout(self.timeout, ping.exec_async(conn)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return (Ended::Lost(describe(&e)), true),
                            Err(_) => return (Ended::Lost("heartbeat timed out".into()), true),
                        }
                    }
                    beats = beats.wrapping_add(1);
                    if let Nodes::Cluster { conn, .. } = &self.nodes
                        && beats.is_multiple_of(TOPOLOGY_EVERY)
                    {
                        let listed = tokio::time::timeout(self.timeout, primaries(conn)).await;
                        match listed {
                            Ok(Ok(now)) if now == tracked => {}
                            Ok(Ok(_)) => {
                                return (Ended::Lost("the cluster's primaries changed".into()), true);
                            }
                            Ok(Err(why)) => return (Ended::Lost(why), true),
                            Err(_) => {
                                return (Ended::Lost("listing the primaries timed out".into()), true);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Applies one invalidation message: the keys it names, or (`Nil`, after `FLUSHDB` or
/// `FLUSHALL`) everything.
fn apply(tier: &Tier, data: &[Value]) {
    match data.first() {
        Some(Value::Array(keys)) => {
            for key in keys {
                match key {
                    // A key that is not UTF-8 is not one this service writes: nothing to evict.
                    Value::BulkString(bytes) => {
                        if let Ok(physical) = std::str::from_utf8(bytes) {
                            tier.evict_physical(physical);
                        }
                    }
                    Value::SimpleString(physical) => tier.evict_physical(physical),
                    // A shape this version does not know: flush rather than guess.
                    _ => tier.flush(),
                }
            }
        }
        _ => tier.flush(),
    }
}

/// An error's kind and code, never its text (which may quote a URL).
fn describe(error: &redis::RedisError) -> String {
    match error.code() {
        Some(code) => format!("{:?} ({code})", error.kind()),
        None => format!("{:?}", error.kind()),
    }
}
