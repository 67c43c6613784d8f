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

use super::Tier;
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

/// How the channel connects and how long it waits.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    /// A RESP3 client for the service's Redis.
    pub(crate) client: redis::Client,
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

    /// One channel, from connecting until it fails. Also says whether it got as far as
    /// vouching for the tier.
    async fn session(&self, tier: &Weak<Tier>) -> (Ended, bool) {
        let (sender, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new()
            .set_push_sender(sender)
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        // The config holds a sender too: dropped, the connection's end closes the channel.
        let mut conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return (Ended::Lost(describe(&e)), false),
            Err(_) => return (Ended::Lost("connecting timed out".into()), false),
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
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (Ended::Lost(describe(&e)), false),
            Err(_) => return (Ended::Lost("CLIENT TRACKING timed out".into()), false),
        }
        match tier.upgrade() {
            Some(live) => live.vouch(true),
            None => return (Ended::TierDropped, false),
        }
        tracing::debug!("cachekit: the in-process tier's invalidation channel is up");
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    match tokio::time::timeout(self.timeout, ping.exec_async(&mut conn)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return (Ended::Lost(describe(&e)), true),
                        Err(_) => return (Ended::Lost("heartbeat timed out".into()), true),
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
