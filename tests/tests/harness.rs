//! Tests of the test harness itself: `RedisServer` lifecycle against real `redis-server`s.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

use cachekit_tests::{RedisServer, init_tracing};
use redis::AsyncCommands;
use tokio::time::timeout;

/// Long enough for any local PING to be answered; a paused server must not answer within it.
const PING_TIMEOUT: Duration = Duration::from_millis(200);

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[test]
fn servers_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisServer>();
}

#[tokio::test]
async fn starts_and_answers_ping() {
    init_tracing();
    let server = RedisServer::start();
    assert!(server.is_running());
    assert_ne!(server.port(), 6379, "must never use the shared Redis");
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/0", server.port())
    );
    assert_eq!(
        server.url_db(3),
        format!("redis://127.0.0.1:{}/3", server.port())
    );
    let mut conn = server.connection().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

#[test]
fn sync_client_works_without_a_runtime() {
    let server = RedisServer::start();
    let mut conn = server.client().get_connection().unwrap();
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let value: String = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
    assert_eq!(value, "v");
}

#[tokio::test]
async fn persists_nothing() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(save, ["save", ""]);
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(aof, ["appendonly", "no"]);
}

#[tokio::test]
async fn kill_refuses_connections() {
    let server = RedisServer::start();
    server.kill();
    assert!(!server.is_running());
    let error = TcpStream::connect(server.addr()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
    let client = redis::Client::open(server.url()).unwrap();
    assert!(client.get_multiplexed_async_connection().await.is_err());
    server.kill(); // a second kill is a no-op
}

#[tokio::test]
async fn pause_stops_answers_until_resume() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

    server.pause();
    assert!(server.is_running(), "a paused server is still alive");
    assert!(
        timeout(PING_TIMEOUT, ping(&mut conn)).await.is_err(),
        "a paused server must not answer"
    );

    server.resume();
    let mut fresh = server.connection().await;
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn restart_uses_the_same_port_and_starts_empty() {
    let server = RedisServer::start();
    let port = server.port();
    let mut conn = server.connection().await;
    let () = conn.set("k", "v").await.unwrap();

    server.kill();
    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let mut conn = server.connection().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    let value: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(value, None, "a restarted server is empty");
}

#[tokio::test]
async fn restart_kills_a_paused_server_first() {
    let server = RedisServer::start();
    server.pause();
    server.restart();
    let mut conn = server.connection().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

#[test]
fn servers_get_different_ports() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    assert_ne!(first.port(), second.port());
    assert!(first.is_running() && second.is_running());
}

#[test]
fn drop_kills_a_paused_server() {
    let server = RedisServer::start();
    let addr = server.addr();
    server.pause();
    drop(server);
    let error = TcpStream::connect(addr).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn password_protected_server() {
    let server = RedisServer::start_with_args(&["--requirepass", "s3cret:@/"]);
    assert!(
        !server.url().contains("s3cret"),
        "url() carries no credentials"
    );

    // The harness's own client authenticates with the --requirepass password.
    let mut conn = server.connection().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

    let anonymous = redis::Client::open(server.url()).unwrap();
    let anonymous_ping = async {
        let mut conn = anonymous.get_multiplexed_async_connection().await?;
        ping(&mut conn).await
    };
    assert!(anonymous_ping.await.is_err(), "no password, no answer");

    let url = server.url_with_auth(None, "s3cret:@/");
    let authed = redis::Client::open(url).unwrap();
    let mut authed = authed.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(ping(&mut authed).await.unwrap(), "PONG");
}

#[tokio::test]
async fn acl_user_server() {
    let server =
        RedisServer::start_with_args(&["--user", "alice", "on", ">wonder", "~*", "&*", "+@all"]);
    let url = server.url_with_auth(Some("alice"), "wonder");
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(whoami, "alice");

    let wrong = redis::Client::open(server.url_with_auth(Some("alice"), "nope")).unwrap();
    assert!(wrong.get_multiplexed_async_connection().await.is_err());
}

#[test]
#[should_panic(expected = "redis-server exited")]
fn rejected_arguments_panic_with_the_log() {
    let _server = RedisServer::start_with_args(&["--no-such-option", "1"]);
}

#[test]
fn debug_output_hides_arguments() {
    let server = RedisServer::start_with_args(&["--requirepass", "hunter2"]);
    let debug = format!("{server:?}");
    assert!(debug.contains(&server.port().to_string()));
    assert!(!debug.contains("hunter2"));
}
