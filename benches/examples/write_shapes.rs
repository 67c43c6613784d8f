//! What each shape of an indexed write costs in one round trip, against a plain `SET`: the
//! transaction `set` sends, a plain pipeline of the same commands, fewer commands, a script,
//! and `CacheService::set` itself with the index off and on. A diagnostic for the write
//! path's design (`docs/design/0004-invalidation-index.md`), not a contender of the comparison
//! runner.
//!
//! ```text
//! cargo run --release -p cachekit-benches --example write_shapes [CALLS]
//! ```
//!
//! Sequential writes of a 1,084-byte value over 1,000 keys of one namespace, each shape's
//! `ZADD` an `LT` as `set`'s (so a rewrite leaves its member's score). The shapes take
//! turns call by call, in a new random order each turn, so that a noisy machine's drift
//! reaches them alike (the first tenth of the calls warm up and are not counted). Prints each
//! shape's mean and median latency with their ratios to `SET`, and the server's time per
//! command (`INFO commandstats`). Uses `REDIS_URL` if set, else a private `redis-server`.

use cachekit::CacheService;
use cachekit_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const SHAPES: [&str; 9] = [
    "SET",
    "MULTI SET ZADD SADD EXEC (what set sends)",
    "MULTI SET ZADD EXEC",
    "MULTI SET EXEC",
    "pipeline ZADD SADD SET",
    "pipeline ZADD SET",
    "EVALSHA of SET, ZADD, SADD",
    "CacheService::set, index off",
    "CacheService::set",
];

const SCRIPT: &str = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
     redis.call('ZADD', KEYS[2], 'LT', ARGV[3], ARGV[4]) \
     redis.call('SADD', KEYS[3], KEYS[2]) return 1";

const INDEX: &str = "shapes#ix:users";
const REGISTRY: &str = "shapes#ns";
const TTL: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let calls: u32 = match std::env::args().nth(1).map(|n| n.parse()) {
        None => 20_000,
        Some(Ok(calls)) if calls >= 10 => calls,
        Some(_) => {
            eprintln!("usage: write_shapes [CALLS, at least 10]");
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

/// The services of the last two shapes, on their own connections.
struct Services {
    unindexed: CacheService,
    indexed: CacheService,
}

async fn run(url: &str, calls: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let script = redis::Script::new(SCRIPT);
    let _: String = script.prepare_invoke().load_async(&mut conn).await?;
    let services = Services {
        unindexed: CacheService::builder()
            .redis_url(url)
            .prefix("shapes-off")
            .__diagnostic_unindexed()
            .build()
            .await?,
        indexed: CacheService::builder()
            .redis_url(url)
            .prefix("shapes-on")
            .build()
            .await?,
    };
    // A JSON string of 1,084 bytes, as the raw shapes write.
    let json = "x".repeat(1_082);
    let value = serde_json::to_vec(&json)?;
    let warmup = calls / 10;
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(calls as usize); SHAPES.len()];
    let mut order: Vec<usize> = (0..SHAPES.len()).collect();
    let mut rng = fastrand::Rng::with_seed(0x5EED_5A4E_0001);
    for i in 0..calls {
        rng.shuffle(&mut order);
        for &shape in &order {
            let started = Instant::now();
            write(&mut conn, &services, &script, shape, i, &value, &json).await?;
            if i >= warmup {
                samples[shape].push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let summary = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        (mean, values[values.len() / 2])
    };
    let figures: Vec<(f64, f64)> = samples.iter_mut().map(summary).collect();
    println!(
        "{:45} {:>9} {:>8} {:>9} {:>8}",
        "", "mean", "x SET", "p50", "x SET"
    );
    for (name, (mean, p50)) in SHAPES.iter().zip(&figures) {
        println!(
            "{name:45} {mean:6.1} µs {:7.3}x {p50:6.1} µs {:7.3}x",
            mean / figures[0].0,
            p50 / figures[0].1
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
    services: &Services,
    script: &redis::Script,
    shape: usize,
    i: u32,
    value: &[u8],
    json: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let member = format!("users:{}", i % 1_000);
    if shape >= 7 {
        let cache = if shape == 7 {
            &services.unindexed
        } else {
            &services.indexed
        };
        cache.try_set(&member, json, Some(TTL)).await?;
        return Ok(());
    }
    let key = format!("shapes:{member}");
    let ttl_ms = TTL.as_millis() as u64;
    let expires = u64::from(i) + ttl_ms;
    let mut pipe = redis::pipe();
    let set = |pipe: &mut redis::Pipeline| {
        pipe.cmd("SET").arg(&key).arg(value).arg("PX").arg(ttl_ms);
    };
    let file = |pipe: &mut redis::Pipeline| {
        pipe.cmd("ZADD")
            .arg(INDEX)
            .arg("LT")
            .arg(expires)
            .arg(&member);
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
            file(&mut pipe);
            register(&mut pipe);
            set(&mut pipe);
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
                .arg(ttl_ms)
                .arg(expires)
                .arg(&member);
        }
    }
    pipe.exec_async(conn).await?;
    Ok(())
}
