//! TLS to Redis, against a redis-server started here with a CA and certificates generated for
//! the test: a private CA trusted through the builder and the environment, mutual TLS, the
//! in-process tier's channel over TLS, and each way a handshake can fail (an unknown CA, a
//! host name the certificate does not name, a plain-text server, a missing client
//! certificate), which must degrade like any other unreachable Redis: the service builds,
//! reads miss, the loader runs, health says why, and nothing hangs.

use std::collections::HashMap;
use std::time::Duration;

use cachekit::{CacheConfig, CacheService, CacheServiceBuilder};
use cachekit_tests::tls::{Pki, TlsRedis};
use cachekit_tests::{raw, within};

const BOUND: Duration = Duration::from_secs(10);

/// Every operation of a service that reached Redis over TLS, checked against the plain-text
/// side of the same server.
async fn exercise(cache: &CacheService, server: &TlsRedis, prefix: &str) {
    let health = cache.health().await;
    assert!(health.connected, "{prefix}: {:?}", health.error);
    assert!(cache.set("users:1", &"ada", None).await, "{prefix}");
    assert!(cache.set("users:2", &"grace", None).await, "{prefix}");
    assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("ada"));
    let mut conn = server.server().connection().await;
    assert!(raw::exists(&mut conn, &format!("{prefix}:users:1")).await);
    let loaded = cache
        .get_or_load("orders:1", None, || async {
            Ok::<_, std::io::Error>(41u32)
        })
        .await
        .unwrap();
    assert_eq!(loaded, 41);
    assert!(raw::exists(&mut conn, &format!("{prefix}:orders:1")).await);
    assert!(cache.delete("users:2").await);
    assert!(!raw::exists(&mut conn, &format!("{prefix}:users:2")).await);
    assert_eq!(cache.invalidate_pattern("users:*").await, 1);
    assert!(!raw::exists(&mut conn, &format!("{prefix}:users:1")).await);
    assert!(cache.clear_all().await >= 1);
    assert!(!raw::exists(&mut conn, &format!("{prefix}:orders:1")).await);
    assert_eq!(cache.stats().errors, 0, "{prefix}");
}

/// A service that could not complete its TLS handshake: it answers from the loader, and its
/// health names the cause, which must contain `expected` (lowercase).
async fn assert_degraded(cache: &CacheService, expected: &[&str]) -> String {
    assert_eq!(within(BOUND, "get", cache.get::<String>("k")).await, None);
    let loaded = within(
        BOUND,
        "get_or_load",
        cache.get_or_load("k", None, || async { Ok::<_, std::io::Error>(7u8) }),
    )
    .await
    .expect("the loader's value");
    assert_eq!(loaded, 7);
    let health = within(BOUND, "health", cache.health()).await;
    assert!(!health.connected);
    let error = health.error.expect("health says why");
    let lower = error.to_lowercase();
    assert!(
        expected.iter().any(|word| lower.contains(word)),
        "the error names the cause ({expected:?}): {error}"
    );
    error
}

async fn build(builder: CacheServiceBuilder) -> CacheService {
    within(BOUND, "build", builder.build())
        .await
        .expect("a service builds even when its Redis cannot be reached")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_from_the_builder_and_the_environment() {
    cachekit_tests::init_tracing();
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, false);

    let cache = build(
        CacheService::builder()
            .redis_url(server.url("localhost"))
            .tls_ca_file(pki.ca_file())
            .prefix("builder"),
    )
    .await;
    exercise(&cache, &server, "builder").await;

    // The same from the environment's parts, with the in-process tier, whose invalidation
    // channel is a second TLS connection.
    let vars = HashMap::from([
        ("REDIS_HOST", "localhost".to_string()),
        ("REDIS_PORT", server.tls_port().to_string()),
        ("REDIS_SSL", "true".to_string()),
        ("REDIS_TLS_CA_FILE", pki.ca_file().display().to_string()),
        ("CACHE_PREFIX", "env".to_string()),
        ("CACHE_LOCAL_TTL_MS", "60000".to_string()),
    ]);
    let config = CacheConfig::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let cache = within(BOUND, "build", CacheService::from_config(config))
        .await
        .unwrap();
    exercise(&cache, &server, "env").await;

    // The tier serves once its channel is up, and a write by another client evicts it.
    let mut conn = server.server().connection().await;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        assert!(cache.set("tier:1", &"v1", None).await);
        let _ = cache.get::<String>("tier:1").await;
        let _ = cache.get::<String>("tier:1").await;
        if cache.stats().local_hits > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tier never served over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    raw::set(&mut conn, "env:tier:1", "\"v2\"").await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while cache.get::<String>("tier:1").await.as_deref() != Some("v2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tier kept the old value after a raw SET"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    cachekit_tests::init_tracing();
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, true);

    let cache = build(
        CacheService::builder()
            .redis_url(server.url("localhost"))
            .tls_ca_file(pki.ca_file())
            .tls_client_cert(pki.client_cert(), pki.client_key())
            .prefix("mtls"),
    )
    .await;
    exercise(&cache, &server, "mtls").await;

    let vars = HashMap::from([
        ("REDIS_URL", server.url("localhost")),
        ("REDIS_TLS_CA_FILE", pki.ca_file().display().to_string()),
        (
            "REDIS_TLS_CERT_FILE",
            pki.client_cert().display().to_string(),
        ),
        ("REDIS_TLS_KEY_FILE", pki.client_key().display().to_string()),
        ("CACHE_PREFIX", "mtls-env".to_string()),
    ]);
    let config = CacheConfig::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let cache = within(BOUND, "build", CacheService::from_config(config))
        .await
        .unwrap();
    exercise(&cache, &server, "mtls-env").await;

    // Without the client certificate, the server ends the handshake.
    let cache = build(
        CacheService::builder()
            .redis_url(server.url("localhost"))
            .tls_ca_file(pki.ca_file())
            .prefix("no-client-cert"),
    )
    .await;
    let error = assert_degraded(&cache, &["certificate", "tls", "connection"]).await;
    eprintln!("without a client certificate: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_handshake_degrades_with_a_clear_error() {
    cachekit_tests::init_tracing();
    let pki = Pki::generate();
    let other = Pki::generate();
    let server = TlsRedis::start_with_args(&pki, false, &["--requirepass", "s3cret"]);

    let cases: [(&str, CacheServiceBuilder, &[&str]); 4] = [
        (
            "a CA that did not sign the server's certificate",
            CacheService::builder()
                .redis_url(format!(
                    "rediss://:s3cret@localhost:{}/0",
                    server.tls_port()
                ))
                .tls_ca_file(other.ca_file()),
            &["certificate"],
        ),
        (
            "the system trust store, which does not know the private CA",
            CacheService::builder().redis_url(format!(
                "rediss://:s3cret@localhost:{}/0",
                server.tls_port()
            )),
            &["certificate"],
        ),
        (
            "a host name the certificate does not name",
            CacheService::builder()
                .redis_url(format!(
                    "rediss://:s3cret@127.0.0.1:{}/0",
                    server.tls_port()
                ))
                .tls_ca_file(pki.ca_file()),
            &["name", "certificate"],
        ),
        (
            "a server that speaks plain text",
            CacheService::builder()
                .redis_url(format!(
                    "rediss://:s3cret@localhost:{}/0",
                    server.server().port()
                ))
                .tls_ca_file(pki.ca_file()),
            &["speaks tls", "plain"],
        ),
    ];
    for (what, builder, expected) in cases {
        let cache = build(builder.prefix("failing")).await;
        let error = assert_degraded(&cache, expected).await;
        eprintln!("{what}: {error}");
        assert!(!error.contains("s3cret"), "{what}: {error}");
        assert!(!format!("{cache:?}").contains("s3cret"), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_are_configuration_errors_naming_the_file() {
    let pki = Pki::generate();
    let missing = pki.dir().join("missing.pem");
    let not_pem = pki.dir().join("not-pem.txt");
    std::fs::write(&not_pem, "this is not a certificate").unwrap();
    let url = "rediss://localhost:6380";

    let cases = [
        (
            CacheService::builder().redis_url(url).tls_ca_file(&missing),
            "missing.pem",
        ),
        (
            CacheService::builder().redis_url(url).tls_ca_file(&not_pem),
            "no PEM certificate",
        ),
        (
            CacheService::builder()
                .redis_url(url)
                .tls_client_cert(pki.client_cert(), &not_pem),
            "no PEM private key",
        ),
        (
            CacheService::builder()
                .redis_url("redis://localhost:6379")
                .tls_ca_file(pki.ca_file()),
            "not TLS",
        ),
        (
            CacheService::builder()
                .memory(1 << 20)
                .tls_ca_file(pki.ca_file()),
            "not Redis",
        ),
    ];
    for (builder, expected) in cases {
        let error = within(BOUND, "build", builder.build()).await.unwrap_err();
        assert!(
            matches!(error, cachekit::CacheError::Config(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }

    // The key's contents never appear in an error, even when the key file is what is wrong
    // with the configuration.
    let key = std::fs::read_to_string(pki.client_key()).unwrap();
    let error = within(
        BOUND,
        "build",
        CacheService::builder()
            .redis_url(url)
            .tls_client_cert(pki.client_key(), pki.client_key())
            .build(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
    assert!(!error.to_string().contains(key.lines().nth(1).unwrap()));

    let vars = HashMap::from([
        ("REDIS_URL", url.to_string()),
        (
            "REDIS_TLS_CERT_FILE",
            pki.client_cert().display().to_string(),
        ),
    ]);
    let error = CacheConfig::from_lookup(|name| vars.get(name).cloned()).unwrap_err();
    assert!(error.to_string().contains("REDIS_TLS_KEY_FILE"), "{error}");
}
