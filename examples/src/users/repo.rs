//! The users repository: SQLite through sqlx, cached with `#[cached]` and `#[invalidates]`.

use super::model::{NewUser, Page, Permission, PublicUser, Role, UserFilter, UserPatch};
use super::password::PasswordHash;
use crate::db;
use cachekit::{CacheService, HasCache, cached, invalidates};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{FromRow, QueryBuilder, Row};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest page a list or filter query returns.
const MAX_PAGE: u32 = 100;
/// How often an update or delete re-reads a user that changed under it before giving up.
const WRITE_ATTEMPTS: usize = 3;
/// The columns of a [`PublicUser`]: every query that feeds the cache selects these and no
/// others, so the hash is not even read.
const PUBLIC_COLUMNS: &str = "id, email, username, full_name, department, active";

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// No user has this id.
    #[error("user {0} not found")]
    NotFound(i64),
    /// The email address or username belongs to another user.
    #[error("the email address or username is already taken")]
    Taken,
    /// The input is not acceptable.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The user kept changing while an update or delete tried to apply.
    #[error("user {0} changed concurrently; try again")]
    Conflict(i64),
    /// The database holds a permission name this program does not know.
    #[error("unknown permission `{0}` in the database")]
    UnknownPermission(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl<'r> FromRow<'r, SqliteRow> for PublicUser {
    fn from_row(row: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            username: row.try_get("username")?,
            full_name: row.try_get("full_name")?,
            department: row.try_get("department")?,
            active: row.try_get("active")?,
        })
    }
}

/// Users, their roles and the permissions those grant, cached in the seeds' key layout:
///
/// | key | value | TTL | dropped by |
/// |---|---|---|---|
/// | `users:list:{sha256}` | a page of [`PublicUser`] | 60 s | `users:*`: any create, update, delete |
/// | `users:filter:{sha256}` | a [`Page`] of [`PublicUser`] | 60 s | `users:*` |
/// | `user:id:{id}` | the [`PublicUser`] | 300 s | update or delete of that user |
/// | `user:email:{email}` | the user's id | 300 s | update or delete of that user |
/// | `user:username:{username}` | the user's id | 300 s | update or delete of that user |
/// | `permissions:{user_id}` | a `HashSet<Permission>` | 3600 s | role changes, delete, [`refresh_permissions`](Self::refresh_permissions) |
///
/// Every database round trip is counted ([`db_queries`](Self::db_queries)), so a caller can
/// see which calls the cache answered.
#[derive(Debug)]
pub struct UserRepo {
    pool: SqlitePool,
    cache: CacheService,
    queries: AtomicU64,
}

impl HasCache for UserRepo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

const SCHEMA: &str = "
DROP TABLE IF EXISTS role_permissions;
DROP TABLE IF EXISTS user_roles;
DROP TABLE IF EXISTS users;
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT NOT NULL UNIQUE,
    username      TEXT NOT NULL UNIQUE,
    full_name     TEXT NOT NULL,
    department    TEXT NOT NULL,
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    password_hash TEXT NOT NULL
);
CREATE TABLE user_roles (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role    TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE TABLE role_permissions (
    role       TEXT NOT NULL,
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);
";

/// The seeded users: username, full name, department, active, role. Each one's password is
/// `"{username}-password"` and their email `"{username}@example.com"`.
const SEED: &[(&str, &str, &str, bool, Role)] = &[
    ("ada", "Ada Lovelace", "engineering", true, Role::Admin),
    (
        "grace",
        "Grace Hopper",
        "engineering",
        true,
        Role::ProgramManager,
    ),
    (
        "linus",
        "Linus Torvalds",
        "engineering",
        true,
        Role::ProjectManager,
    ),
    (
        "margaret",
        "Margaret Hamilton",
        "research",
        true,
        Role::Viewer,
    ),
    ("alan", "Alan Turing", "research", false, Role::Viewer),
    (
        "barbara",
        "Barbara Liskov",
        "research",
        true,
        Role::ProjectManager,
    ),
];

impl UserRepo {
    /// Opens the database at `url` and recreates its tables with the seed data: six users
    /// (ids 1 to 6, see [`seed_password`](Self::seed_password)) with one role each.
    ///
    /// The demo owns its database and starts it afresh, so it also empties the cache of its
    /// key families (`users:*`, `user:*`, `permissions:*`): entries from an earlier run
    /// describe an earlier database. (A real service does this after restoring a backup.)
    pub async fn connect(cache: CacheService, url: &str) -> Result<Self, UserError> {
        let pool = db::connect(url).await?;
        let repo = Self {
            pool,
            cache,
            queries: AtomicU64::new(0),
        };
        repo.reset().await?;
        Ok(repo)
    }

    /// The password of a seeded user.
    pub fn seed_password(username: &str) -> String {
        format!("{username}-password")
    }

    async fn reset(&self) -> Result<(), UserError> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        for role in Role::ALL {
            for permission in role.permissions() {
                sqlx::query("INSERT INTO role_permissions (role, permission) VALUES (?, ?)")
                    .bind(role.as_str())
                    .bind(permission.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for &(username, full_name, department, active, role) in SEED {
            let hash = PasswordHash::new(&Self::seed_password(username));
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO users (email, username, full_name, department, active, password_hash)
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(format!("{username}@example.com"))
            .bind(username)
            .bind(full_name)
            .bind(department)
            .bind(active)
            .bind(hash.as_stored())
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO user_roles (user_id, role) VALUES (?, ?)")
                .bind(id)
                .bind(role.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        for family in ["users:*", "user:*", "permissions:*"] {
            self.cache.invalidate_pattern(family).await;
        }
        Ok(())
    }

    /// Database round trips made so far.
    pub fn db_queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The pool, counting one round trip. Every query goes through here.
    fn db(&self) -> &SqlitePool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.pool
    }

    // ----- lists and filters: hashed keys, dropped by any write (`users:*`) -----------------

    /// A page of users by id. Cached for 60 s under `users:list:{sha256 of [skip,limit]}`.
    #[cached(ttl = 60, key = "users:list", status)]
    pub async fn list_users(&self, skip: u32, limit: u32) -> Result<Vec<PublicUser>, UserError> {
        let users = sqlx::query_as(&format!(
            "SELECT {PUBLIC_COLUMNS} FROM users ORDER BY id LIMIT ? OFFSET ?"
        ))
        .bind(limit.clamp(1, MAX_PAGE))
        .bind(skip)
        .fetch_all(self.db())
        .await?;
        Ok(users)
    }

    /// The users matching a filter, one page of them, and how many match in all. Cached for
    /// 60 s under `users:filter:{sha256 of [filter]}`.
    #[cached(ttl = 60, key = "users:filter", status)]
    pub async fn filter_users(&self, filter: &UserFilter) -> Result<Page<PublicUser>, UserError> {
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM users");
        push_conditions(&mut count, filter);
        let total: i64 = count.build_query_scalar().fetch_one(self.db()).await?;

        let mut select = QueryBuilder::new(format!("SELECT {PUBLIC_COLUMNS} FROM users"));
        push_conditions(&mut select, filter);
        // The column comes from an enum, never from the input's text.
        select.push(format_args!(
            " ORDER BY {} {} LIMIT ",
            filter.sort_by.column(),
            if filter.descending { "DESC" } else { "ASC" }
        ));
        select.push_bind(filter.limit.clamp(1, MAX_PAGE));
        select.push(" OFFSET ").push_bind(filter.skip);
        let items = select.build_query_as().fetch_all(self.db()).await?;
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
            skip: filter.skip,
            limit: filter.limit.clamp(1, MAX_PAGE),
        })
    }

    // ----- one user behind three lookups -----------------------------------------------------

    /// A user by id. Cached for 300 s under `user:id:{id}`: the one entry holding the user,
    /// which the email and username lookups share.
    #[cached(ttl = 300, key = "user:id:{id}", status)]
    pub async fn get_user(&self, id: i64) -> Result<Option<PublicUser>, UserError> {
        let user = sqlx::query_as(&format!("SELECT {PUBLIC_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.db())
            .await?;
        Ok(user)
    }

    /// A user by email address (any case): the id from `user:email:{email}`, then the user
    /// from `user:id:{id}`.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<PublicUser>, UserError> {
        match self.user_id_by_email(&normalize_email(email)).await? {
            Some(id) => self.get_user(id).await,
            None => Ok(None),
        }
    }

    /// A user by username: the id from `user:username:{username}`, then the user from
    /// `user:id:{id}`.
    pub async fn find_by_username(&self, username: &str) -> Result<Option<PublicUser>, UserError> {
        match self.user_id_by_username(username.trim()).await? {
            Some(id) => self.get_user(id).await,
            None => Ok(None),
        }
    }

    /// The id behind an email address. Only the id is cached: the user is stored once.
    /// An unknown address (`None`) is not cached, so a user created later is found at once.
    #[cached(ttl = 300, key = "user:email:{email}")]
    async fn user_id_by_email(&self, email: &str) -> Result<Option<i64>, UserError> {
        let id = sqlx::query_scalar("SELECT id FROM users WHERE email = ?")
            .bind(email)
            .fetch_optional(self.db())
            .await?;
        Ok(id)
    }

    /// The id behind a username.
    #[cached(ttl = 300, key = "user:username:{username}")]
    async fn user_id_by_username(&self, username: &str) -> Result<Option<i64>, UserError> {
        let id = sqlx::query_scalar("SELECT id FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(self.db())
            .await?;
        Ok(id)
    }

    // ----- writes ----------------------------------------------------------------------------

    /// Creates a user, then drops every cached list and filter page (`users:*`). There is no
    /// `user:*` entry to drop: unknown ids, emails and usernames are never cached.
    #[invalidates("users:*")]
    pub async fn create_user(&self, new: NewUser) -> Result<PublicUser, UserError> {
        let email = normalize_email(&new.email);
        let username = new.username.trim();
        if !email.contains('@') || username.is_empty() || new.password.is_empty() {
            return Err(UserError::Invalid(
                "a user needs an email address, a username and a password".into(),
            ));
        }
        let hash = PasswordHash::new(&new.password);
        let user = sqlx::query_as(&format!(
            "INSERT INTO users (email, username, full_name, department, password_hash)
             VALUES (?, ?, ?, ?, ?) RETURNING {PUBLIC_COLUMNS}"
        ))
        .bind(&email)
        .bind(username)
        .bind(new.full_name.trim())
        .bind(new.department.trim())
        .bind(hash.as_stored())
        .fetch_one(self.db())
        .await
        .map_err(taken)?;
        Ok(user)
    }

    /// Changes a user, then drops the user's three lookup keys (under the email address and
    /// username they had) and every list and filter page.
    ///
    /// The keys to drop are named by the current email and username, which the caller does
    /// not give: they are read first (from the database, not the cache), and the write goes
    /// through `apply_update`, whose arguments name the keys. The write
    /// applies only if they are still current; otherwise it reads them again.
    pub async fn update_user(&self, id: i64, patch: UserPatch) -> Result<PublicUser, UserError> {
        if let Some(email) = &patch.email
            && !email.contains('@')
        {
            return Err(UserError::Invalid(format!(
                "`{email}` is not an email address"
            )));
        }
        if patch
            .username
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err(UserError::Invalid("the username is empty".into()));
        }
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.read_user(id).await?.ok_or(UserError::NotFound(id))?;
            if let Some(user) = self
                .apply_update(id, &current.email, &current.username, &patch)
                .await?
            {
                return Ok(user);
            }
        }
        Err(UserError::Conflict(id))
    }

    /// Applies `patch` to user `id` if their email address and username are still `email`
    /// and `username`, then invalidates. `Ok(None)`: they changed meanwhile (nothing written;
    /// the invalidation runs anyway, which is harmless).
    #[invalidates(
        "users:*",
        "user:id:{id}",
        "user:email:{email}",
        "user:username:{username}"
    )]
    async fn apply_update(
        &self,
        id: i64,
        email: &str,
        username: &str,
        patch: &UserPatch,
    ) -> Result<Option<PublicUser>, UserError> {
        let user = sqlx::query_as(&format!(
            "UPDATE users SET
                 email = COALESCE(?, email),
                 username = COALESCE(?, username),
                 full_name = COALESCE(?, full_name),
                 department = COALESCE(?, department),
                 active = COALESCE(?, active)
             WHERE id = ? AND email = ? AND username = ?
             RETURNING {PUBLIC_COLUMNS}"
        ))
        .bind(patch.email.as_deref().map(normalize_email))
        .bind(patch.username.as_deref().map(str::trim))
        .bind(patch.full_name.as_deref())
        .bind(patch.department.as_deref())
        .bind(patch.active)
        .bind(id)
        .bind(email)
        .bind(username)
        .fetch_optional(self.db())
        .await
        .map_err(taken)?;
        Ok(user)
    }

    /// Deletes a user, then drops everything cached about them: the three lookup keys, their
    /// permissions, and every list and filter page.
    pub async fn delete_user(&self, id: i64) -> Result<(), UserError> {
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.read_user(id).await?.ok_or(UserError::NotFound(id))?;
            if self.remove(id, &current.email, &current.username).await? {
                return Ok(());
            }
        }
        Err(UserError::Conflict(id))
    }

    #[invalidates(
        "users:*",
        "user:id:{id}",
        "user:email:{email}",
        "user:username:{username}",
        "permissions:{id}"
    )]
    async fn remove(&self, id: i64, email: &str, username: &str) -> Result<bool, UserError> {
        let deleted = sqlx::query("DELETE FROM users WHERE id = ? AND email = ? AND username = ?")
            .bind(id)
            .bind(email)
            .bind(username)
            .execute(self.db())
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    /// A user straight from the database, bypassing the cache.
    async fn read_user(&self, id: i64) -> Result<Option<PublicUser>, UserError> {
        let user = sqlx::query_as(&format!("SELECT {PUBLIC_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.db())
            .await?;
        Ok(user)
    }

    // ----- permissions: one hour, invalidated on role changes, refreshable --------------------

    /// What a user may do, from their roles. Cached for an hour under `permissions:{user_id}`.
    #[cached(ttl = 3600, key = "permissions:{user_id}", status)]
    pub async fn permissions(&self, user_id: i64) -> Result<HashSet<Permission>, UserError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT rp.permission
             FROM user_roles ur JOIN role_permissions rp ON rp.role = ur.role
             WHERE ur.user_id = ?",
        )
        .bind(user_id)
        .fetch_all(self.db())
        .await?;
        if names.is_empty() && self.read_user(user_id).await?.is_none() {
            return Err(UserError::NotFound(user_id));
        }
        names
            .iter()
            .map(|name| name.parse().map_err(UserError::UnknownPermission))
            .collect()
    }

    /// Whether a user has a permission (through the cached set).
    pub async fn has_permission(
        &self,
        user_id: i64,
        permission: Permission,
    ) -> Result<bool, UserError> {
        Ok(self.permissions(user_id).await?.contains(&permission))
    }

    /// Drops a user's cached permissions and computes them again: the seed's
    /// `refresh_user_cache`, for a change the repository did not make (an import, a manual
    /// fix in the database).
    pub async fn refresh_permissions(
        &self,
        user_id: i64,
    ) -> Result<HashSet<Permission>, UserError> {
        self.forget_permissions(user_id).await;
        self.permissions(user_id).await
    }

    /// Drops a user's cached permissions.
    #[invalidates("permissions:{user_id}")]
    pub async fn forget_permissions(&self, user_id: i64) {}

    /// Drops every user's cached permissions (a bulk change to what roles grant).
    #[invalidates("permissions:*")]
    pub async fn forget_all_permissions(&self) {}

    /// Grants a role, then drops the user's cached permissions. `Ok(false)` if they had it.
    #[invalidates("permissions:{user_id}")]
    pub async fn assign_role(&self, user_id: i64, role: Role) -> Result<bool, UserError> {
        if self.read_user(user_id).await?.is_none() {
            return Err(UserError::NotFound(user_id));
        }
        let added = sqlx::query("INSERT OR IGNORE INTO user_roles (user_id, role) VALUES (?, ?)")
            .bind(user_id)
            .bind(role.as_str())
            .execute(self.db())
            .await?
            .rows_affected();
        Ok(added > 0)
    }

    /// Takes a role away, then drops the user's cached permissions. `Ok(false)` if they did
    /// not have it.
    #[invalidates("permissions:{user_id}")]
    pub async fn revoke_role(&self, user_id: i64, role: Role) -> Result<bool, UserError> {
        let removed = sqlx::query("DELETE FROM user_roles WHERE user_id = ? AND role = ?")
            .bind(user_id)
            .bind(role.as_str())
            .execute(self.db())
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    // ----- authentication: always the database -----------------------------------------------

    /// Checks a password. Always reads the database, never the cache: the hash is not in the
    /// cache, and a login must see a password change or a deactivation at once. `Ok(None)`
    /// for an unknown email, a wrong password or an inactive account alike.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<PublicUser>, UserError> {
        let row = sqlx::query(&format!(
            "SELECT {PUBLIC_COLUMNS}, password_hash FROM users WHERE email = ?"
        ))
        .bind(normalize_email(email))
        .fetch_optional(self.db())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash = PasswordHash::from_stored(row.try_get("password_hash")?);
        let user = PublicUser::from_row(&row)?;
        Ok((user.active && hash.verify(password)).then_some(user))
    }

    /// Sets a new password. Invalidates nothing, on purpose: no cached value holds the hash,
    /// and [`login`](Self::login) reads the database.
    pub async fn change_password(&self, id: i64, password: &str) -> Result<(), UserError> {
        if password.is_empty() {
            return Err(UserError::Invalid("the password is empty".into()));
        }
        let hash = PasswordHash::new(password);
        let changed = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(hash.as_stored())
            .bind(id)
            .execute(self.db())
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(UserError::NotFound(id));
        }
        Ok(())
    }
}

/// Adds the filter's conditions as ` WHERE ... AND ...`, every value a bound parameter.
fn push_conditions(query: &mut QueryBuilder<'_, Sqlite>, filter: &UserFilter) {
    let mut conditions = query.separated(" AND ");
    if filter.active.is_some() || filter.department.is_some() || filter.name_contains.is_some() {
        conditions.push_unseparated(" WHERE ");
    }
    if let Some(active) = filter.active {
        conditions.push("active = ").push_bind_unseparated(active);
    }
    if let Some(department) = &filter.department {
        conditions
            .push("department = ")
            .push_bind_unseparated(department.clone());
    }
    if let Some(text) = &filter.name_contains {
        conditions
            .push("full_name LIKE ")
            .push_bind_unseparated(format!("%{}%", escape_like(text)))
            .push_unseparated(" ESCAPE '\\'");
    }
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn taken(error: sqlx::Error) -> UserError {
    if db::is_unique_violation(&error) {
        UserError::Taken
    } else {
        UserError::Database(error)
    }
}
