//! A steady loop of Redis hits by one contender, to count what each costs under a profiler.
//!
//! ```text
//! cargo build --release -p cachekit-benches --example hit_loop
//! valgrind --tool=callgrind target/release/examples/hit_loop get 20000
//! ```
//!
//! Contenders: `raw`, `manager`, `manager-timeout`, `get`, `get-unguarded`, `cached`,
//! `cached-crate`, `embedded-get`, `embedded-cached`, `decode` (see `cachekit_benches::names`). Uses
//! `REDIS_URL` if set, else a private `redis-server`. Instructions per call: run with two call
//! counts and divide the difference.

use cachekit_benches::names::*;
use cachekit_tests::RedisServer;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [contender, calls] = args.as_slice() else {
        eprintln!("usage: hit_loop CONTENDER CALLS");
        return ExitCode::from(2);
    };
    let name = match contender.as_str() {
        "raw" => RAW,
        "manager" => RAW_MANAGER,
        "manager-timeout" => RAW_MANAGER_TIMEOUT,
        "get" => SERVICE_GET,
        "get-unguarded" => SERVICE_GET_UNGUARDED,
        "cached" => MACRO,
        "cached-crate" => CACHED_CRATE,
        "embedded-get" => MEMORY_GET,
        "embedded-cached" => MEMORY_MACRO,
        "decode" => DECODE_ONLY,
        other => {
            eprintln!("hit_loop: unknown contender `{other}`");
            return ExitCode::from(2);
        }
    };
    let Ok(calls) = calls.parse() else {
        eprintln!("hit_loop: CALLS must be a number");
        return ExitCode::from(2);
    };
    let server = std::env::var("REDIS_URL").is_err().then(RedisServer::start);
    let url = server.as_ref().map_or_else(
        || std::env::var("REDIS_URL").unwrap_or_default(),
        RedisServer::url,
    );
    match cachekit_benches::hit_loop(&url, name, calls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hit_loop: {error}");
            ExitCode::FAILURE
        }
    }
}
