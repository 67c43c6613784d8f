//! The roles repository: SQLite through sqlx, cached with `#[cached]` and `#[invalidates]`.

use crate::db;
use cachekit::{CacheError, CacheService, HasCache, cached, invalidates};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{FromRow, Row};

/// The key family of the cached role lists, for the admin invalidation: the same keys
/// `#[cached(key = "user_roles:{user_id}")]` writes.
const ROLES_PATTERN: &str = "user_roles:*";

/// One role held by one user: a row of `user_roles` with its description from the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The assignment's id, as used by `DELETE /role/{role_id}`.
    pub role_id: i64,
    /// The user holding the role.
    pub user_id: i64,
    /// The role's name in the catalog (`admin`, `editor`, ...).
    pub role: String,
    /// The catalog's description of the role.
    pub description: String,
    /// When the role was granted (UTC, `YYYY-MM-DD HH:MM:SS`).
    pub granted_at: String,
}

impl<'r> FromRow<'r, SqliteRow> for Role {
    fn from_row(row: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            role_id: row.try_get("role_id")?,
            user_id: row.try_get("user_id")?,
            role: row.try_get("role")?,
            description: row.try_get("description")?,
            granted_at: row.try_get("granted_at")?,
        })
    }
}

/// Why a repository call failed. Only the `Database` variant is the server's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// No user has this id.
    #[error("user {0} not found")]
    UserNotFound(i64),
    /// No role assignment has this id.
    #[error("role {0} not found")]
    RoleNotFound(i64),
    /// The role name is not in the catalog.
    #[error("unknown role `{0}`")]
    UnknownRole(String),
    /// The user already holds this role.
    #[error("user {user_id} already has the role `{role}`")]
    AlreadyAssigned {
        /// The user.
        user_id: i64,
        /// The role.
        role: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Users, the role catalog and role assignments, with each user's role list cached for five
/// minutes under `user_roles:{user_id}`.
#[derive(Debug)]
pub struct RoleRepo {
    pool: SqlitePool,
    cache: CacheService,
}

impl HasCache for RoleRepo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS role_catalog (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_roles (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT NOT NULL REFERENCES role_catalog(name),
    granted_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (user_id, role)
);
INSERT OR IGNORE INTO users (id, name) VALUES
    (1, 'Ada Lovelace'), (2, 'Grace Hopper'), (3, 'Linus Torvalds'), (4, 'Margaret Hamilton');
INSERT OR IGNORE INTO role_catalog (name, description) VALUES
    ('admin',   'Full access, including user management'),
    ('editor',  'Creates and edits content'),
    ('viewer',  'Reads content'),
    ('auditor', 'Reads the audit log'),
    ('billing', 'Manages invoices and payment methods');
INSERT OR IGNORE INTO user_roles (id, user_id, role) VALUES
    (1, 1, 'admin'), (2, 1, 'editor'), (3, 2, 'editor'), (4, 2, 'viewer'), (5, 3, 'viewer');
";

const SELECT_ROLES: &str = "
SELECT ur.id AS role_id, ur.user_id, ur.role, c.description, ur.granted_at
FROM user_roles ur JOIN role_catalog c ON c.name = ur.role
";

impl RoleRepo {
    /// Opens the database at `url`, creates the tables if they are missing and seeds them
    /// (users 1 to 4; user 4 holds no role), then empties the cache of role lists: entries
    /// left by an earlier process describe an earlier database.
    pub async fn connect(cache: CacheService, url: &str) -> Result<Self, sqlx::Error> {
        let pool = db::connect(url).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let repo = Self { pool, cache };
        let stale = repo.cache.invalidate_pattern(ROLES_PATTERN).await;
        tracing::info!(
            stale,
            "database ready; cleared role lists cached by earlier runs"
        );
        Ok(repo)
    }

    /// The roles of a user, oldest first; an empty list for a user without roles. Cached for
    /// five minutes; `roles_for_user_with_status` also tells whether it came from the cache.
    #[cached(ttl = 300, key = "user_roles:{user_id}", status)]
    pub async fn roles_for_user(&self, user_id: i64) -> Result<Vec<Role>, RepoError> {
        let roles: Vec<Role> = sqlx::query_as(&format!(
            "{SELECT_ROLES} WHERE ur.user_id = ? ORDER BY ur.id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        if roles.is_empty() && !self.user_exists(user_id).await? {
            // An `Err` is never cached: asking for a user who does not exist yet, then
            // creating them, gives their roles.
            return Err(RepoError::UserNotFound(user_id));
        }
        Ok(roles)
    }

    /// Grants `role` (a name from the catalog) to a user, then invalidates the user's cached
    /// role list. Nothing is invalidated when it fails.
    #[invalidates("user_roles:{user_id}")]
    pub async fn add_role(&self, user_id: i64, role: &str) -> Result<Role, RepoError> {
        if !self.user_exists(user_id).await? {
            return Err(RepoError::UserNotFound(user_id));
        }
        let known: Option<String> =
            sqlx::query_scalar("SELECT name FROM role_catalog WHERE name = ?")
                .bind(role)
                .fetch_optional(&self.pool)
                .await?;
        if known.is_none() {
            return Err(RepoError::UnknownRole(role.to_owned()));
        }
        let inserted: i64 =
            sqlx::query_scalar("INSERT INTO user_roles (user_id, role) VALUES (?, ?) RETURNING id")
                .bind(user_id)
                .bind(role)
                .fetch_one(&self.pool)
                .await
                .map_err(|error| {
                    if db::is_unique_violation(&error) {
                        RepoError::AlreadyAssigned {
                            user_id,
                            role: role.to_owned(),
                        }
                    } else {
                        RepoError::Database(error)
                    }
                })?;
        self.find_role(inserted)
            .await?
            .ok_or(RepoError::RoleNotFound(inserted))
    }

    /// Deletes a role assignment, then invalidates its user's cached role list.
    ///
    /// The key to invalidate names the user, which the request does not: the assignment is
    /// read first, and the delete goes through `revoke`, whose arguments name
    /// the key.
    pub async fn delete_role(&self, role_id: i64) -> Result<Role, RepoError> {
        let role = self
            .find_role(role_id)
            .await?
            .ok_or(RepoError::RoleNotFound(role_id))?;
        self.revoke(role.user_id, role_id).await?;
        Ok(role)
    }

    /// Deletes assignment `role_id` of user `user_id`, then invalidates that user's role list.
    #[invalidates("user_roles:{user_id}")]
    async fn revoke(&self, user_id: i64, role_id: i64) -> Result<(), RepoError> {
        let deleted = sqlx::query("DELETE FROM user_roles WHERE id = ? AND user_id = ?")
            .bind(role_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Deleted by a concurrent request in between.
            return Err(RepoError::RoleNotFound(role_id));
        }
        Ok(())
    }

    /// Drops one user's cached role list (the admin endpoint). `Ok(true)` when there was one.
    /// Unlike the automatic invalidations, this reports a cache failure: an admin asking to
    /// drop an entry must not be told it is gone when Redis could not be reached.
    pub async fn forget_user_roles(&self, user_id: i64) -> Result<bool, CacheError> {
        self.cache
            .try_delete(&format!("user_roles:{user_id}"))
            .await
    }

    /// Drops every cached role list; the number of entries removed.
    pub async fn forget_all_roles(&self) -> Result<u64, CacheError> {
        self.cache.try_invalidate_pattern(ROLES_PATTERN).await
    }

    /// Whether the database answers.
    pub async fn database_ok(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    async fn user_exists(&self, user_id: i64) -> Result<bool, sqlx::Error> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn find_role(&self, role_id: i64) -> Result<Option<Role>, sqlx::Error> {
        sqlx::query_as(&format!("{SELECT_ROLES} WHERE ur.id = ?"))
            .bind(role_id)
            .fetch_optional(&self.pool)
            .await
    }
}
