//! The standalone Redis store, on redis-rs's auto-reconnecting multiplexed connection.

use super::batch::{Batcher, Entry, Held, Waiting, Watch};
use super::conn::{self, ClusterLink, Conn, Primary};
use super::{
    Backend, BackendKind, LEASE_MARKER_PREFIX, Lease, ServerInfo, Versioned, is_lease_marker,
};
use crate::CacheError;
use crate::index::{self, Scope};
use crate::key::escape_glob;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, ScriptInvocation};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Whether `KEYS[1]` holds exactly the string `v`, without copying a large or foreign value
/// into the script.
const HOLDS: &str = r"local function holds(k, v)
  if redis.call('TYPE', k)['ok'] ~= 'string' then return false end
  if redis.call('STRLEN', k) ~= #v then return false end
  return redis.call('GET', k) == v
end
";

/// Drops up to `limit` members of the index `ix` scored before `now` whose key (`head ..
/// member`) no longer exists, and scores the others again from their remaining TTL. Scores are
/// expiry times from the writers' clocks, and `set` keeps the lowest (`ZADD LT`), so they only
/// order the candidates: a member leaves only once its key is gone. Returns how many it
/// dropped (members scored again are not counted: see [`TrimPace`]).
const TRIM_FN: &str = r"local function trim(ix, head, now, limit)
  local old = redis.call('ZRANGEBYSCORE', ix, '-inf', '(' .. now, 'LIMIT', 0, limit)
  local gone = {}
  for _, m in ipairs(old) do
    local ttl = redis.call('PTTL', head .. m)
    if ttl == -2 then
      gone[#gone + 1] = m
    elseif ttl == -1 then
      redis.call('ZADD', ix, 'inf', m)
    else
      redis.call('ZADD', ix, now + ttl, m)
    end
  end
  if #gone > 0 then redis.call('ZREM', ix, unpack(gone)) end
  return #gone
end
";

/// The invalidation index, for scripts that write `KEYS[1]`: `index(member, ttl, now)`, run
/// after the write, files the key in the index `KEYS[2]` as `member`, scored `now + ttl` (the
/// writer's clock). An index that did not exist is registered in `KEYS[3]`; a write that adds a
/// member also trims up to 16 (see `TRIM_FN`), so expired members leave as fast as new ones
/// come. An index or registry of a foreign type is replaced, and the index's ready marker
/// `KEYS[4]` deleted with it (the entries it named are no longer found, so patterns walk until a
/// rebuild). Does nothing when the script was given only the key.
const INDEX: &str = r"local function register()
  if type(redis.pcall('SADD', KEYS[3], KEYS[2])) == 'table' then
    redis.call('DEL', KEYS[3], KEYS[4])
    redis.call('SADD', KEYS[3], KEYS[2])
  end
end
local function index(member, ttl, now)
  if #KEYS < 4 then return end
  local score = now + ttl
  local added = redis.pcall('ZADD', KEYS[2], score, member)
  if type(added) == 'table' then
    redis.call('DEL', KEYS[2], KEYS[4])
    added = redis.call('ZADD', KEYS[2], score, member)
  end
  if added == 0 then return end
  if redis.call('ZCARD', KEYS[2]) == 1 then register() end
  trim(KEYS[2], string.sub(KEYS[1], 1, #KEYS[1] - #member), now, 16)
end
";

/// Store a value and file it in the index, repairing an index or registry of a foreign type:
/// what `set` falls back to when its transaction meets one.
///
/// `ARGV`: value, TTL in ms, index member, now in ms.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{TRIM_FN}{INDEX}redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
index(ARGV[3], ARGV[2], ARGV[4])
register()
return 1"
    ))
});

/// Trim the index `KEYS[1]`, then one index drawn at random from the registry `KEYS[2]`, so
/// that a namespace no longer written is emptied too, and leaves the registry once it and its
/// drain set are gone. `ARGV`: `{head}:`, now in ms, how many members at most, `{head}`.
/// Returns how many members and registrations it removed: whether there was work.
static TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{TRIM_FN}local n = trim(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
local other = redis.call('SRANDMEMBER', KEYS[2])
if not other then return n end
local rest = string.sub(other, #ARGV[4] + 4)
if string.sub(other, 1, #ARGV[4] + 3) ~= ARGV[4] .. '#ix' or (rest ~= '' and string.sub(rest, 1, 1) ~= ':') then
  return n
end
local t = redis.call('TYPE', other)['ok']
if t == 'zset' then
  n = n + trim(other, ARGV[1], ARGV[2], tonumber(ARGV[3]))
elseif t ~= 'none' then
  return n
end
if redis.call('EXISTS', other) == 0 and redis.call('EXISTS', ARGV[4] .. '#drain' .. rest) == 0 then
  n = n + redis.call('SREM', KEYS[2], other)
end
return n"
    ))
});

/// Remove a key, and its index member.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = redis.call('UNLINK', KEYS[1])
if redis.call('TYPE', KEYS[2])['ok'] == 'zset' then redis.call('ZREM', KEYS[2], ARGV[1]) end
return n",
    )
});

/// Take the lease: if the key is empty, store the marker with the lease TTL (filed in the
/// index) and return nil; else return what is there (a value, or another loader's marker). A
/// marker without a TTL is garbage (no live holder sets one), and a key of another type than a
/// string is foreign data that reads as a miss: both are replaced. Returns 1 for a value larger
/// than the maximum (not sent).
///
/// `ARGV`: marker, lease TTL in ms, marker prefix, maximum value size in bytes, index member,
/// now in ms.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{TRIM_FN}{INDEX}local t = redis.call('TYPE', KEYS[1])['ok']
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
index(ARGV[5], ARGV[2], ARGV[6])
return false"
    ))
});

/// Fill under the lease: store the value only if the key still holds our marker.
///
/// `ARGV`: marker, value, TTL in ms, index member, now in ms.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}{TRIM_FN}{INDEX}if holds(KEYS[1], ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  index(ARGV[4], ARGV[3], ARGV[5])
  return 1
end
return 0"
    ))
});

/// Refill after a refresh: store the value only if the key still holds the bytes `ARGV[6]`
/// read at version `ARGV[1]` (its `PEXPIRETIME`): a write since gave it other bytes or another
/// expiry time (both the same would take a write of the same bytes ending at the same
/// millisecond), a removal took it away.
///
/// `ARGV`: version, value, TTL in ms, index member, now in ms, the bytes read.
static REFILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}{TRIM_FN}{INDEX}if holds(KEYS[1], ARGV[6])
  and redis.call('PEXPIRETIME', KEYS[1]) == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  index(ARGV[4], ARGV[3], ARGV[5])
  return 1
end
return 0"
    ))
});

/// Take or renew a refresh claim: store the marker `ARGV[1]` for `ARGV[2]` ms if the key is
/// empty, or extend it if it holds that marker already. Returns 1 if the caller holds it.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0",
    )
});

/// Compare-and-delete: remove the key only if it holds exactly `ARGV[1]`, and its index member
/// (`ARGV[2]`) with it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}if holds(KEYS[1], ARGV[1]) then
  redis.call('DEL', KEYS[1])
  if #KEYS == 4 and redis.call('TYPE', KEYS[2])['ok'] == 'zset' then
    redis.call('ZREM', KEYS[2], ARGV[2])
  end
  return 1
end
return 0"
    ))
});

/// Renew the lease: extend the marker's TTL (and its index score) only if the key still holds
/// it.
///
/// `ARGV`: marker, TTL in ms, index member, now in ms.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HOLDS}{TRIM_FN}{INDEX}if holds(KEYS[1], ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  index(ARGV[3], ARGV[2], ARGV[4])
  return 1
end
return 0"
    ))
});

/// Start invalidating a namespace: rename its index `KEYS[1]` to its drain set `KEYS[2]`, so
/// that writes from now on start a new index and the drain set holds every entry written
/// before. Returns the drain set's size, -2 if a drain set is still there (an invalidation in
/// progress, or one stopped half-way by a fault: drain it first, then swap again), or -1 if
/// either key is of a foreign type: both are removed with the ready marker `KEYS[3]`, and the
/// caller walks instead.
static SWAP: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{SWAP_FN}return swap(KEYS[1], KEYS[2], KEYS[3])")));

/// [`SWAP`] as a Lua function: `swap(index, drain set, ready marker)`.
const SWAP_FN: &str = r"local function swap(ix, dr, ready)
  local function foreign(k)
    local t = redis.call('TYPE', k)['ok']
    return t ~= 'zset' and t ~= 'none'
  end
  if foreign(ix) or foreign(dr) then
    redis.call('DEL', ix, dr, ready)
    return -1
  end
  if redis.call('EXISTS', dr) == 1 then return -2 end
  if redis.call('EXISTS', ix) == 1 then redis.call('RENAME', ix, dr) end
  return redis.call('ZCARD', dr)
end
";

/// The indexes registered in `KEYS[1]`; a registry of a foreign type is removed with the ready
/// marker `KEYS[2]`, and false returned: walk instead.
static REGISTERED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'set' and t ~= 'none' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return false
end
return redis.call('SMEMBERS', KEYS[1])",
    )
});

/// One step of draining the set `KEYS[1]`: remove up to `ARGV[2]` of its entries (the keys
/// `ARGV[1] .. member`) and their members, atomically. Only members that belong where the set
/// says (starting with `ARGV[3]`, the namespace and its `:`; with no `:` at all when `ARGV[3]`
/// is empty) have their key removed: a member put there by something else cannot reach a key
/// outside the namespace. When the set and the namespace's index `KEYS[2]` are both gone, the
/// index leaves the registry `KEYS[3]`. Returns {members taken, keys that existed}.
static DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DRAIN_FN}return drain(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3])"
    ))
});

/// [`DRAIN`] as a Lua function: `drain(drain set, index, registry, key head, chunk, namespace
/// and its colon)`.
const DRAIN_FN: &str = r"local function drain(dr, ix, reg, head, chunk, ns)
  local m = redis.call('ZRANGE', dr, 0, chunk - 1)
  local removed = 0
  if #m > 0 then
    local keys = {}
    for _, v in ipairs(m) do
      local belongs
      if ns == '' then
        belongs = string.find(v, ':', 1, true) == nil
      else
        belongs = string.sub(v, 1, #ns) == ns
      end
      if belongs then keys[#keys + 1] = head .. v end
    end
    if #keys > 0 then removed = redis.call('UNLINK', unpack(keys)) end
    redis.call('ZREMRANGEBYRANK', dr, 0, #m - 1)
  end
  if redis.call('EXISTS', dr) == 0 and redis.call('EXISTS', ix) == 0 then
    redis.call('SREM', reg, ix)
  end
  return {#m, removed}
end
";

/// [`SWAP`] then one [`DRAIN`] step, in one call, for a cluster's sweep: `KEYS` the index, its
/// drain set, the ready marker and the registry, `ARGV` as for `DRAIN`. Returns {what `SWAP`
/// returned, members taken, keys that existed}; nothing is drained when the first is negative.
static SWAP_DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SWAP_FN}{DRAIN_FN}local held = swap(KEYS[1], KEYS[2], KEYS[3])
if held < 0 then return {{held, 0, 0}} end
local r = drain(KEYS[2], KEYS[1], KEYS[4], ARGV[1], tonumber(ARGV[2]), ARGV[3])
return {{held, r[1], r[2]}}"
    ))
});

/// Remove the entries `ARGV[1] .. member` for the members `ARGV[2..]` of the set `KEYS[1]`,
/// and those members, atomically. Returns how many keys existed.
static REMOVE_MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local keys = {}
for i = 2, #ARGV do keys[i - 1] = ARGV[1] .. ARGV[i] end
local removed = redis.call('UNLINK', unpack(keys))
redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
return removed",
    )
});

/// File existing keys (`ARGV[1] .. member` for the members `ARGV[3..]`) in the index
/// `KEYS[1]`, registered in `KEYS[2]` (either replaced if of a foreign type), scored `ARGV[2]`
/// (now in ms) plus their remaining TTL: what rebuilding the index runs on each batch of a
/// walk. A key without a TTL is scored `+inf`. Returns how many members were new.
static FILE_EXISTING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"for _, k in ipairs({KEYS[1], KEYS[2]}) do
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'none' and t ~= (k == KEYS[1] and 'zset' or 'set') then redis.call('DEL', k) end
end
local added = 0
for i = 3, #ARGV do
  local ttl = redis.call('PTTL', ARGV[1] .. ARGV[i])
  if ttl ~= -2 then
    local score = 'inf'
    if ttl >= 0 then score = ARGV[2] + ttl end
    added = added + redis.call('ZADD', KEYS[1], 'GT', score, ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SADD', KEYS[2], KEYS[1]) end
return added",
    )
});

/// One `SCAN` step: the next cursor (0 when the walk is done) and the matching keys.
/// On a cluster, of the node `primary`.
async fn scan_step(
    conn: &Conn,
    primary: Option<&Primary>,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<Vec<u8>>), CacheError> {
    let mut scan = redis::cmd("SCAN");
    scan.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    conn.on_node(primary, &scan).await
}

/// This machine's clock in ms since the Unix epoch: the base of index scores, which only order
/// the candidates for trimming (a member leaves only once its key is gone), so clocks need not
/// agree.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How many keys one `SCAN` step asks for when walking a pattern.
const SCAN_COUNT: u64 = 1000;
/// How many keys one `UNLINK` removes at most.
const UNLINK_BATCH: usize = 1000;

/// A `set` trims the index it files in with a chance of one in this many while trims remove
/// something (see [`TrimPace`]).
const TRIM_EVERY_MIN: u32 = 8;
/// ... and of one in this many while they find nothing. Each write makes at most one trim
/// candidate (its member if new, or if a trim scored it again before this rewrite: `ZADD LT`
/// leaves a score otherwise), so trims of up to [`TRIM_LIMIT`] keep up even this rarely.
const TRIM_EVERY_MAX: u32 = 128;
/// How many trim candidates a trim run by `set` looks at (drops, or scores again) at most.
const TRIM_LIMIT: u32 = 128;

/// When `set` trims the index: each write with a chance of one in `every`, `every` halving
/// (down to [`TRIM_EVERY_MIN`]) after a trim that removed something and doubling (up to
/// [`TRIM_EVERY_MAX`]) after one that removed nothing. So short TTLs are trimmed as often as
/// they expire, and writes whose entries live long pay for a trim script rarely.
///
/// A member a trim scores again (its entry rewritten after its filed expiry, which `ZADD LT`
/// leaves) is not counted: each write makes at most one trim candidate, so trims keep up at
/// any pace, and counting them would hold a namespace whose entries are rewritten a few times
/// per TTL at one trim in 8 writes for nothing removed.
///
/// A draw, not every `every`th write: a trim is of the index the write files in, and a process
/// whose writes take turns between namespaces (one long-lived, one short) would otherwise trim
/// only the namespace its counted writes fall on. Drawn, each namespace gets trims in
/// proportion to its writes, up to [`TRIM_LIMIT`] members each, which keeps up with the one
/// member each of its writes adds at any pace.
#[derive(Debug)]
struct TrimPace {
    every: AtomicU32,
}

impl Default for TrimPace {
    fn default() -> Self {
        Self {
            every: AtomicU32::new(TRIM_EVERY_MIN),
        }
    }
}

impl TrimPace {
    /// Whether this write trims.
    fn due(&self) -> bool {
        fastrand::u32(..self.every.load(Ordering::Relaxed)) == 0
    }

    /// Notes what a trim removed.
    fn trimmed(&self, removed: i64) {
        let _ = self
            .every
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |every| {
                Some(if removed > 0 {
                    (every / 2).max(TRIM_EVERY_MIN)
                } else {
                    (every * 2).min(TRIM_EVERY_MAX)
                })
            });
    }

    /// Every how many writes it trims now.
    #[cfg(test)]
    fn every(&self) -> u32 {
        self.every.load(Ordering::Relaxed)
    }
}

/// How many entries one step of a namespace invalidation removes.
const DRAIN_CHUNK: usize = 1000;

/// On a cluster, how many slots' index sets one invalidation drains at once.
const SWEEP_CONCURRENCY: usize = 32;

/// How long a check that the index can answer patterns holds before it is made again: a
/// server whose eviction policy changes to one that can evict the index is noticed this late.
const TRUST_FOR: Duration = Duration::from_secs(1);

/// How long one process holds the right to rebuild an index, if it stops without giving it back.
const REBUILD_LOCK: Duration = Duration::from_secs(600);

/// The drain set of the index `index_key` under `head`: `{head}#drain:{ns}` (or `{head}#drain`).
fn drain_key(head: &str, index_key: &str) -> String {
    let rest = index_key
        .strip_prefix(head)
        .and_then(|k| k.strip_prefix("#ix"))
        .unwrap_or_default();
    format!("{head}#drain{rest}")
}

/// The set of every index under `head`.
/// The key of the refresh claim on the entry `key` (`{prefix}:{rest}`): `{prefix}#claim:{rest}`,
/// among the index's keys, where no pattern of the service reaches.
fn claim_key(key: &str) -> String {
    match key.split_once(':') {
        Some((head, rest)) => format!("{head}#claim:{rest}"),
        None => format!("{key}#claim"),
    }
}

fn registry_key(head: &str) -> String {
    format!("{head}#ns")
}

/// Exists once the index under `head` holds every entry: written by a rebuild.
fn ready_key(head: &str) -> String {
    format!("{head}#ix-ready")
}

/// Held by the process rebuilding the index under `head`.
fn rebuild_lock_key(head: &str) -> String {
    format!("{head}#ix-rebuild")
}

/// Whether the server's memory policy (from `INFO memory`) may evict keys without a TTL, such
/// as the index: a `maxmemory` limit with an `allkeys-*` policy.
fn evicts_persistent_keys(info_memory: &str) -> bool {
    let field = |name: &str| {
        info_memory.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == name).then(|| v.trim())
        })
    };
    let limited = field("maxmemory").and_then(|v| v.parse::<u64>().ok()) != Some(0);
    limited && field("maxmemory_policy").is_some_and(|p| p.starts_with("allkeys"))
}

/// Runs one step of background work on the server, bounded by `limit`.
async fn bounded<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, CacheError>>,
) -> Result<T, CacheError> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or(Err(CacheError::Timeout {
            op: "rebuild_index",
            timeout: limit,
        }))
}

/// A `ZSCAN` reply: the next cursor, and members with their scores.
type ZscanReply = (u64, Vec<(Vec<u8>, String)>);

/// Where a key is filed in the index: its index key, the registry, and its member.
struct Filing<'a> {
    index: String,
    registry: String,
    member: &'a str,
    /// The head the index keys are named under: the prefix's head on one server; on a
    /// cluster, that head and the tag of the key's slot (see [`names_in_slot`]).
    names: Cow<'a, str>,
}

impl Filing<'_> {
    /// The index's ready marker, named only by scripts: `set`'s transaction does without it.
    fn ready(&self) -> String {
        ready_key(&self.names)
    }
}

/// On a cluster, the head the index keys of slot `slot` are named under: `{head}#{tag}`, where
/// the tag puts them in that slot, beside the entries they list. So a write and its filing stay
/// one transaction in one slot, and entry keys keep their format.
fn names_in_slot(head: &str, slot: u16) -> String {
    format!("{head}#{{{}}}", conn::slot_tag(slot))
}

/// What this process knows about the indexes of the heads it has invalidated under.
#[derive(Debug, Default)]
struct IndexState {
    /// Heads whose index was last found able to answer patterns, and when.
    trusted: Mutex<HashMap<String, Instant>>,
    /// Heads whose index this process is rebuilding in the background.
    rebuilding: Mutex<HashSet<String>>,
    /// Whether the eviction policy warning was logged.
    warned: AtomicBool,
}

/// A Redis server reached through one multiplexed connection that reconnects by itself
/// (redis-rs's `ConnectionManager`): all clones of the service share it, and commands from
/// concurrent tasks are pipelined on it.
///
/// # The invalidation index
///
/// Every write also files its key, atomically with it, in a sorted set per namespace (the first
/// `:`-separated part after the prefix), scored by the key's expiry. A pattern that names one
/// namespace (`users:*`), or all of them (`*`), is answered from those sets at a cost that
/// follows what it removes; a pattern filtered within one namespace (`users:1*`) scans that
/// namespace's set only; any other pattern walks the keyspace with `SCAN ... MATCH` and removes
/// each batch with `UNLINK`. `KEYS`, `FLUSHDB` and `FLUSHALL` are never sent.
///
/// The index answers only once it has been rebuilt from the keys already in Redis (entries
/// written by a version without it), and only on a server that cannot evict it; until then,
/// patterns walk. See `docs/design/0004-invalidation-index.md`.
///
/// Reads fetch at most `max_value_bytes + 1` bytes (`GETRANGE`), so one huge value cannot hold
/// the connection for every other key: it reads as [`CacheError::TooLarge`].
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    endpoint: String,
    max_value_bytes: u64,
    /// Whether writes file keys in the index and patterns use it (off only for benchmarks).
    indexed: bool,
    /// The bound on each step of a background rebuild of the index.
    step_timeout: Duration,
    index: Arc<IndexState>,
    /// When `set`s trim the index.
    trims: Arc<TrimPace>,
    /// On one server, reads beyond those in flight queue and leave together (`None` on a
    /// cluster, whose reads go to different nodes, and in diagnostics).
    batch: Option<Arc<Batcher>>,
}

/// Keeps `watch` over its queue until its deadline, in a task of its own: one timer per queue
/// that forms behind reads sent at once, rather than one per queued read.
fn keep_watch(watch: Watch) {
    // Off a runtime the watch drops here, failing its queue at once.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep_until(watch.deadline()).await;
            watch.expire();
        });
    }
}

/// `GETRANGE key 0 max`: the value, or its first `max + 1` bytes. The command's buffer is sized
/// for its arguments up front.
fn getrange(key: &str, max: u64) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(4, key.len() + 48);
    cmd.arg("GETRANGE").arg(key).arg(0).arg(max);
    cmd
}

/// How a [`RedisBackend`] is set up.
#[derive(Debug, Clone)]
pub(crate) struct RedisOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_value_bytes: u64,
    pub(crate) indexed: bool,
    pub(crate) step_timeout: Duration,
    /// Batch reads on one server, each batch bounded by this (`None`: never batch).
    pub(crate) batch_timeout: Option<Duration>,
}

impl RedisBackend {
    /// Creates the backend without connecting: the connection is made on first use and remade
    /// after it drops. `endpoint` is the redacted address used in logs and `Debug`.
    pub(crate) fn connect_lazy(
        client: redis::Client,
        endpoint: String,
        options: &RedisOptions,
    ) -> Result<Self, CacheError> {
        let config = ConnectionManagerConfig::new()
            // No response timeout here: the service's guard bounds every call once, or for
            // batched reads `read` does. (A timed-out command never makes redis-rs reconnect
            // either way.)
            .set_response_timeout(None)
            .set_connection_timeout(Some(options.connect_timeout))
            // One quick retry: the service's circuit breaker, not the connection, decides how
            // long to wait before trying an unreachable server again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200))
            // Commands from many tasks queue here while the connection is busy.
            .set_pipeline_buffer_size(1024);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn: Conn::Single(conn),
            endpoint,
            max_value_bytes: options.max_value_bytes.max(1),
            indexed: options.indexed,
            step_timeout: options.step_timeout,
            index: Arc::default(),
            trims: Arc::default(),
            batch: options
                .batch_timeout
                .map(|timeout| Arc::new(Batcher::new(timeout))),
        })
    }

    /// Creates the backend on a Redis Cluster without connecting: the connection is made on
    /// first use. The invalidation index is kept per slot (see [`names_in_slot`]).
    pub(crate) fn cluster_lazy(
        client: redis::cluster::ClusterClient,
        endpoint: String,
        options: &RedisOptions,
    ) -> Self {
        Self {
            conn: Conn::Cluster(Arc::new(ClusterLink::new(client))),
            endpoint,
            max_value_bytes: options.max_value_bytes.max(1),
            indexed: options.indexed,
            step_timeout: options.step_timeout,
            index: Arc::default(),
            trims: Arc::default(),
            batch: None,
        }
    }

    /// The connection its commands go through.
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The server's address as `host:port/db` (never with credentials).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where `key` is filed in the index, if it is indexed.
    fn filing<'a>(&self, key: &'a str) -> Option<Filing<'a>> {
        if !self.indexed {
            return None;
        }
        let place = index::place(key)?;
        // Borrowed on one server: a write pays no allocation for it.
        let names = if self.conn.is_cluster() {
            Cow::Owned(names_in_slot(place.head, conn::slot_of(key.as_bytes())))
        } else {
            Cow::Borrowed(place.head)
        };
        Some(Filing {
            index: index::index_key(&names, place.ns),
            registry: registry_key(&names),
            member: place.member,
            names,
        })
    }

    /// The value under `key`: [`Backend::get`], as a future of its own type, so the service's
    /// read path calls it without boxing. Bounded by the operation timeout when reads are
    /// batched ([`bounds_reads`](Self::bounds_reads)), else left for the caller to bound.
    pub(crate) async fn read(&self, key: &Arc<str>) -> Result<Option<Vec<u8>>, CacheError> {
        let Some(batcher) = &self.batch else {
            return self.read_now(key).await;
        };
        let launch = |batch, runtime| self.launch(batcher, batch, runtime);
        match batcher.enter(key, &launch) {
            Entry::Direct(_slot) => {
                let timeout = batcher.timeout();
                match tokio::time::timeout(timeout, self.read_now(key)).await {
                    Ok(read) => read,
                    Err(_) => Err(CacheError::Timeout { op: "get", timeout }),
                }
            }
            Entry::Queued(reply, watch, timed) => {
                if let Some(watch) = watch {
                    keep_watch(watch);
                }
                let reply = if timed {
                    let timeout = batcher.timeout();
                    match tokio::time::timeout(timeout, reply).await {
                        Ok(reply) => reply,
                        Err(_) => return Err(CacheError::Timeout { op: "get", timeout }),
                    }
                } else {
                    reply.await
                };
                match reply {
                    Ok(value) => self.checked(value?),
                    // The batch was dropped unsent: its runtime is shutting down.
                    Err(_) => Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "the batch of this read was dropped unsent",
                    ))
                    .into()),
                }
            }
        }
    }

    /// Whether [`read`](Self::read) bounds itself by the operation timeout (reads are
    /// batched: a queued read is bounded by its batch, not a timer of its own).
    pub(crate) fn bounds_reads(&self) -> bool {
        self.batch.is_some()
    }

    /// Reads sent in batches so far ([`CacheStats::reads_batched`](crate::CacheStats::reads_batched)).
    pub(crate) fn reads_batched(&self) -> u64 {
        self.batch.as_ref().map_or(0, |batcher| batcher.batched())
    }

    /// One read, sent at once.
    async fn read_now(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut conn = self.conn.clone();
        // GETRANGE reads like GET but sends at most max + 1 bytes. A missing key reads as the
        // empty string, which no stored value is (JSON is never empty). The command's buffer is
        // sized for its arguments up front.
        let value: Vec<u8> = self.getrange(key).query_async(&mut conn).await?;
        self.checked(value)
    }

    /// Sends queued reads, and those that queue while they are out, as pipelines from a task
    /// of its own, until none are left. Each reader gets its own reply or error (a `WRONGTYPE`
    /// for one key fails that read only); a batch that fails as a whole, or is not answered
    /// within the operation timeout of when its first read queued, fails each of its reads.
    fn launch(
        &self,
        batcher: &Arc<Batcher>,
        batch: Vec<Waiting>,
        runtime: Option<tokio::runtime::Handle>,
    ) {
        // Gives the slot back however the task ends, even dropped unfinished.
        let mut held = Held::new(batcher.clone());
        let Some(runtime) = runtime.or_else(|| tokio::runtime::Handle::try_current().ok()) else {
            // Off a runtime (a read dropped during shutdown): the readers see their batch
            // gone, and `held` gives the slot back.
            return;
        };
        let mut conn = self.conn.clone();
        let (max, timeout) = (self.max_value_bytes, batcher.timeout());
        runtime.spawn(async move {
            let mut batch = batch;
            loop {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for waiting in &batch {
                    pipe.add_command(getrange(&waiting.key, max));
                }
                let sent = pipe.query_async::<Vec<redis::RedisResult<Vec<u8>>>>(&mut conn);
                // Within the operation timeout of when the first read of the queue queued, so
                // each of its reads within its own.
                let since = batch
                    .first()
                    .map_or_else(tokio::time::Instant::now, |w| w.since);
                let failed = match tokio::time::timeout_at(since + timeout, sent).await {
                    Ok(Ok(replies)) if replies.len() == batch.len() => {
                        for (waiting, reply) in batch.drain(..).zip(replies) {
                            let _ = waiting.reply.send(reply.map_err(CacheError::from));
                        }
                        None
                    }
                    Ok(Ok(_)) => Some(RedisError::from((
                        redis::ErrorKind::Parse,
                        "a batch of reads had a reply count of its own",
                    ))),
                    Ok(Err(error)) => Some(error),
                    Err(_) => None,
                };
                for waiting in batch.drain(..) {
                    let error = match &failed {
                        Some(error) => CacheError::from(error.clone()),
                        None => CacheError::Timeout { op: "get", timeout },
                    };
                    let _ = waiting.reply.send(Err(error));
                }
                match held.next() {
                    Some(next) => batch = next,
                    None => return,
                }
            }
        });
    }

    /// [`read`](Self::read) with the TTL the key has left (`PTTL` in the same round trip), for
    /// the in-process tier, which holds an entry no longer than Redis does: Redis reports an
    /// expired key only once it has deleted it, which for a key nobody reads can be late.
    pub(crate) async fn read_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, CacheError> {
        let mut conn = self.conn.clone();
        let (value, pttl): (Vec<u8>, i64) = redis::pipe()
            .add_command(self.getrange(key))
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        // -1: no TTL (not written by this cache); -2: gone since the read.
        let left = u64::try_from(pttl).ok().map(Duration::from_millis);
        Ok(self.checked(value)?.map(|bytes| (bytes, left)))
    }

    fn getrange(&self, key: &str) -> redis::Cmd {
        getrange(key, self.max_value_bytes)
    }

    /// What `GETRANGE` returned, as a value: empty is no value, over the cap is an error.
    fn checked(&self, value: Vec<u8>) -> Result<Option<Vec<u8>>, CacheError> {
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

    /// An invocation of `script` on `key` that also names the index keys `key` is filed under
    /// (`KEYS[2..4]`), if any, and the member to file it as (empty when it is not filed).
    fn filed<'a>(&self, script: &'a Script, key: &'a str) -> (ScriptInvocation<'a>, &'a str) {
        let mut invocation = script.key(key);
        let Some(filing) = self.filing(key) else {
            return (invocation, "");
        };
        invocation
            .key(&filing.index)
            .key(&filing.registry)
            .key(filing.ready());
        (invocation, filing.member)
    }

    /// Removes the matches of `pattern` by walking the keyspace: `SCAN ... MATCH`, `UNLINK`.
    /// On a cluster, every primary is walked; the keys one step finds are unlinked on the
    /// primaries of their slots.
    async fn walk_delete(&self, pattern: &str) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let primaries = conn.primaries().await?;
        let nodes: Vec<Option<&Primary>> = match &primaries {
            Some(primaries) => primaries.iter().map(Some).collect(),
            None => vec![None],
        };
        let mut removed = 0;
        for node in nodes {
            let mut cursor = 0;
            loop {
                let (next, keys) = scan_step(&conn, node, cursor, pattern).await?;
                if !keys.is_empty() {
                    let n: u64 = redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await?;
                    removed += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    /// Whether the index under `head` can answer patterns: rebuilt, and on a server that cannot
    /// evict it. An index not yet rebuilt starts rebuilding in the background.
    async fn index_trusted(&self, head: &str) -> Result<bool, CacheError> {
        {
            let trusted = self.index.trusted.lock().unwrap_or_else(|e| e.into_inner());
            if trusted.get(head).is_some_and(|at| at.elapsed() < TRUST_FOR) {
                return Ok(true);
            }
        }
        let mut conn = self.conn.clone();
        let checked: Result<(bool, String), redis::RedisError> = redis::pipe()
            .exists(ready_key(head))
            .cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await;
        let (ready, memory) = match checked {
            // Without `INFO`, whether the server may evict the index is unknown: walk.
            Err(e) if e.code() == Some("NOPERM") => {
                if !self.index.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cachekit: the Redis user may not run INFO, so whether the server can \
                         evict the invalidation index is unknown and pattern invalidations walk \
                         the keyspace with SCAN; allow INFO to let them use the index"
                    );
                }
                return Ok(false);
            }
            other => other?,
        };
        let mut trusted = self.index.trusted.lock().unwrap_or_else(|e| e.into_inner());
        if evicts_persistent_keys(&memory) {
            trusted.remove(head);
            if !self.index.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cachekit: the Redis server may evict keys without a TTL (an allkeys-* \
                     maxmemory-policy), and with them the invalidation index, so pattern \
                     invalidations walk the keyspace with SCAN; every cachekit entry has a TTL, \
                     so a volatile-* policy evicts the same entries and keeps the index"
                );
            }
            return Ok(false);
        }
        if ready {
            trusted.insert(head.to_owned(), Instant::now());
            return Ok(true);
        }
        trusted.remove(head);
        drop(trusted);
        self.rebuild_in_background(head);
        Ok(false)
    }

    /// Starts rebuilding the index under `head` in the background, unless this process already
    /// is; another process holding the rebuild lock makes it a no-op.
    fn rebuild_in_background(&self, head: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self
            .index
            .rebuilding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(head.to_owned())
        {
            return;
        }
        let this = self.clone();
        let head = head.to_owned();
        runtime.spawn(async move {
            match this.rebuild_locked(&head).await {
                Ok(Some(filed)) => tracing::info!(
                    filed,
                    "cachekit: rebuilt the invalidation index from the keys in Redis; pattern \
                     invalidations now use it"
                ),
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    %error,
                    "cachekit: rebuilding the invalidation index stopped; pattern invalidations \
                     walk the keyspace until a later one completes"
                ),
            }
            this.index
                .rebuilding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&head);
        });
    }

    /// Rebuilds the index under `head` if no other process is: `None` if one is.
    async fn rebuild_locked(&self, head: &str) -> Result<Option<u64>, CacheError> {
        let mut conn = self.conn.clone();
        let lock = rebuild_lock_key(head);
        let token = format!("{}:{}", std::process::id(), now_ms());
        let taken: Option<String> = bounded(self.step_timeout, async {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(millis(REBUILD_LOCK))
                .query_async(&mut conn)
                .await?;
            if taken.is_none() {
                // A lock without a TTL was not taken by this library, and would block every
                // rebuild: remove it, and leave this rebuild to the next invalidation.
                let ttl: i64 = redis::cmd("PTTL").arg(&lock).query_async(&mut conn).await?;
                if ttl == -1 {
                    redis::cmd("DEL").arg(&lock).exec_async(&mut conn).await?;
                }
            }
            Ok(taken)
        })
        .await?;
        if taken.is_none() {
            return Ok(None);
        }
        let outcome = self.rebuild(head, Some(self.step_timeout)).await;
        // Give the lock back only if it is still this process's.
        let _: Result<u8, CacheError> = bounded(self.step_timeout, async {
            Ok(RELEASE
                .key(&lock)
                .arg(&token)
                .arg("")
                .invoke_async(&mut conn)
                .await?)
        })
        .await;
        outcome.map(Some)
    }

    /// Files every key under `{head}:` in its index, walking the keyspace once, then marks the
    /// index ready. Each step is bounded by `step_timeout` when given. Returns how many keys were
    /// not filed before.
    async fn rebuild(&self, head: &str, step_timeout: Option<Duration>) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", escape_glob(head));
        let key_head = format!("{head}:");
        let limit = step_timeout.unwrap_or(Duration::MAX);
        let cluster = conn.is_cluster();
        // On a cluster every primary is walked, and the keys one step finds (all on that node)
        // are filed in one pipeline sent there, the script loaded on every node first. One
        // snapshot of the slots' owners decides both what is walked and what is marked.
        let owners = bounded(limit, conn.slot_owners()).await?;
        let nodes: Vec<Option<&Primary>> = match &owners {
            Some(owners) => owners.iter().map(|(primary, _)| Some(primary)).collect(),
            None => vec![None],
        };
        if cluster {
            let _: String = bounded(limit, async {
                Ok(FILE_EXISTING.prepare_invoke().load_async(&mut conn).await?)
            })
            .await?;
        }
        let mut filed = 0;
        for node in nodes {
            let mut cursor = 0;
            loop {
                let (next, keys) = bounded(limit, scan_step(&conn, node, cursor, &pattern)).await?;
                // Index key -> (registry, members).
                let mut groups: HashMap<String, (String, Vec<&str>)> = HashMap::new();
                let keys: Vec<&str> = keys
                    .iter()
                    .filter_map(|k| std::str::from_utf8(k).ok())
                    .collect();
                for key in &keys {
                    if let Some(place) = index::place(key)
                        && place.head == head
                    {
                        let names = if cluster {
                            names_in_slot(head, conn::slot_of(key.as_bytes()))
                        } else {
                            head.to_owned()
                        };
                        groups
                            .entry(index::index_key(&names, place.ns))
                            .or_insert_with(|| (registry_key(&names), Vec::new()))
                            .1
                            .push(place.member);
                    }
                }
                if cluster && !groups.is_empty() {
                    let mut pipeline = redis::pipe();
                    for (index, (registry, members)) in &groups {
                        pipeline
                            .cmd("EVALSHA")
                            .arg(FILE_EXISTING.get_hash())
                            .arg(2)
                            .arg(index)
                            .arg(registry)
                            .arg(&key_head)
                            .arg(now_ms())
                            .arg(members);
                    }
                    let replies =
                        bounded(limit, conn.pipeline_on_node(node, &pipeline, groups.len()))
                            .await?;
                    for reply in replies {
                        match reply {
                            redis::Value::Int(n) => filed += u64::try_from(n).unwrap_or(0),
                            other => {
                                return Err(CacheError::Redis(redis::RedisError::from((
                                    redis::ErrorKind::UnexpectedReturnType,
                                    "filing existing keys failed on a cluster node",
                                    format!("{:?}", std::mem::discriminant(&other)),
                                ))));
                            }
                        }
                    }
                } else if !cluster {
                    for (index, (registry, members)) in groups {
                        let mut invocation = FILE_EXISTING.key(&index);
                        invocation
                            .key(&registry)
                            .arg(&key_head)
                            .arg(now_ms())
                            .arg(&members);
                        let added: u64 = bounded(limit, async {
                            Ok(invocation.invoke_async(&mut conn).await?)
                        })
                        .await?;
                        filed += added;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // On a cluster, each slot's index is marked complete too: a script that replaces a set
        // of a foreign type there deletes its slot's marker, which the sweep notices.
        if let Some(owners) = &owners {
            for (primary, slots) in owners {
                let mut marks = redis::pipe();
                for &slot in slots {
                    marks
                        .cmd("SET")
                        .arg(ready_key(&names_in_slot(head, slot)))
                        .arg("rebuilt");
                }
                bounded(
                    limit,
                    conn.pipeline_on_node(Some(primary), &marks, slots.len()),
                )
                .await?;
            }
        }
        bounded(limit, async {
            redis::cmd("SET")
                .arg(ready_key(head))
                .arg("rebuilt")
                .exec_async(&mut conn)
                .await?;
            Ok(())
        })
        .await?;
        self.index
            .trusted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(head);
        Ok(filed)
    }

    /// Removes every entry of the index `index` under `head`: moves the index to its drain set,
    /// then drains that set a chunk at a time. Returns how many keys existed, or `None` if the
    /// index was unusable (of a foreign type) and the caller must walk.
    ///
    /// `names` is the head the index keys are named under: `head` itself on one server.
    async fn drain(&self, head: &str, names: &str, index: &str) -> Result<Option<u64>, CacheError> {
        let mut conn = self.conn.clone();
        let drain = drain_key(names, index);
        let registry = registry_key(names);
        let key_head = format!("{head}:");
        // What the set's members must start with: `{ns}:`, or nothing for keys in no namespace.
        let belongs = index
            .strip_prefix(names)
            .and_then(|k| k.strip_prefix("#ix:"))
            .map(|ns| format!("{ns}:"))
            .unwrap_or_default();
        let mut removed = 0;
        loop {
            let held: i64 = SWAP
                .key(index)
                .key(&drain)
                .key(ready_key(names))
                .invoke_async(&mut conn)
                .await?;
            if held == -1 {
                return Ok(None);
            }
            loop {
                let (taken, existed): (usize, u64) = DRAIN
                    .key(&drain)
                    .key(index)
                    .key(&registry)
                    .arg(&key_head)
                    .arg(DRAIN_CHUNK)
                    .arg(&belongs)
                    .invoke_async(&mut conn)
                    .await?;
                removed += existed;
                if taken < DRAIN_CHUNK {
                    break;
                }
            }
            // A drain set found in place was drained first; now move the index itself.
            if held >= 0 {
                return Ok(Some(removed));
            }
        }
    }

    /// Removes the entries of namespace `ns` under `head` whose member matches
    /// `member_pattern`: scans the namespace's index, then its drain set (in that order, so an
    /// entry that a concurrent invalidation moves from one to the other is still seen).
    async fn remove_within(
        &self,
        head: &str,
        names: &str,
        ns: &str,
        member_pattern: &str,
    ) -> Result<Option<u64>, CacheError> {
        let mut conn = self.conn.clone();
        let index = index::index_key(names, Some(ns));
        let drain = drain_key(names, &index);
        let key_head = format!("{head}:");
        let mut removed = 0;
        for set in [&index, &drain] {
            let mut cursor = 0u64;
            loop {
                let scanned: Result<ZscanReply, redis::RedisError> = redis::cmd("ZSCAN")
                    .arg(set)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(member_pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn)
                    .await;
                let (next, found) = match scanned {
                    // A key of another type there: the index cannot answer (the next write to
                    // the namespace replaces it and marks the index incomplete).
                    Err(e) if e.code() == Some("WRONGTYPE") => return Ok(None),
                    other => other?,
                };
                // A small set answers a scan whole, whatever COUNT says: bound each removal.
                for batch in found.chunks(UNLINK_BATCH) {
                    let members: Vec<&[u8]> = batch.iter().map(|(m, _)| m.as_slice()).collect();
                    let existed: u64 = REMOVE_MEMBERS
                        .key(set)
                        .arg(&key_head)
                        .arg(&members)
                        .invoke_async(&mut conn)
                        .await?;
                    removed += existed;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(Some(removed))
    }

    /// On a cluster, removes the entries of namespace `ns` under `head` (those whose member
    /// matches `within`, if given) from every slot: each primary is asked, in one pipeline,
    /// which of its slots hold an index or a drain set of the namespace, and only those are
    /// drained: moved to their drain sets in one pipeline and drained by a chunk in another.
    /// What that leaves (a pattern to match, a drain set found in place, a set larger than a
    /// chunk) goes one set at a time, [`SWEEP_CONCURRENCY`] at once. An entry written before
    /// the sweep began is in a set that existed when it looked. `None` if a set was unusable
    /// or the slots moved meanwhile: the caller walks instead.
    async fn sweep_slots(
        &self,
        head: &str,
        ns: &str,
        within: Option<&str>,
    ) -> Result<Option<u64>, CacheError> {
        let Some(owners) = self.conn.slot_owners().await? else {
            return Ok(None);
        };
        if owners.iter().map(|(_, slots)| slots.len()).sum::<usize>() != usize::from(conn::SLOTS) {
            return Ok(None);
        }
        let mut removed = 0;
        // Sets left for one at a time: a patterned removal, a drain set already there (another
        // invalidation's, or one stopped half-way), or one larger than a chunk.
        let mut single: Vec<String> = Vec::new();
        let mut conn = self.conn.clone();
        if within.is_none() {
            let _: String = SWAP_DRAIN.prepare_invoke().load_async(&mut conn).await?;
        }
        // The primaries at once, each its own server: first every one says which sets it
        // holds, so that nothing is removed unless the index can answer on all of them.
        let mut surveys = tokio::task::JoinSet::new();
        for (primary, slots) in owners {
            let (this, head, ns) = (self.clone(), head.to_owned(), ns.to_owned());
            surveys.spawn(async move {
                let found = this.survey_node(&primary, &slots, &head, &ns).await;
                (primary, found)
            });
        }
        let mut surveyed = Vec::new();
        while let Some(outcome) = surveys.join_next().await {
            match outcome {
                Ok((primary, Ok(Some(found)))) => surveyed.push((primary, found)),
                Ok((_, Ok(None))) | Err(_) => return Ok(None),
                Ok((_, Err(e))) => return Err(e),
            }
        }
        if within.is_some() {
            single.extend(surveyed.into_iter().flat_map(|(_, found)| found));
        } else {
            let mut nodes = tokio::task::JoinSet::new();
            for (primary, found) in surveyed {
                let (this, head, ns) = (self.clone(), head.to_owned(), ns.to_owned());
                nodes.spawn(async move { this.drain_node(&primary, found, &head, &ns).await });
            }
            while let Some(outcome) = nodes.join_next().await {
                match outcome {
                    Ok(Ok(Some((n, left)))) => {
                        removed += n;
                        single.extend(left);
                    }
                    Ok(Ok(None)) | Err(_) => return Ok(None),
                    Ok(Err(e)) => return Err(e),
                }
            }
        }
        let limit = Arc::new(tokio::sync::Semaphore::new(SWEEP_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for names in single {
            let (this, head, ns, within, limit) = (
                self.clone(),
                head.to_owned(),
                ns.to_owned(),
                within.map(str::to_owned),
                limit.clone(),
            );
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                match within {
                    Some(pattern) => this.remove_within(&head, &names, &ns, &pattern).await,
                    None => {
                        let index = index::index_key(&names, Some(&ns));
                        this.drain(&head, &names, &index).await
                    }
                }
            });
        }
        let mut answered = true;
        while let Some(outcome) = tasks.join_next().await {
            match outcome {
                Ok(Ok(Some(n))) => removed += n,
                Ok(Ok(None)) => answered = false,
                Ok(Err(e)) => return Err(e),
                Err(_) => answered = false,
            }
        }
        Ok(answered.then_some(removed))
    }

    /// The first half of one primary's sweep (see [`sweep_slots`](Self::sweep_slots)): which of
    /// its `slots` hold a set of namespace `ns`, by the names the sets are under. `None` if the
    /// slots moved, or if a slot's index is not complete, which also makes the next pattern
    /// start a rebuild.
    async fn survey_node(
        &self,
        primary: &Primary,
        slots: &[u16],
        head: &str,
        ns: &str,
    ) -> Result<Option<Vec<String>>, CacheError> {
        let mut pipeline = redis::pipe();
        let mut names = Vec::with_capacity(slots.len());
        for &slot in slots {
            let slot_names = names_in_slot(head, slot);
            let index = index::index_key(&slot_names, Some(ns));
            pipeline
                .cmd("EXISTS")
                .arg(&index)
                .arg(drain_key(&slot_names, &index))
                .cmd("EXISTS")
                .arg(ready_key(&slot_names));
            names.push(slot_names);
        }
        let replies = self
            .conn
            .pipeline_on_node(Some(primary), &pipeline, 2 * slots.len())
            .await?;
        let mut found = Vec::new();
        let mut replies = replies.into_iter();
        for slot_names in names {
            match (replies.next(), replies.next()) {
                (Some(redis::Value::Int(sets)), Some(redis::Value::Int(1))) => {
                    if sets > 0 {
                        found.push(slot_names);
                    }
                }
                // The slot's index is not complete (a set of a foreign type was replaced, or
                // the slot was never rebuilt): walk, and rebuild.
                (Some(redis::Value::Int(_)), Some(redis::Value::Int(0))) => {
                    let mut conn = self.conn.clone();
                    redis::cmd("DEL")
                        .arg(ready_key(head))
                        .exec_async(&mut conn)
                        .await?;
                    self.index
                        .trusted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(head);
                    return Ok(None);
                }
                // `MOVED`: the slot changed hands since `CLUSTER SLOTS`.
                _ => return Ok(None),
            }
        }
        Ok(Some(found))
    }

    /// The second half of one primary's sweep: its sets `found`, each moved to its drain set
    /// and drained by a chunk in one call, all in one pipeline. Returns the keys removed and the sets
    /// left for the caller; `None` if a set was unusable.
    async fn drain_node(
        &self,
        primary: &Primary,
        found: Vec<String>,
        head: &str,
        ns: &str,
    ) -> Result<Option<(u64, Vec<String>)>, CacheError> {
        if found.is_empty() {
            return Ok(Some((0, found)));
        }
        // Every set of this node moved to its drain set and drained by a chunk, in one
        // pipeline: one round trip for the node, however many slots.
        let (key_head, belongs) = (format!("{head}:"), format!("{ns}:"));
        let mut pipeline = redis::pipe();
        for names in &found {
            let index = index::index_key(names, Some(ns));
            pipeline
                .cmd("EVALSHA")
                .arg(SWAP_DRAIN.get_hash())
                .arg(4)
                .arg(&index)
                .arg(drain_key(names, &index))
                .arg(ready_key(names))
                .arg(registry_key(names))
                .arg(&key_head)
                .arg(DRAIN_CHUNK)
                .arg(&belongs);
        }
        let replies = self
            .conn
            .pipeline_on_node(Some(primary), &pipeline, found.len())
            .await?;
        let (mut removed, mut single) = (0, Vec::new());
        for (reply, names) in replies.into_iter().zip(found) {
            let (held, taken, existed): (i64, usize, u64) = redis::from_redis_value(reply)
                .map_err(|e| CacheError::Redis(redis::RedisError::from(e)))?;
            match held {
                -1 => return Ok(None),
                // A drain set found in place: drained one set at a time.
                held if held < 0 => single.push(names),
                _ => {
                    removed += existed;
                    if taken >= DRAIN_CHUNK {
                        single.push(names);
                    }
                }
            }
        }
        Ok(Some((removed, single)))
    }

    /// Removes every entry under `head`: drains every index in the registry. `None` if the
    /// registry or an index was unusable (of a foreign type) and the caller must walk.
    async fn drain_everything(&self, head: &str) -> Result<Option<u64>, CacheError> {
        let mut conn = self.conn.clone();
        let indexes: Option<Vec<Vec<u8>>> = REGISTERED
            .key(registry_key(head))
            .key(ready_key(head))
            .invoke_async(&mut conn)
            .await?;
        let Some(indexes) = indexes else {
            return Ok(None);
        };
        let mut removed = 0;
        // Only names of this head's indexes: a member put there by something else (not text,
        // or naming any other key) is skipped, so it cannot lead the drain outside the prefix.
        let own = |index: &&str| {
            index
                .strip_prefix(head)
                .and_then(|rest| rest.strip_prefix("#ix"))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
        };
        for index in indexes
            .iter()
            .filter_map(|i| std::str::from_utf8(i).ok())
            .filter(own)
        {
            match self.drain(head, head, index).await? {
                Some(n) => removed += n,
                None => return Ok(None),
            }
        }
        Ok(Some(removed))
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
        // The service's read path calls `read` with the key it built; this one is copied.
        self.read(&Arc::from(key)).await
    }

    async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, CacheError> {
        self.read_with_ttl(key).await
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, CacheError> {
        let mut conn = self.conn.clone();
        let (value, pttl, expires): (Vec<u8>, i64, i64) = redis::pipe()
            .add_command(self.getrange(key))
            .cmd("PTTL")
            .arg(key)
            .cmd("PEXPIRETIME")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        // -1: no TTL (not written by this cache); -2: gone since the read.
        let left = u64::try_from(pttl).ok().map(Duration::from_millis);
        let version = u64::try_from(expires).unwrap_or(0);
        Ok(self
            .checked(value)?
            .map(|bytes| Versioned::new(bytes, left, version)))
    }

    async fn claim(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let held: u8 = CLAIM
            .key(claim_key(key))
            .arg(marker)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    async fn release_claim(&self, key: &str, marker: &[u8]) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: u8 = RELEASE
            .key(claim_key(key))
            .arg(marker)
            .arg("")
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn refill(
        &self,
        key: &str,
        version: u64,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let (mut invocation, member) = self.filed(&REFILL, key);
        let stored: u8 = invocation
            .arg(version)
            .arg(value)
            .arg(millis(ttl))
            .arg(member)
            .arg(now_ms())
            .arg(expected)
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let Some(filing) = self.filing(key) else {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(millis(ttl))
                .exec_async(&mut conn)
                .await?;
            return Ok(());
        };
        // One transaction, cheaper than a script: the write, its filing, the registration, and
        // on some writes a trim of the index (see `TrimPace`). A command the server refuses
        // inside it (an index or registry of a foreign type, the trim script not loaded) does
        // not undo the others, so it is redone by the script, which repairs. A transaction, not
        // a plain pipeline: a pipeline's commands can be split (its connection lost after `SET`
        // reached the server, a failover that replicated only part of it), which would leave
        // an entry that no invalidation finds (docs/design/0004-invalidation-index.md).
        let (now, ttl_ms) = (now_ms(), millis(ttl));
        let mut transaction = redis::pipe();
        transaction
            .atomic()
            .ignore_errors()
            .cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            // `LT`: a rewrite that would only push its member's score later leaves it, which
            // spares the server moving it in the sorted set. The member turns a trim candidate
            // once that first expiry passes, and the trim scores it again from the key's TTL
            // (so once per TTL at most while clocks agree). A lower score replaces the one
            // filed, as it does `inf` (an entry filed without a TTL).
            .cmd("ZADD")
            .arg(&filing.index)
            .arg("LT")
            .arg(now.saturating_add(ttl_ms))
            .arg(filing.member)
            .cmd("SADD")
            .arg(&filing.registry)
            .arg(&filing.index);
        let trims = self.trims.due();
        if trims {
            let key_head = &key[..key.len() - filing.member.len()];
            transaction
                .cmd("EVALSHA")
                .arg(TRIM.get_hash())
                .arg(2)
                .arg(&filing.index)
                .arg(&filing.registry)
                .arg(key_head)
                .arg(now)
                .arg(TRIM_LIMIT)
                .arg(&*filing.names);
        }
        let replies: Vec<redis::Value> = match transaction.query_async(&mut conn).await {
            Ok(replies) => replies,
            // The transaction did not reach the server, or its outcome is unknown.
            Err(e)
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal() =>
            {
                return Err(e.into());
            }
            // The server refused it whole (out of memory, say): the script says why, alike.
            Err(_) => Vec::new(),
        };
        if replies.len() >= 3
            && replies
                .iter()
                .take(3)
                .all(|r| !matches!(r, redis::Value::ServerError(_)))
        {
            match replies.get(3) {
                Some(redis::Value::Int(removed)) => self.trims.trimmed(*removed),
                Some(redis::Value::ServerError(_)) => {
                    // Most likely not loaded yet: load it for the next time.
                    let _: Result<String, _> = TRIM.prepare_invoke().load_async(&mut conn).await;
                }
                _ => {}
            }
            return Ok(());
        }
        // Whether the transaction's `SET` ran (its other commands may have been refused).
        let stored = matches!(replies.first(), Some(reply) if !matches!(reply, redis::Value::ServerError(_)));
        let repaired: Result<u8, RedisError> = SET
            .key(key)
            .key(&filing.index)
            .key(&filing.registry)
            .key(filing.ready())
            .arg(value)
            .arg(ttl_ms)
            .arg(filing.member)
            .arg(now)
            .invoke_async(&mut conn)
            .await;
        if let Err(error) = repaired {
            if stored {
                // Written and not filed (its index of a foreign type, say, and the script that
                // replaces it refused): no invalidation would find it, so it goes.
                redis::cmd("UNLINK").arg(key).exec_async(&mut conn).await?;
            }
            return Err(error.into());
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let removed: u64 = match self.filing(key) {
            Some(filing) => {
                DELETE
                    .key(key)
                    .key(&filing.index)
                    .arg(filing.member)
                    .invoke_async(&mut conn)
                    .await?
            }
            None => redis::cmd("UNLINK").arg(key).query_async(&mut conn).await?,
        };
        Ok(removed > 0)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64, CacheError> {
        // Their index members stay until they expire or their namespace is invalidated.
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
        let scope = index::scope(pattern);
        let head = match &scope {
            Scope::Exact(key) => return Ok(u64::from(self.delete(key).await?)),
            Scope::Walk => return self.walk_delete(pattern).await,
            Scope::Namespace { head, .. }
            | Scope::Within { head, .. }
            | Scope::Everything { head } => *head,
        };
        if !self.indexed || !self.index_trusted(head).await? {
            return self.walk_delete(pattern).await;
        }
        let answered = match scope {
            Scope::Namespace { ns, .. } if self.conn.is_cluster() => {
                self.sweep_slots(head, &ns, None).await?
            }
            Scope::Within {
                ns, member_pattern, ..
            } if self.conn.is_cluster() => {
                self.sweep_slots(head, &ns, Some(member_pattern)).await?
            }
            // On a cluster, the registry of every namespace would have to be one per slot too:
            // a rare `clear_all` walks instead.
            Scope::Everything { .. } if self.conn.is_cluster() => None,
            Scope::Namespace { ns, .. } => {
                self.drain(head, head, &index::index_key(head, Some(&ns)))
                    .await?
            }
            Scope::Within {
                ns, member_pattern, ..
            } => self.remove_within(head, head, &ns, member_pattern).await?,
            Scope::Everything { .. } => self.drain_everything(head).await?,
            Scope::Exact(_) | Scope::Walk => None,
        };
        match answered {
            Some(removed) => Ok(removed),
            None => {
                self.index
                    .trusted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(head);
                self.walk_delete(pattern).await
            }
        }
    }

    async fn rebuild_index(&self, prefix: &str) -> Result<u64, CacheError> {
        if !self.indexed {
            return Ok(0);
        }
        // Keys are filed under the part of the prefix before any `:` in it.
        let head = prefix.split_once(':').map_or(prefix, |(head, _)| head);
        self.rebuild(head, None).await
    }

    async fn try_lease(
        &self,
        key: &str,
        marker: &[u8],
        ttl: Duration,
    ) -> Result<Lease, CacheError> {
        let mut conn = self.conn.clone();
        let (mut invocation, member) = self.filed(&LEASE, key);
        let found: redis::Value = invocation
            .arg(marker)
            .arg(millis(ttl))
            .arg(LEASE_MARKER_PREFIX)
            .arg(self.max_value_bytes)
            .arg(member)
            .arg(now_ms())
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
        let (mut invocation, member) = self.filed(&FILL, key);
        let stored: u8 = invocation
            .arg(marker)
            .arg(value)
            .arg(millis(ttl))
            .arg(member)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }

    async fn release(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let (mut invocation, member) = self.filed(&RELEASE, key);
        let removed: u8 = invocation
            .arg(expected)
            .arg(member)
            .invoke_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    async fn renew(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let (mut invocation, member) = self.filed(&RENEW, key);
        let renewed: u8 = invocation
            .arg(marker)
            .arg(millis(ttl))
            .arg(member)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        if !conn.is_cluster() {
            redis::cmd("PING").exec_async(&mut conn).await?;
            return Ok(());
        }
        // A cluster answers when it serves every slot.
        let info: String = conn
            .on_node(None, &redis::cmd("CLUSTER").arg("INFO").clone())
            .await?;
        if info.lines().any(|line| line.trim() == "cluster_state:ok") {
            Ok(())
        } else {
            Err(CacheError::Backend(Box::new(std::io::Error::other(
                "the cluster does not serve every slot (cluster_state is not ok)",
            ))))
        }
    }

    async fn server_info(&self, _prefix_pattern: &str) -> Result<Option<ServerInfo>, CacheError> {
        let mut conn = self.conn.clone();
        let (text, db_keys): (String, u64) = if let Some(primaries) = conn.primaries().await? {
            // One primary's INFO; DBSIZE summed over every primary.
            let text: String = conn.on_node(primaries.first(), &redis::cmd("INFO")).await?;
            let mut keys = 0u64;
            for primary in &primaries {
                let n: u64 = conn.on_node(Some(primary), &redis::cmd("DBSIZE")).await?;
                keys += n;
            }
            (text, keys)
        } else {
            redis::pipe()
                .cmd("INFO")
                .cmd("DBSIZE")
                .query_async(&mut conn)
                .await?
        };
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
            maxmemory_policy: field("maxmemory_policy"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_limited_allkeys_policy_can_evict_the_index() {
        let info = |max: u64, policy: &str| {
            format!("# Memory\r\nused_memory:1\r\nmaxmemory:{max}\r\nmaxmemory_policy:{policy}\r\n")
        };
        assert!(evicts_persistent_keys(&info(1 << 30, "allkeys-lru")));
        assert!(evicts_persistent_keys(&info(1 << 30, "allkeys-random")));
        assert!(!evicts_persistent_keys(&info(1 << 30, "volatile-lru")));
        assert!(!evicts_persistent_keys(&info(1 << 30, "noeviction")));
        assert!(!evicts_persistent_keys(&info(0, "allkeys-lru")));
    }

    #[test]
    fn trims_back_off_to_one_write_in_128_and_come_back_to_one_in_8() {
        fastrand::seed(7);
        let pace = TrimPace::default();
        let due = |n: u32| (0..n).filter(|_| pace.due()).count();
        // One in 8 of 80,000 is 10,000, give or take about 100.
        assert!((9_000..11_000).contains(&due(80_000)));
        for every in [16, 32, 64, 128, 128] {
            pace.trimmed(0);
            assert_eq!(pace.every(), every);
        }
        // One in 128 of 1,280,000 is 10,000.
        assert!((9_000..11_000).contains(&due(1_280_000)));
        for every in [64, 32, 16, 8, 8] {
            pace.trimmed(3);
            assert_eq!(pace.every(), every);
        }
    }

    #[test]
    fn drain_sets_are_named_apart_from_indexes() {
        assert_eq!(drain_key("app", "app#ix:users"), "app#drain:users");
        assert_eq!(drain_key("app", "app#ix"), "app#drain");
        assert_ne!(
            drain_key("app", "app#ix:a#drain"),
            index::index_key("app", Some("a#drain"))
        );
    }
}
