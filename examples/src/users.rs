//! `users`: the patterns of the other four seed documents, in one repository on cachekit.
//!
//! | seed pattern | here |
//! |---|---|
//! | list and filter queries cached under `users:list:{hash}`, `users:filter:{hash}`, cleared with `users:*` on every create, update, delete | [`UserRepo::list_users`], [`UserRepo::filter_users`]: `#[cached(key = "users:list")]`, the unnamed arguments hashed; `#[invalidates("users:*")]` on the writes |
//! | a per-user set of `Permission` enums, one-hour TTL, invalidated on role changes, `refresh_user_cache` = invalidate + recompute | [`UserRepo::permissions`]: `#[cached(ttl = 3600, key = "permissions:{user_id}")]` returning `HashSet<Permission>`; [`UserRepo::refresh_permissions`] |
//! | `user:id:{id}` holds the user; `user:email:{email}` and `user:username:{username}` hold only its id; all dropped together on update | [`UserRepo::get_user`], [`UserRepo::find_by_email`], [`UserRepo::find_by_username`]; the update's `#[invalidates]` names all three keys |
//! | the password hash is never cached; login always queries the database | the cached type is [`PublicUser`], which has no hash; the hash lives in [`PasswordHash`], which is not `Serialize`, so no cached value can hold it (the compiler refuses); [`UserRepo::login`] is not cached |
//!
//! [`run_demo`] walks through all of it and prints what happens; the `users` binary runs it.

mod demo;
mod model;
mod password;
mod repo;

pub use demo::{DemoError, run_demo};
pub use model::{NewUser, Page, Permission, PublicUser, Role, SortBy, UserFilter, UserPatch};
pub use password::PasswordHash;
pub use repo::{UserError, UserRepo};
