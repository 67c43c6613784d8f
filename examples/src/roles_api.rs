//! `roles_api`: the role-management service of the first seed document, moved onto cachekit.
//!
//! The Python original cached `GET /role/get/{user_id}` by hand under `user_roles:{user_id}`
//! for five minutes, answered `"cached": true/false`, invalidated a user's entry after adding
//! or deleting one of their roles, and offered two admin endpoints to drop one user's entry or
//! all of them. Here the repository ([`RoleRepo`]) carries all of that in two attributes:
//!
//! ```text
//! #[cached(ttl = 300, key = "user_roles:{user_id}", status)]   roles_for_user(_with_status)
//! #[invalidates("user_roles:{user_id}")]                        add_role, revoke
//! ```
//!
//! and the HTTP layer ([`router`]) only maps requests to repository calls and errors to JSON.
//!
//! | request | answer |
//! |---|---|
//! | `GET /role/get/{user_id}` | `{"success":true,"data":[...],"token_refreshed":false,"cached":false}` (then `true`) |
//! | `POST /role/add` `{"user_id":1,"role":"auditor"}` | `201`, the new assignment; the user's entry is invalidated |
//! | `DELETE /role/{role_id}` | the deleted assignment; its user's entry is invalidated |
//! | `DELETE /role/cache/{user_id}` | `{"success":true,"message":"Cache invalidated for user 1",...}` |
//! | `DELETE /role/cache/all` | `{"success":true,"message":"Invalidated 3 cached entries","deleted_count":3,...}` |
//! | `GET /health` | `{"status":"ok","database":"connected","redis":"connected","latency_ms":0.21,...}` |
//! | `GET /cache/stats` | cachekit's [`CacheStats`](cachekit::CacheStats) and `hit_rate` |
//! | `GET /metrics` | cachekit's metrics in the Prometheus text format ([`metrics_router`]) |
//!
//! Bad input (malformed JSON, an unknown role or user, an id that is not a number, an unknown
//! route) gets a 4xx answer `{"success":false,"error":"...","token_refreshed":false}`; nothing
//! from a request is unwrapped. When Redis is down every read and write still answers
//! correctly from the database (`"cached": false`); `/health` says `"degraded"`, and the admin
//! endpoints, which exist to act on the cache, answer `503` rather than claim a removal they
//! could not make.

mod repo;
mod routes;

pub use repo::{RepoError, Role, RoleRepo};
pub use routes::router;

use cachekit::CacheService;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where the service listens when neither `BIND` nor `PORT` is set.
pub const DEFAULT_BIND: &str = "127.0.0.1:3000";

/// The service, ready to serve: opens the database at `database_url` (creating and seeding it)
/// and routes requests to a [`RoleRepo`] on `cache`.
pub async fn app(cache: CacheService, database_url: &str) -> Result<axum::Router, sqlx::Error> {
    let repo = RoleRepo::connect(cache, database_url).await?;
    Ok(router(Arc::new(repo)))
}

/// Installs a Prometheus recorder as the process's `metrics` recorder, which a service built
/// with `metrics(true)` (or `CACHE_METRICS=true`) afterwards reports to; returns the handle that
/// renders it. Fails if the process already has a recorder.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// `GET /metrics`: what the recorder behind `handle` holds, in the Prometheus text format.
/// Merge it into the app: `app.merge(metrics_router(handle))`.
pub fn metrics_router(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on Ctrl-C (or `SIGTERM` on Unix): the signal for a graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

/// The address to listen on: `BIND` (`host:port`), else `127.0.0.1:{PORT}`, else
/// [`DEFAULT_BIND`]. `lookup` reads a variable (`|name| std::env::var(name).ok()`).
///
/// ```
/// use cachekit_examples::roles_api::bind_address;
/// let env = |vars: &'static [(&'static str, &'static str)]| {
///     move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
/// };
/// assert_eq!(bind_address(env(&[])).unwrap().to_string(), "127.0.0.1:3000");
/// assert_eq!(bind_address(env(&[("PORT", "8080")])).unwrap().to_string(), "127.0.0.1:8080");
/// assert_eq!(bind_address(env(&[("BIND", "0.0.0.0:9000")])).unwrap().to_string(), "0.0.0.0:9000");
/// assert!(bind_address(env(&[("PORT", "http")])).is_err());
/// ```
pub fn bind_address(lookup: impl Fn(&str) -> Option<String>) -> Result<SocketAddr, String> {
    let var = |name: &str| {
        lookup(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(bind) = var("BIND") {
        return bind
            .parse()
            .map_err(|_| format!("BIND must be an address like 127.0.0.1:3000, not `{bind}`"));
    }
    if let Some(port) = var("PORT") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not `{port}`"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    DEFAULT_BIND
        .parse()
        .map_err(|_| format!("invalid default address {DEFAULT_BIND}"))
}
