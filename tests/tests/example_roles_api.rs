//! The `roles_api` example end to end: the app started in-process on `127.0.0.1:0` over a fresh
//! in-memory SQLite database, real HTTP requests, and a private `redis-server` per test. Checks
//! the seed document's behaviour: `"cached"` false then true, invalidation after adding and
//! deleting a role, the admin invalidations and their `deleted_count`, JSON 4xx answers to bad
//! input, `/health`, `/cache/stats`, a graceful shutdown, and correct answers with Redis killed
//! halfway.

use std::net::SocketAddr;
use std::time::Duration;

use cachekit::CacheService;
use cachekit_examples::roles_api;
use cachekit_tests::{RedisServer, init_tracing, raw};
use example_support::kill;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod example_support;

const PREFIX: &str = "roles";
/// How long one request may take before the test calls it hung. Generous: with Redis down,
/// a request waits at most for cachekit's operation timeouts (250 ms each) until the breaker
/// opens.
const REQUEST_BOUND: Duration = Duration::from_secs(5);

/// The example app, serving on a free loopback port until [`stop`](App::stop).
struct App {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl App {
    async fn start(cache: CacheService) -> Self {
        let app = roles_api::app(cache, "sqlite::memory:")
            .await
            .expect("the database opens and is seeded");
        Self::serve(app).await
    }

    async fn serve(app: axum::Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(roles_api::serve(listener, app, async {
            let _ = stop.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            client,
            shutdown,
            task,
        }
    }

    /// `GET path`, answered 200 with a text body.
    async fn text(&self, path: &str) -> String {
        let (status, bytes) = self.request(Method::GET, path, None, "").await;
        assert_eq!(status, StatusCode::OK, "GET {path}");
        String::from_utf8(bytes.to_vec()).expect("UTF-8 text")
    }

    /// Sends a request and returns the status and the body, within [`REQUEST_BOUND`].
    async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (StatusCode, Bytes) {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        let response = tokio::time::timeout(REQUEST_BOUND, self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} did not answer within {REQUEST_BOUND:?}"))
            .unwrap_or_else(|error| panic!("{method} {path} failed: {error}"));
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body arrives")
            .to_bytes();
        (status, bytes)
    }

    /// Sends a request and returns the status and the JSON body (every answer must be JSON).
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.request(method.clone(), path, content_type, body).await;
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            panic!(
                "{method} {path} answered {status} with a body that is not JSON ({error}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None, "").await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::DELETE, path, None, "").await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            path,
            Some("application/json"),
            &body.to_string(),
        )
        .await
    }

    /// `GET /role/get/{user_id}`, which must succeed: `(cached, role names)`.
    async fn roles(&self, user_id: i64) -> (bool, Vec<String>) {
        let (status, body) = self.get(&format!("/role/get/{user_id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(body["token_refreshed"], false, "{body}");
        let cached = body["cached"].as_bool().expect("`cached` is a boolean");
        let names = body["data"]
            .as_array()
            .expect("`data` is an array")
            .iter()
            .map(|role| {
                assert_eq!(role["user_id"], user_id, "{role}");
                role["role"].as_str().expect("a role name").to_owned()
            })
            .collect();
        (cached, names)
    }

    /// `POST /role/add`, which must succeed: the new assignment's id.
    async fn add(&self, user_id: i64, role: &str) -> i64 {
        let (status, body) = self
            .post("/role/add", &json!({"user_id": user_id, "role": role}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(body["data"]["role"], role, "{body}");
        body["data"]["role_id"].as_i64().expect("a role id")
    }

    /// Triggers the graceful shutdown and waits for the server to finish.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(REQUEST_BOUND, self.task)
            .await
            .expect("the server stops after its shutdown signal")
            .expect("the server task did not panic")
            .expect("the server ran without I/O errors");
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "the port is closed after the shutdown"
        );
    }
}

async fn redis_cache(server: &RedisServer) -> CacheService {
    example_support::redis_cache(server, PREFIX).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_cached_and_invalidated_by_writes() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let app = App::start(redis_cache(&server).await).await;

    // A miss, then a hit; the value is the role list's JSON under the seed's key.
    assert_eq!(
        app.roles(1).await,
        (false, vec!["admin".into(), "editor".into()])
    );
    assert_eq!(
        app.roles(1).await,
        (true, vec!["admin".into(), "editor".into()])
    );
    let stored = raw::get::<Option<String>>(&mut conn, "roles:user_roles:1")
        .await
        .expect("user 1's roles are in Redis");
    let stored: Value = serde_json::from_str(&stored).expect("the value is JSON");
    assert_eq!(stored[1]["role"], "editor");

    // Adding a role invalidates that user's entry, and only theirs.
    assert!(!app.roles(2).await.0);
    assert!(app.roles(2).await.0);
    let auditor = app.add(1, "auditor").await;
    assert!(
        raw::get::<Option<String>>(&mut conn, "roles:user_roles:1")
            .await
            .is_none()
    );
    assert_eq!(
        app.roles(1).await,
        (
            false,
            vec!["admin".into(), "editor".into(), "auditor".into()]
        )
    );
    assert!(app.roles(1).await.0);
    assert!(app.roles(2).await.0, "user 2's entry is untouched");

    // Deleting one invalidates it again.
    let (status, body) = app.delete(&format!("/role/{auditor}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["user_id"], 1);
    assert_eq!(
        app.roles(1).await,
        (false, vec!["admin".into(), "editor".into()])
    );
    assert!(app.roles(1).await.0);

    // A user without roles gets (and caches) an empty list.
    assert_eq!(app.roles(4).await, (false, vec![]));
    assert_eq!(app.roles(4).await, (true, vec![]));

    // The admin endpoints: one user, then all.
    let (status, body) = app.delete("/role/cache/1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Cache invalidated for user 1");
    assert!(!app.roles(1).await.0);
    assert!(!app.roles(3).await.0);
    let cached = raw::keys(&mut conn, "roles:user_roles:*").await;
    assert_eq!(
        cached,
        [
            "roles:user_roles:1",
            "roles:user_roles:2",
            "roles:user_roles:3",
            "roles:user_roles:4"
        ]
    );
    let (status, body) = app.delete("/role/cache/all").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted_count"], 4, "{body}");
    assert_eq!(body["message"], "Invalidated 4 cached entries");
    assert!(raw::keys(&mut conn, "roles:user_roles:*").await.is_empty());
    for user in 1..=4 {
        assert!(!app.roles(user).await.0);
    }
    let (_, body) = app.delete("/role/cache/all").await;
    assert_eq!(body["deleted_count"], 4);
    let (_, body) = app.delete("/role/cache/all").await;
    assert_eq!(body["deleted_count"], 0);

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_4xx_answers() {
    init_tracing();
    let server = RedisServer::start();
    let app = App::start(redis_cache(&server).await).await;

    let json = Some("application/json");
    let cases: Vec<(Method, &str, Option<&str>, &str, StatusCode)> = vec![
        (
            Method::GET,
            "/role/get/abc",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/role/get/1.5",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/role/get/99999999999999999999",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/role/get/999",
            None,
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/role/abc",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (Method::DELETE, "/role/999", None, "", StatusCode::NOT_FOUND),
        (
            Method::DELETE,
            "/role/cache/abc",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/role/add",
            json,
            "{",
            StatusCode::BAD_REQUEST,
        ),
        (Method::POST, "/role/add", json, "", StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/role/add",
            json,
            "[1, 2]",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/role/add",
            json,
            r#"{"user_id": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/role/add",
            json,
            r#"{"user_id": "one", "role": "viewer"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/role/add",
            json,
            r#"{"user_id": 1, "role": "superhero"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/role/add",
            json,
            r#"{"user_id": 999, "role": "viewer"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/role/add",
            json,
            r#"{"user_id": 1, "role": "admin"}"#,
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/role/add",
            None,
            r#"{"user_id": 1, "role": "viewer"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Method::GET,
            "/role/add",
            None,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/no/such/route",
            None,
            "",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, content_type, body, expected) in cases {
        let (status, answer) = app.send(method.clone(), path, content_type, body).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        assert_eq!(answer["success"], false, "{method} {path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path} {body}: {answer}"
        );
    }

    // None of that was cached or changed anything: the unknown user stays unknown (an error
    // is never cached), user 1 still has exactly their two roles, and the app still answers.
    let mut conn = server.connection().await;
    assert!(
        raw::get::<Option<String>>(&mut conn, "roles:user_roles:999")
            .await
            .is_none()
    );
    assert_eq!(
        app.roles(1).await,
        (false, vec!["admin".into(), "editor".into()])
    );
    let (status, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_stats_report_the_cache() {
    init_tracing();
    let server = RedisServer::start();
    let app = App::start(redis_cache(&server).await).await;

    let (status, health) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["database"], "connected", "{health}");
    assert_eq!(health["redis"], "connected", "{health}");
    assert_eq!(health["backend"], "redis", "{health}");
    assert!(
        health["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{health}"
    );
    assert_eq!(health["cache"]["connected"], true, "{health}");
    let endpoint = format!("127.0.0.1:{}/0", server.port());
    assert_eq!(health["cache"]["endpoint"], endpoint.as_str(), "{health}");

    app.roles(1).await; // miss
    app.roles(1).await; // hit
    app.roles(2).await; // miss
    app.roles(1).await; // hit
    let (status, stats) = app.get("/cache/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["hits"], 2, "{stats}");
    assert_eq!(stats["misses"], 2, "{stats}");
    assert_eq!(stats["sets"], 2, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
    assert_eq!(stats["hit_rate"], 0.5, "{stats}");
    assert_eq!(stats["backend"], "redis", "{stats}");

    let (_, health) = app.get("/health").await;
    // DBSIZE: the two entries, and the invalidation index's keys beside them.
    let mut conn = server.connection().await;
    let dbsize = raw::dbsize(&mut conn).await;
    assert_eq!(health["cache"]["server"]["db_keys"], dbsize, "{health}");
    let entries = raw::keys(&mut conn, "*").await;
    let entries: Vec<&String> = entries.iter().filter(|k| !k.contains('#')).collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    app.stop().await;
}

/// With Redis killed halfway, every request still answers correctly from the database, writes
/// are visible at once, `/health` says "degraded", and the admin invalidation answers 503
/// rather than claim a removal it could not make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_answers_correctly_with_redis_killed_halfway() {
    init_tracing();
    let server = RedisServer::start();
    let app = App::start(redis_cache(&server).await).await;

    let billing = app.add(3, "billing").await;
    assert_eq!(
        app.roles(3).await,
        (false, vec!["viewer".into(), "billing".into()])
    );
    assert!(app.roles(3).await.0);
    assert!(!app.roles(1).await.0);

    kill(&server);

    for _ in 0..3 {
        assert_eq!(
            app.roles(3).await,
            (false, vec!["viewer".into(), "billing".into()])
        );
        assert_eq!(
            app.roles(1).await,
            (false, vec!["admin".into(), "editor".into()])
        );
    }
    let editor = app.add(3, "editor").await;
    assert_eq!(
        app.roles(3).await,
        (
            false,
            vec!["viewer".into(), "billing".into(), "editor".into()]
        )
    );
    let (status, body) = app.delete(&format!("/role/{billing}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.delete(&format!("/role/{editor}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.roles(3).await, (false, vec!["viewer".into()]));

    // Bad input is still a 4xx, not a 5xx.
    let (status, body) = app.get("/role/get/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .post("/role/add", &json!({"user_id": 3, "role": "superhero"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, health) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["database"], "connected", "{health}");
    assert_eq!(health["redis"], "unavailable", "{health}");
    assert_eq!(health["cache"]["connected"], false, "{health}");
    assert!(health["latency_ms"].is_null(), "{health}");

    let (status, body) = app.delete("/role/cache/all").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["success"], false, "{body}");
    let (status, body) = app.delete("/role/cache/3").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let (status, stats) = app.get("/cache/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert!(stats["errors"].as_u64().is_some_and(|n| n > 0), "{stats}");
    assert!(
        stats["fallbacks"].as_u64().is_some_and(|n| n > 0),
        "{stats}"
    );
    app.stop().await;
}

/// With no Redis configured the example runs on the embedded store, with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_the_embedded_store_without_redis() {
    init_tracing();
    let app = App::start(CacheService::memory()).await;
    assert_eq!(
        app.roles(2).await,
        (false, vec!["editor".into(), "viewer".into()])
    );
    assert!(app.roles(2).await.0);
    app.add(2, "auditor").await;
    assert!(!app.roles(2).await.0);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["redis"], "not_configured", "{health}");
    assert_eq!(health["backend"], "memory", "{health}");
    let (_, body) = app.delete("/role/cache/all").await;
    assert_eq!(body["deleted_count"], 1, "{body}");
    app.stop().await;
}

/// The value of the Prometheus sample `name{labels}` in `text`, if there is one.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

/// `GET /metrics` serves cachekit's metrics in the Prometheus text format; after a few
/// requests the counters show them, labelled by namespace, never by key. (The only test of
/// this binary that installs a recorder: it is global to the process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_format() {
    init_tracing();
    let handle = roles_api::install_prometheus().expect("the process's only recorder");
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix(PREFIX)
        .metrics(true)
        .build()
        .await
        .unwrap();
    let app = roles_api::app(cache, "sqlite::memory:")
        .await
        .unwrap()
        .merge(roles_api::metrics_router(handle));
    let app = App::serve(app).await;

    app.roles(1).await; // miss: a load
    app.roles(1).await; // hit
    app.roles(1).await; // hit
    app.roles(2).await; // miss: a load
    app.add(1, "auditor").await; // invalidates user_roles:1
    let text = app.text("/metrics").await;
    let ns = r#"namespace="user_roles""#;
    assert_eq!(
        sample(
            &text,
            "cachekit_hits_total",
            &format!(r#"{ns},tier="store""#)
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cachekit_misses_total", ns),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cachekit_loads_total", ns),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cachekit_invalidated_entries_total", ns),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cachekit_breaker_state", ""),
        None,
        "a gauge without labels"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("cachekit_breaker_state ")),
        "{text}"
    );
    assert!(
        text.contains("# TYPE cachekit_load_duration_seconds summary"),
        "{text}"
    );
    assert!(text.contains("# HELP cachekit_hits_total"), "{text}");
    assert!(!text.contains("user_roles:1"), "no key in a label: {text}");
    app.stop().await;
}
