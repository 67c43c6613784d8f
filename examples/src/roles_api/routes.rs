//! The HTTP layer: requests to repository calls, results and errors to the seed's JSON.

use super::repo::{RepoError, Role, RoleRepo};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cachekit::{BackendKind, CacheError, CacheStats, HasCache, Health};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type Repo = State<Arc<RoleRepo>>;

/// The routes of the roles service over `repo`.
pub fn router(repo: Arc<RoleRepo>) -> Router {
    Router::new()
        .route("/role/get/{user_id}", get(get_roles))
        .route("/role/add", post(add_role))
        .route("/role/{role_id}", delete(delete_role))
        .route("/role/cache/all", delete(invalidate_all))
        .route("/role/cache/{user_id}", delete(invalidate_user))
        .route("/health", get(health))
        .route("/cache/stats", get(cache_stats))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .with_state(repo)
}

/// `GET /role/get/{user_id}`.
async fn get_roles(
    State(repo): Repo,
    user_id: Result<Path<i64>, PathRejection>,
) -> Result<Json<RolesBody>, ApiError> {
    let Path(user_id) = user_id?;
    let fetched = repo.roles_for_user_with_status(user_id).await?;
    if fetched.from_cache {
        tracing::info!(
            "Retrieved {} roles from cache for user {user_id}",
            fetched.value.len()
        );
    } else {
        tracing::info!(
            "Cache miss for user {user_id}: loaded {} roles from the database",
            fetched.value.len()
        );
    }
    Ok(Json(RolesBody {
        success: true,
        data: fetched.value,
        token_refreshed: false,
        cached: fetched.from_cache,
    }))
}

/// `POST /role/add` with `{"user_id": 1, "role": "auditor"}`.
async fn add_role(
    State(repo): Repo,
    body: Result<Json<NewRole>, JsonRejection>,
) -> Result<(StatusCode, Json<RoleBody>), ApiError> {
    let Json(new) = body?;
    let role = new.role.trim();
    let added = repo.add_role(new.user_id, role).await?;
    tracing::info!(
        "Invalidated roles cache for user {} after adding role `{role}`",
        new.user_id
    );
    Ok((
        StatusCode::CREATED,
        Json(RoleBody {
            success: true,
            message: format!("Role `{role}` added to user {}", new.user_id),
            data: added,
            token_refreshed: false,
        }),
    ))
}

/// `DELETE /role/{role_id}`.
async fn delete_role(
    State(repo): Repo,
    role_id: Result<Path<i64>, PathRejection>,
) -> Result<Json<RoleBody>, ApiError> {
    let Path(role_id) = role_id?;
    let deleted = repo.delete_role(role_id).await?;
    tracing::info!(
        "Invalidated roles cache for user {} after deleting role {role_id}",
        deleted.user_id
    );
    Ok(Json(RoleBody {
        success: true,
        message: format!("Role {role_id} deleted from user {}", deleted.user_id),
        data: deleted,
        token_refreshed: false,
    }))
}

/// `DELETE /role/cache/{user_id}`.
async fn invalidate_user(
    State(repo): Repo,
    user_id: Result<Path<i64>, PathRejection>,
) -> Result<Json<MessageBody>, ApiError> {
    let Path(user_id) = user_id?;
    let existed = repo.forget_user_roles(user_id).await?;
    tracing::info!(
        existed,
        "Invalidated roles cache for user {user_id} (admin)"
    );
    Ok(Json(MessageBody {
        success: true,
        message: format!("Cache invalidated for user {user_id}"),
        deleted_count: None,
        token_refreshed: false,
    }))
}

/// `DELETE /role/cache/all`.
async fn invalidate_all(State(repo): Repo) -> Result<Json<MessageBody>, ApiError> {
    let count = repo.forget_all_roles().await?;
    tracing::info!("Invalidated {count} cached role lists (admin)");
    Ok(Json(MessageBody {
        success: true,
        message: format!("Invalidated {count} cached entries"),
        deleted_count: Some(count),
        token_refreshed: false,
    }))
}

/// `GET /health`: always answers; `503` only when the database is down, since the service
/// works (slower) without Redis.
async fn health(State(repo): Repo) -> (StatusCode, Json<HealthBody>) {
    let cache = repo.cache().health().await;
    let database = repo.database_ok().await;
    let redis = match (cache.backend, cache.connected) {
        (BackendKind::Redis, true) => "connected",
        (BackendKind::Redis, false) => "unavailable",
        _ => "not_configured",
    };
    let (code, status) = if !database {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if redis == "unavailable" {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = HealthBody {
        status,
        database: if database { "connected" } else { "unavailable" },
        redis,
        backend: cache.backend,
        latency_ms: cache.latency_us.map(|us| us as f64 / 1000.0),
        cache,
    };
    (code, Json(body))
}

/// `GET /cache/stats`.
async fn cache_stats(State(repo): Repo) -> Json<StatsBody> {
    let stats = repo.cache().stats();
    Json(StatsBody {
        hit_rate: stats.hit_rate(),
        stats,
    })
}

#[derive(Debug, Deserialize)]
struct NewRole {
    user_id: i64,
    role: String,
}

#[derive(Debug, Serialize)]
struct RolesBody {
    success: bool,
    data: Vec<Role>,
    token_refreshed: bool,
    cached: bool,
}

#[derive(Debug, Serialize)]
struct RoleBody {
    success: bool,
    message: String,
    data: Role,
    token_refreshed: bool,
}

#[derive(Debug, Serialize)]
struct MessageBody {
    success: bool,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_count: Option<u64>,
    token_refreshed: bool,
}

#[derive(Debug, Serialize)]
struct HealthBody {
    status: &'static str,
    database: &'static str,
    redis: &'static str,
    backend: BackendKind,
    latency_ms: Option<f64>,
    cache: Health,
}

#[derive(Debug, Serialize)]
struct StatsBody {
    #[serde(flatten)]
    stats: CacheStats,
    hit_rate: f64,
}

/// An error answer: `{"success": false, "error": "...", "token_refreshed": false}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct ErrorBody {
            success: bool,
            error: String,
            token_refreshed: bool,
        }
        let body = ErrorBody {
            success: false,
            error: self.message,
            token_refreshed: false,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        let status = match &error {
            RepoError::UserNotFound(_) | RepoError::RoleNotFound(_) => StatusCode::NOT_FOUND,
            RepoError::UnknownRole(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RepoError::AlreadyAssigned { .. } => StatusCode::CONFLICT,
            RepoError::Database(db) => {
                tracing::error!(error = %db, "database error");
                // The details stay in the log.
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "database error");
            }
        };
        Self::new(status, error.to_string())
    }
}

impl From<CacheError> for ApiError {
    fn from(error: CacheError) -> Self {
        tracing::warn!(%error, "admin cache operation failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cache unavailable, the invalidation did not complete: {error}"),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // 400 for malformed JSON, 415 without `Content-Type: application/json`, 422 for JSON
        // of the wrong shape.
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}
