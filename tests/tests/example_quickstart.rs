//! The `quickstart` binary, run as a user runs it: against a private `redis-server`, on the
//! embedded store with nothing configured, and with its Redis down. Its output must show a
//! miss, a hit, an invalidation, another miss and hit, and the statistics.
//!
//! The program is `examples/src/bin/quickstart.rs`, built by this package as the binary
//! `quickstart-under-test` (see `tests/Cargo.toml`), so cargo builds it before this test.

use std::process::Command;

use cachekit_tests::{RedisServer, init_tracing};

/// Environment variables that configure the quickstart's cache: cleared for each run, so a
/// developer's own `REDIS_URL` never leaks in.
const CACHE_VARIABLES: &[&str] = &[
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_SSL",
    "REDIS_ENABLED",
    "CACHE_BACKEND",
    "CACHE_PREFIX",
    "CACHE_TTL",
    "CACHE_FALLBACK",
];

/// Runs the quickstart with `env` on top of a cleared cache configuration; its stdout.
fn run(env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quickstart-under-test"));
    for name in CACHE_VARIABLES {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "error").envs(env.iter().copied());
    let output = command.output().expect("the quickstart starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the quickstart failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The line starting with `label`.
fn line<'a>(output: &'a str, label: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{output}"))
}

/// The miss, hit, invalidation, miss, hit sequence every healthy run prints.
fn assert_miss_hit_invalidate(output: &str) {
    let first = line(output, "first read");
    assert!(
        first.contains(" miss ") && first.contains("\"Ada\""),
        "{output}"
    );
    let second = line(output, "second read");
    assert!(
        second.contains(" hit ") && second.contains("\"Ada\""),
        "{output}"
    );
    line(output, "renamed user 1: users:1 invalidated");
    let after = line(output, "after write");
    assert!(
        after.contains(" miss ") && after.contains("\"Ada Lovelace\""),
        "{output}"
    );
    let again = line(output, "again");
    assert!(
        again.contains(" hit ") && again.contains("\"Ada Lovelace\""),
        "{output}"
    );
    let stats = line(output, "stats:");
    assert!(stats.contains("hits=2 misses=2 hit_rate=0.50"), "{output}");
    assert!(stats.contains("errors=0"), "{output}");
}

#[test]
fn against_redis_it_shows_a_miss_a_hit_an_invalidation_and_stats() {
    init_tracing();
    let server = RedisServer::start();
    let output = run(&[("REDIS_URL", &server.url()), ("CACHE_PREFIX", "qs")]);
    assert!(output.starts_with("backend: redis, prefix: qs"), "{output}");
    assert_miss_hit_invalidate(&output);
    assert!(
        line(&output, "health:").contains("connected=true"),
        "{output}"
    );

    // The value it left behind is the user's JSON under the prefixed key.
    let mut conn = server.client().get_connection().unwrap();
    let stored: Option<String> = redis::cmd("GET")
        .arg("qs:users:1")
        .query(&mut conn)
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored.expect("qs:users:1")).unwrap();
    assert_eq!(stored, serde_json::json!({"id": 1, "name": "Ada Lovelace"}));

    // A second run starts from a cold key again.
    assert_miss_hit_invalidate(&run(&[
        ("REDIS_URL", &server.url()),
        ("CACHE_PREFIX", "qs"),
    ]));
}

#[test]
fn with_nothing_configured_it_runs_on_the_embedded_store() {
    init_tracing();
    let output = run(&[]);
    assert!(
        output.starts_with("backend: memory, prefix: cachekit"),
        "{output}"
    );
    assert_miss_hit_invalidate(&output);
}

#[test]
fn with_its_redis_down_it_still_answers_every_read() {
    init_tracing();
    let server = RedisServer::start();
    let url = server.url();
    server.kill();
    let output = run(&[("REDIS_URL", &url)]);
    assert!(output.starts_with("backend: redis"), "{output}");
    for label in ["first read", "second read", "after write", "again"] {
        assert!(line(&output, label).contains(" miss "), "{output}");
    }
    assert!(line(&output, "first read").contains("\"Ada\""), "{output}");
    assert!(
        line(&output, "after write").contains("\"Ada Lovelace\""),
        "{output}"
    );
    assert!(!line(&output, "stats:").contains("errors=0"), "{output}");
    assert!(
        line(&output, "health:").contains("connected=false"),
        "{output}"
    );
}

#[test]
fn its_logs_to_a_pipe_carry_no_colour_codes() {
    init_tracing();
    let server = RedisServer::start();
    let url = server.url();
    server.kill();
    // Info level, Redis down: the start-up line and the fallback warnings are logged.
    let output = run(&[("REDIS_URL", &url), ("RUST_LOG", "info")]);
    assert!(output.contains("cachekit: using Redis at"), "{output}");
    assert!(output.contains("WARN"), "{output}");
    assert!(
        !output.contains('\u{1b}'),
        "ANSI escape codes in piped logs:\n{output}"
    );
}
