//! Attribute macros for [cachekit](https://docs.rs/cachekit): `#[cached]` and
//! `#[invalidates]`.
//!
//! Use them through the `cachekit` crate, which re-exports and documents them
//! (`use cachekit::{cached, invalidates};`); the generated code calls into `cachekit`.
//!
//! The crate is laid out one phase per file: `args` reads the attribute arguments, `valid`
//! checks them against the function, `template` parses key templates, `cached` and
//! `invalidates` generate code, `expand` drives the whole, and `fallback` emits the user's
//! function unchanged next to the errors when something is wrong.

mod args;
mod cached;
mod expand;
mod fallback;
mod invalidates;
mod template;
mod valid;

use proc_macro::TokenStream;

/// Serves an `async fn`'s result from the cache until it expires or is invalidated
/// (cache-aside).
///
/// ```
/// use cachekit::{CacheService, HasCache, cached};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct User {
///     id: u64,
///     name: String,
/// }
///
/// #[derive(Debug)]
/// struct DbError;
///
/// struct UserRepo {
///     cache: CacheService,
/// }
///
/// impl HasCache for UserRepo {
///     fn cache(&self) -> &CacheService {
///         &self.cache
///     }
/// }
///
/// impl UserRepo {
///     /// Stored under `users:{id}` for five minutes; `Err` and `Ok(None)` are not stored.
///     #[cached(ttl = 300, key = "users:{id}")]
///     async fn get_user(&self, id: u64) -> Result<Option<User>, DbError> {
///         // The query; it runs only on a miss.
///         Ok(Some(User { id, name: "Ann".into() }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let repo = UserRepo { cache: CacheService::memory() };
/// let user = repo.get_user(1).await.unwrap(); // runs the query, stores the user
/// assert_eq!(repo.get_user(1).await.unwrap(), user); // served from the cache
/// assert_eq!(repo.cache.get::<Option<User>>("users:1").await, Some(user));
/// # }
/// ```
///
/// The function keeps its signature, visibility, attributes and doc comments. Only its body
/// changes: it computes the key, looks it up, and on a miss runs the original body and stores
/// the value. `return` and `?` in the body behave as before. A cache that fails (Redis down,
/// slow, returning garbage) never fails the call: the body runs and its result is returned.
///
/// # Options
///
/// | option | meaning |
/// |---|---|
/// | `ttl = 300` | Lifetime in seconds, an integer literal from 1 to 315360000 (10 years, `cachekit::MAX_TTL`). Absent: the service's default TTL. |
/// | `key = "users:{id}"` | Key template; see [Keys](#keys). Absent: the function's module path and name. |
/// | `cache = <expr>` | The service to use; see [The service](#the-service). |
/// | `cache_none` | Also store `None` (for `Option<T>` and `Result<Option<T>, E>`). |
/// | `status` | Also generate `{name}_with_status`, which tells hits from misses; see [`status`](#status). |
/// | `no_local` | Reads skip the service's in-process tier (`CacheServiceBuilder::local_tier`), for values that must not lag a write made on another instance even by the tier's invalidation delay. |
/// | `refresh_ahead` | Reload a value before it expires, with probabilistic early recomputation (`CacheServiceBuilder::refresh_ahead`); `refresh_ahead = 2.0` sets its beta (above 0, at most 100; default 1.0). Absent: the service's setting. |
/// | `grace = 600` | Stale-if-error: keep the value this many seconds past its TTL and serve it (flagged stale) only when the function fails (`CacheServiceBuilder::stale_if_error`). Absent: the service's setting. |
///
/// Each option may be given once; an unknown option is a compile error.
///
/// # Keys
///
/// The logical key (the service adds its own prefix: `{prefix}:{key}`) is built in a format
/// that other languages can reproduce:
///
/// 1. The template with each `{param}` replaced by that argument's `Display` form, in which
///    `%` is written `%25` and `:` is written `%3A` (`cachekit::key::escape_part`), so that
///    with `key = "route:{from}:{to}"` the arguments `("a:b", "c")` and `("a", "b:c")` get
///    different keys (`route:a%3Ab:c`, `route:a:b%3Ac`); a value without `%` or `:` is written
///    as is. A placeholder must name a parameter of the function (not `self`), checked at
///    compile time; `{{` and `}}` are literal braces (Redis Cluster hash tags:
///    `"{{users}}:{id}"`).
/// 2. If some parameters are not named in the template, `:` and the lowercase hex SHA-256 of
///    the serde_json encoding of those arguments as one JSON array, in declaration order. They
///    must implement `Serialize`. `self`, and a parameter used in `cache = ...`, are not part
///    of the key.
/// 3. Without `key`, `module::path::function_name` takes the template's place. Two methods of
///    the same name in one module then share keys: give them a `key`.
///
/// For `list_users(0, 100)` below the key is `users:list:` followed by
/// `hex(sha256(b"[0,100]"))`:
///
/// ```
/// # use cachekit::{CacheService, HasCache, cached};
/// # struct UserRepo { cache: CacheService }
/// # impl HasCache for UserRepo { fn cache(&self) -> &CacheService { &self.cache } }
/// impl UserRepo {
///     #[cached(ttl = 60, key = "users:list")]
///     async fn list_users(&self, skip: u32, limit: u32) -> Result<Vec<String>, String> {
///         Ok((skip..skip + limit).take(2).map(|i| format!("user {i}")).collect())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let repo = UserRepo { cache: CacheService::memory() };
/// let users = repo.list_users(0, 100).await.unwrap();
/// let key = "users:list:ba9e2e0a09d7b9299347d9d498a66648dcf88929d89755628674e2ef922ccbd7";
/// assert_eq!(repo.cache.get::<Vec<String>>(key).await, Some(users));
/// # }
/// ```
///
/// Arguments may be owned values or references (`&str`, `&Filter`): the key is computed from
/// borrows before the body runs, and the body then takes the arguments as before.
///
/// # Return types
///
/// The return type is read by its syntax, since a macro cannot see through type aliases:
///
/// - A path whose last segment ends in `Result` and has type arguments — `Result<T, E>`,
///   `std::io::Result<T>`, `anyhow::Result<T>`, an alias such as `DbResult<T>` — is a `Result`
///   whose first type argument is the value: only `Ok` values are stored, and an `Err` is
///   returned untouched and never stored. (A generic type of such a name that is not a `Result`
///   fails to compile; an alias without type arguments, `type Res = Result<User, E>`, is not
///   recognized: give it the value type as an argument.)
/// - `Option<T>` and `Result<Option<T>, E>`: `None` is not stored, unless `cache_none`.
/// - Any other type is stored as it is.
///
/// The stored type must implement `Serialize`, `DeserializeOwned`, `Clone`, `Send` and `Sync`
/// and own its data (`'static`): the in-process tier holds it decoded and hands out clones
/// (return `Arc<T>` for a clone that only counts a reference). Otherwise the compile error
/// points at it. A function returning nothing, `()` or `impl Trait` is a compile error.
///
/// ```
/// # use cachekit::{CacheService, cached};
/// # use std::sync::LazyLock;
/// # static CACHE: LazyLock<CacheService> = LazyLock::new(CacheService::memory);
/// #[cached(key = "settings:{name}", cache = *CACHE, cache_none)]
/// async fn setting(name: &str) -> Option<String> {
///     // A missing setting is stored as `null` too, so it is not looked up again.
///     None
/// }
///
/// #[cached(key = "config", cache = *CACHE)]
/// async fn config() -> std::io::Result<Vec<u8>> {
///     std::fs::read("/etc/hostname")
/// }
/// ```
///
/// # The service
///
/// - `cache = <expr>`: any expression of a type that is `Borrow<CacheService>`: a
///   `CacheService`, a `&CacheService`, an `Arc<CacheService>`, `*LAZY_STATIC`, a parameter...
///   It is evaluated before the body runs and borrowed while the call lasts.
/// - Otherwise, a method with `self` uses `cachekit::HasCache` on its
///   receiver: `&self`, `&mut self`, `self`, `self: Arc<Self>`... (with other receivers than
///   `&self`, the service handle is cloned first, since the body takes `self`).
/// - Otherwise, the process-wide service set with `cachekit::set_global`. When none is set, the
///   body simply runs, uncached (a warning is logged once).
///
/// ```
/// # use cachekit::{CacheService, cached};
/// #[cached(key = "page:{n}", cache = cache)]
/// async fn page(cache: &CacheService, n: u32) -> Vec<u32> {
///     (n * 10..n * 10 + 10).collect()
/// }
///
/// #[cached(ttl = 30)]
/// async fn exchange_rate(from: String, to: String) -> Result<f64, String> {
///     // Uses the service given to `cachekit::set_global` at start-up.
///     Ok(1.1)
/// }
/// ```
///
/// # `status`
///
/// Callers that report whether a value came from the cache (`"cached": true`) opt in with
/// `status`. The function itself is unchanged, and a companion `{name}_with_status` with the
/// same parameters is generated next to it, returning `cachekit::Fetched<T>`
/// (`value` and `from_cache`) in place of the value: `Result<Fetched<T>, E>` for a
/// `Result<T, E>`, `Fetched<R>` for any other return type `R`.
///
/// ```
/// # use cachekit::{CacheService, HasCache, cached};
/// # struct UserRepo { cache: CacheService }
/// # impl HasCache for UserRepo { fn cache(&self) -> &CacheService { &self.cache } }
/// impl UserRepo {
///     #[cached(key = "users:{id}:name", status)]
///     async fn user_name(&self, id: u64) -> Result<String, String> {
///         Ok(format!("user {id}"))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let repo = UserRepo { cache: CacheService::memory() };
/// let first = repo.user_name_with_status(1).await.unwrap();
/// assert!(!first.from_cache);
/// let second = repo.user_name_with_status(1).await.unwrap();
/// assert!(second.from_cache);
/// assert_eq!(second.value, "user 1");
/// assert_eq!(repo.user_name(1).await.unwrap(), "user 1"); // the function itself is unchanged
/// # }
/// ```
///
/// Being a second item, the companion needs a place for one: a free function, an inherent
/// method, or a trait's provided method; not a method of a trait impl. In an impl, the
/// function calls it as `Self::{name}_with_status`, which it can do when it has a `self`
/// parameter or mentions `Self` in its signature.
///
/// # With `#[invalidates]`
///
/// Both attributes may stand on one function, in either order. On a miss the body runs, then
/// the invalidation (when the body succeeded), then the value is stored; a hit runs neither.
/// `#[invalidates]` uses `#[cached]`'s `cache = ...` unless it has its own.
///
/// # Compile errors
///
/// Misuse is reported at the offending token: a function that is not `async`, an unknown
/// placeholder or one naming `self`, a `ttl` that is not a positive integer, an unknown or
/// repeated option, a parameter that is a pattern rather than a plain name, a return type that
/// is missing or cannot be serialized, an argument that cannot be serialized or displayed.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::expand(expand::Kind::Cached, args.into(), input.into()).into()
}

/// Removes cache entries after an `async fn` succeeds.
///
/// ```
/// use cachekit::{CacheService, HasCache, cached, invalidates};
///
/// struct UserRepo {
///     cache: CacheService,
/// }
///
/// impl HasCache for UserRepo {
///     fn cache(&self) -> &CacheService {
///         &self.cache
///     }
/// }
///
/// impl UserRepo {
///     #[cached(key = "users:{id}")]
///     async fn get_user(&self, id: u64) -> Result<String, String> {
///         Ok(format!("user {id}"))
///     }
///
///     /// Every key under `users:`.
///     #[invalidates("users:*")]
///     async fn rename_all(&self, suffix: &str) -> Result<(), String> {
///         Ok(())
///     }
///
///     /// Exactly `users:{id}` and `user_roles:{id}`.
///     #[invalidates("users:{id}", "user_roles:{id}")]
///     async fn delete_user(&self, id: &str) -> Result<(), String> {
///         if id.is_empty() {
///             return Err("no id".into()); // an Err invalidates nothing
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let repo = UserRepo { cache: CacheService::memory() };
/// repo.get_user(1).await.unwrap();
/// repo.delete_user("*").await.unwrap(); // removes the key `users:*`, not every user
/// assert!(repo.cache.get::<String>("users:1").await.is_some());
/// repo.delete_user("1").await.unwrap();
/// assert!(repo.cache.get::<String>("users:1").await.is_none());
/// # }
/// ```
///
/// Each argument is a pattern in Redis glob syntax (`*`, `?`, `[abc]`), applied inside the
/// service's prefix, with `{param}` placeholders as in `#[cached]` keys. The literal text keeps
/// its globs (`users:*`), but a placeholder's value is escaped as in a key (`%` and `:`), then
/// glob-escaped: an argument of `*` never widens an invalidation, and an argument of `a:b`
/// names exactly the key `#[cached]` built for `a:b`. A rendered pattern with a glob goes to
/// `invalidate_pattern`; one without names one key and goes to `delete`.
///
/// The patterns are rendered before the body runs (it takes the arguments), and the
/// invalidation runs after it succeeds: when it returns `Ok` — for a return type read as a
/// `Result` by the rules of [`cached`](macro@cached) — or any value of another type. Nothing is
/// invalidated when it returns `Err`. A cache failure never fails the call.
///
/// The service is found as for `#[cached]`: `cache = <expr>`, else `HasCache` on `self`, else
/// the process-wide service.
///
/// ```
/// # use cachekit::{CacheService, invalidates};
/// # use std::sync::LazyLock;
/// # static CACHE: LazyLock<CacheService> = LazyLock::new(CacheService::memory);
/// #[invalidates("settings:{name}", "settings_list:*", cache = *CACHE)]
/// async fn set_setting(name: &str, value: String) -> Result<(), std::io::Error> {
///     Ok(())
/// }
/// ```
///
/// The function must be `async`; at least one pattern is required; placeholders must name
/// parameters (not `self`). Combined with `#[cached]`, see [`cached`](macro@cached).
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::expand(expand::Kind::Invalidates, args.into(), input.into()).into()
}
