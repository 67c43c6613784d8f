//! What a Redis ACL user needs to run cachekit, and nothing more.

use crate::key::escape_glob;

/// The commands cachekit sends to Redis, as ACL rules: every operation, the invalidation index
/// (its scripts run with the caller's permissions, so the commands they call are here too),
/// health, and the in-process tier's tracking connection. `+hello` and `+auth` are part of
/// making a connection; `+select` of using a database other than 0; the `+cluster|...`
/// commands of a Redis Cluster (its slot map and its state).
///
/// Redis 7.2 and later also know `client|setinfo`, which redis-rs sends when it connects and
/// whose refusal it ignores: add `+client|setinfo` there to keep the server's `ACL LOG` quiet.
pub const ACL_COMMANDS: &[&str] = &[
    "+ping",
    "+hello",
    "+auth",
    "+select",
    "+info",
    "+dbsize",
    "+client|setname",
    "+client|tracking",
    "+cluster|slots",
    "+cluster|info",
    "+get",
    "+getrange",
    "+set",
    "+del",
    "+unlink",
    "+exists",
    "+type",
    "+strlen",
    "+pttl",
    "+pexpire",
    "+pexpiretime",
    "+rename",
    "+scan",
    "+multi",
    "+exec",
    "+evalsha",
    "+script|load",
    "+zadd",
    "+zrem",
    "+zcard",
    "+zrange",
    "+zrangebyscore",
    "+zremrangebyrank",
    "+zscan",
    "+sadd",
    "+srem",
    "+smembers",
    "+srandmember",
];

/// The ACL rules of a Redis user that can run a service with key prefix `prefix` and touch
/// nothing else: its keys (`{prefix}:*`) and its index's (`{prefix}#*`), no pub/sub channel,
/// and the [commands](ACL_COMMANDS) cachekit sends. Give them to `ACL SETUSER` after the user's
/// `on` and password, one argument each (a prefix with a space stays one argument).
///
/// ```
/// let rules = cachekit::acl_rules("app");
/// assert_eq!(rules[..4], ["resetkeys", "~app:*", "~app#*", "resetchannels"]);
/// assert!(rules.contains(&"+getrange".to_string()));
/// // ACL SETUSER app on >password resetkeys ~app:* ~app#* resetchannels -@all +ping ...
/// ```
pub fn acl_rules(prefix: &str) -> Vec<String> {
    let prefix = escape_glob(prefix);
    let mut rules = vec![
        "resetkeys".to_string(),
        format!("~{prefix}:*"),
        format!("~{prefix}#*"),
        "resetchannels".to_string(),
        "-@all".to_string(),
    ];
    rules.extend(ACL_COMMANDS.iter().map(|command| command.to_string()));
    rules
}
