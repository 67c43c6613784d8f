//! The tracing spans around cache operations and loads: their names and fields (namespace,
//! key as the redaction option has it, hit or miss, tier, lease), read from a subscriber that
//! writes each span when it closes.

use std::time::Duration;

use cachekit::CacheService;
use cachekit_tests::RedisServer;
use cachekit_tests::logs::Captured;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// A subscriber for this thread (the test's current-thread runtime) that writes every span of
/// every level when it closes, with its fields.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let guard = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(captured.clone())
        .finish()
        .set_default();
    (captured, guard)
}

/// The line of the closed span `name` whose fields contain every one of `fields`.
fn closed<'a>(text: &'a str, name: &str, fields: &[&str]) -> Option<&'a str> {
    text.lines().find(|line| {
        line.contains(&format!("{name}{{"))
            && line.contains(": close")
            && fields.iter().all(|field| line.contains(field))
    })
}

#[tokio::test]
async fn cache_operations_and_loads_have_spans_with_their_outcome() {
    let server = RedisServer::start();
    let (captured, _guard) = capture();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("spans")
        .build()
        .await
        .unwrap();
    let load = || async { Ok::<_, std::io::Error>(7u32) };
    cache.get_or_load("users:1", None, load).await.unwrap();
    cache.get_or_load("users:1", None, load).await.unwrap();
    assert_eq!(cache.get::<u32>("users:1").await, Some(7));
    assert_eq!(cache.get::<u32>("users:2").await, None);
    cache
        .set("users:2", &2u32, Some(Duration::from_secs(60)))
        .await;
    assert_eq!(cache.invalidate_pattern("users:*").await, 2);
    let text = captured.text();

    let miss = closed(
        &text,
        "cachekit.get_or_load",
        &[
            r#"namespace="users""#,
            "key=users:1",
            "hit=false",
            r#"lease="taken""#,
        ],
    );
    assert!(miss.is_some(), "{text}");
    assert!(
        closed(
            &text,
            "cachekit.get_or_load",
            &["key=users:1", "hit=true", r#"tier="store""#]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        closed(
            &text,
            "cachekit.load",
            &[r#"namespace="users""#, "key=users:1"]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        closed(
            &text,
            "cachekit.get",
            &["key=users:1", "hit=true", r#"tier="store""#]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        closed(&text, "cachekit.get", &["key=users:2", "hit=false"]).is_some(),
        "{text}"
    );
    assert!(
        closed(&text, "cachekit.set", &["key=users:2"]).is_some(),
        "{text}"
    );
    assert!(
        closed(
            &text,
            "cachekit.invalidate",
            &["pattern=users:*", "removed=2"]
        )
        .is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn spans_follow_the_key_redaction_and_record_a_failed_load() {
    let (captured, _guard) = capture();
    let cache = CacheService::builder()
        .memory(1 << 20)
        .redact_keys(true)
        .build()
        .await
        .unwrap();
    let failed: Result<u32, _> = cache
        .get_or_load("users:ada@example.com", None, || async {
            Err(std::io::Error::other("database down"))
        })
        .await;
    assert!(failed.is_err());
    let text = captured.text();
    assert!(!text.contains("ada@example.com"), "{text}");
    assert!(
        closed(
            &text,
            "cachekit.load",
            &[r#"namespace="users""#, "key=users:#", "failed=true"]
        )
        .is_some(),
        "{text}"
    );
}
