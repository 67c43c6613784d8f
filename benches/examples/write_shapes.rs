//! What each shape of an indexed write costs in one round trip, against a plain `SET`: the
//! transaction `set` sends, a plain pipeline of the same commands, fewer commands, and a script.
//! A diagnostic for the write path's design (`docs/design/0004-invalidation-index.md`), not a
//! contender of the comparison runner.
//!
//! ```text
//! cargo run --release -p cachekit-benches --example write_shapes [CALLS_PER_ROUND]
//! ```
//!
//! Sequential writes of a 1,084-byte value over 1,000 keys of one namespace, the shapes taking
//! turns round by round (ten rounds, the first discarded); prints each shape's mean latency,
//! its ratio to `SET` over the same rounds, and the server's time per command
//! (`INFO commandstats`). Uses `REDIS_URL` if set, else a private `redis-server`.

use cachekit_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const SHAPES: [&str; 7] = [
    "SET",
    "MULTI SET ZADD SADD EXEC (what set sends)",
    "MULTI SET ZADD EXEC",
    "MULTI SET EXEC",
    "pipeline SET ZADD SADD",
    "pipeline ZADD SET",
    "EVALSHA of SET, ZADD, SADD",
];

const SCRIPT: &str = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
     redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) \
     redis.call('SADD', KEYS[3], KEYS[2]) return 1";

const INDEX: &str = "shapes#ix:users";
const REGISTRY: &str = "shapes#ns";
const TTL_MS: u64 = 60_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let calls: u32 = match std::env::args().nth(1).map(|n| n.parse()) {
        None => 2_000,
        Some(Ok(calls)) if calls > 0 => calls,
        Some(_) => {
            eprintln!("usage: write_shapes [CALLS_PER_ROUND]");
            return ExitCode::from(2);
        }
    };
    let server = std::env::var("REDIS_URL").is_err().then(RedisServer::start);
    let url = server.as_ref().map_or_else(
        || std::env::var("REDIS_URL").unwrap_or_default(),
        RedisServer::url,
    );
    match run(&url, calls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("write_shapes: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, calls: u32) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let script = redis::Script::new(SCRIPT);
    let _: String = script.prepare_invoke().load_async(&mut conn).await?;
    let value = vec![b'x'; 1_084];
    let mut totals = [Duration::ZERO; SHAPES.len()];
    for round in 0..10 {
        for (shape, total) in totals.iter_mut().enumerate() {
            let started = Instant::now();
            for i in 0..calls {
                write(&mut conn, &script, shape, i, &value).await?;
            }
            if round > 0 {
                *total += started.elapsed();
            }
        }
    }
    let per_call = |total: Duration| total.as_secs_f64() * 1e6 / f64::from(calls * 9);
    for (name, total) in SHAPES.iter().zip(totals) {
        println!(
            "{name:45} {:7.1} µs  {:.3}x SET",
            per_call(total),
            total.as_secs_f64() / totals[0].as_secs_f64()
        );
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    for line in stats.lines().filter(|line| {
        ["set:", "zadd:", "sadd:", "multi:", "exec:", "evalsha:"]
            .iter()
            .any(|command| line.starts_with(&format!("cmdstat_{command}")))
    }) {
        println!("{line}");
    }
    Ok(())
}

async fn write(
    conn: &mut MultiplexedConnection,
    script: &redis::Script,
    shape: usize,
    i: u32,
    value: &[u8],
) -> redis::RedisResult<()> {
    let member = format!("users:{}", i % 1_000);
    let key = format!("shapes:{member}");
    let expires = u64::from(i) + TTL_MS;
    let mut pipe = redis::pipe();
    let set = |pipe: &mut redis::Pipeline| {
        pipe.cmd("SET").arg(&key).arg(value).arg("PX").arg(TTL_MS);
    };
    let file = |pipe: &mut redis::Pipeline| {
        pipe.cmd("ZADD").arg(INDEX).arg(expires).arg(&member);
    };
    let register = |pipe: &mut redis::Pipeline| {
        pipe.cmd("SADD").arg(REGISTRY).arg(INDEX);
    };
    match shape {
        0 => set(&mut pipe),
        1 => {
            pipe.atomic();
            set(&mut pipe);
            file(&mut pipe);
            register(&mut pipe);
        }
        2 => {
            pipe.atomic();
            set(&mut pipe);
            file(&mut pipe);
        }
        3 => {
            pipe.atomic();
            set(&mut pipe);
        }
        4 => {
            set(&mut pipe);
            file(&mut pipe);
            register(&mut pipe);
        }
        5 => {
            file(&mut pipe);
            set(&mut pipe);
        }
        _ => {
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(3)
                .arg(&key)
                .arg(INDEX)
                .arg(REGISTRY)
                .arg(value)
                .arg(TTL_MS)
                .arg(expires)
                .arg(&member);
        }
    }
    pipe.exec_async(conn).await
}
