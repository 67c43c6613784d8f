//! The `users` example end to end against a private `redis-server` per test, reading Redis
//! directly: list and filter results under hashed keys and their invalidation, the permission
//! set's one-hour TTL and refresh, three lookups sharing one cached user, a password hash that
//! never reaches Redis, the scripted demo, and correct answers with Redis killed halfway.

use std::collections::HashSet;
use std::time::Duration;

use cachekit::CacheService;
use cachekit::key::hash_args;
use cachekit_examples::users::{
    NewUser, Permission, Role, SortBy, UserError, UserFilter, UserPatch, UserRepo, run_demo,
};
use cachekit_tests::{RedisServer, init_tracing, raw};
use example_support::kill;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

mod example_support;

const PREFIX: &str = "app";

async fn redis_cache(server: &RedisServer) -> CacheService {
    example_support::redis_cache(server, PREFIX).await
}

async fn repo(cache: CacheService) -> UserRepo {
    UserRepo::connect(cache, "sqlite::memory:")
        .await
        .expect("the database opens and is seeded")
}

/// Every key in Redis with its value (as text), with `SCAN` and `GET`; the invalidation index's
/// sets (`{prefix}#...`) with their members, joined by newlines.
async fn raw_dump(conn: &mut MultiplexedConnection) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for key in raw::keys(conn, "*").await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("TYPE");
        let value: Option<Vec<u8>> = match kind.as_str() {
            "string" => raw::get(conn, &key).await,
            "zset" | "set" => {
                let mut read = if kind == "set" {
                    redis::cmd("SMEMBERS")
                } else {
                    redis::cmd("ZRANGE")
                };
                read.arg(&key);
                if kind == "zset" {
                    read.arg(0).arg(-1);
                }
                let members: Vec<Vec<u8>> = read.query_async(conn).await.expect("the members");
                Some(members.join(&b'\n'))
            }
            other => panic!("{key} is a {other}"),
        };
        if let Some(value) = value {
            entries.push((key, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    entries
}

fn names(users: &[cachekit_examples::users::PublicUser]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

/// A user to create: Hedy Lamarr, engineering, password `frequency-hopping`.
fn hedy() -> NewUser {
    NewUser {
        email: "hedy@example.com".into(),
        username: "hedy".into(),
        full_name: "Hedy Lamarr".into(),
        department: "engineering".into(),
        password: "frequency-hopping".into(),
    }
}

/// The `nth` line of the demo's output that reports `call`.
fn nth_line<'a>(output: &'a str, call: &str, nth: usize) -> &'a str {
    output
        .lines()
        .filter(|line| line.trim_start().starts_with(call))
        .nth(nth)
        .unwrap_or_else(|| panic!("no line {nth} for {call} in:\n{output}"))
}

#[tokio::test]
async fn lists_and_filters_are_cached_under_hashed_keys_and_invalidated_by_writes() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let repo = repo(redis_cache(&server).await).await;

    // users:list:{sha256 of [skip,limit]}
    let first = repo.list_users_with_status(0, 3).await.unwrap();
    assert!(!first.from_cache);
    assert_eq!(names(&first.value), ["ada", "grace", "linus"]);
    assert!(repo.list_users_with_status(0, 3).await.unwrap().from_cache);
    let list_key = format!("{PREFIX}:users:list:{}", hash_args(&(0u32, 3u32)));
    let stored: Value = serde_json::from_str(
        &raw::get::<Option<String>>(&mut conn, &list_key)
            .await
            .unwrap(),
    )
    .expect("the value is JSON");
    assert_eq!(stored.as_array().map(Vec::len), Some(3));
    let ttl = raw::pttl(&mut conn, &list_key).await;
    assert!((55_000..=60_000).contains(&ttl), "PTTL {ttl}");
    repo.list_users(3, 3).await.unwrap();

    // users:filter:{sha256 of [filter]}: equal filters share an entry, others do not.
    let filter = UserFilter {
        department: Some("engineering".into()),
        sort_by: SortBy::FullName,
        descending: true,
        ..UserFilter::default()
    };
    let page = repo.filter_users_with_status(&filter).await.unwrap();
    assert!(!page.from_cache);
    assert_eq!(names(&page.value.items), ["linus", "grace", "ada"]);
    assert_eq!(page.value.total, 3);
    assert!(
        repo.filter_users_with_status(&filter.clone())
            .await
            .unwrap()
            .from_cache
    );
    let filter_key = format!("{PREFIX}:users:filter:{}", hash_args(&(&filter,)));
    assert!(
        raw::get::<Option<String>>(&mut conn, &filter_key)
            .await
            .is_some()
    );
    let active = UserFilter {
        active: Some(false),
        ..UserFilter::default()
    };
    let inactive = repo.filter_users(&active).await.unwrap();
    assert_eq!(names(&inactive.items), ["alan"]);
    assert_eq!(
        raw::keys(&mut conn, &format!("{PREFIX}:users:*"))
            .await
            .len(),
        4
    );

    // A create drops every list and filter page, and nothing else.
    repo.get_user(1).await.unwrap();
    let hedy = repo.create_user(hedy()).await.unwrap();
    assert!(
        raw::keys(&mut conn, &format!("{PREFIX}:users:*"))
            .await
            .is_empty()
    );
    assert!(
        raw::get::<Option<String>>(&mut conn, &format!("{PREFIX}:user:id:1"))
            .await
            .is_some()
    );
    let page = repo.filter_users_with_status(&filter).await.unwrap();
    assert!(!page.from_cache);
    assert_eq!(names(&page.value.items), ["linus", "hedy", "grace", "ada"]);

    // So do an update and a delete.
    let patch = UserPatch {
        department: Some("research".into()),
        ..UserPatch::default()
    };
    repo.update_user(hedy.id, patch).await.unwrap();
    assert!(
        raw::keys(&mut conn, &format!("{PREFIX}:users:*"))
            .await
            .is_empty()
    );
    assert_eq!(repo.filter_users(&filter).await.unwrap().total, 3);
    repo.list_users(0, 100).await.unwrap();
    repo.delete_user(hedy.id).await.unwrap();
    assert!(
        raw::keys(&mut conn, &format!("{PREFIX}:users:*"))
            .await
            .is_empty()
    );
    assert_eq!(repo.list_users(0, 100).await.unwrap().len(), 6);
}

#[tokio::test]
async fn permissions_have_a_one_hour_ttl_are_invalidated_by_role_changes_and_refresh() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let repo = repo(redis_cache(&server).await).await;
    let key = format!("{PREFIX}:permissions:3");
    let manager: HashSet<Permission> = [
        Permission::ViewProjects,
        Permission::EditProjects,
        Permission::ViewReports,
    ]
    .into();

    let first = repo.permissions_with_status(3).await.unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.value, manager);
    let second = repo.permissions_with_status(3).await.unwrap();
    assert!(second.from_cache);
    assert_eq!(second.value, manager);
    let ttl = raw::pttl(&mut conn, &key).await;
    assert!((3_590_000..=3_600_000).contains(&ttl), "PTTL {ttl}");
    let stored: HashSet<String> =
        serde_json::from_str(&raw::get::<Option<String>>(&mut conn, &key).await.unwrap())
            .expect("a JSON array of names");
    assert_eq!(
        stored,
        HashSet::from(["view_projects", "edit_projects", "view_reports"].map(String::from))
    );

    // A role change drops the user's set (and only theirs).
    repo.permissions(2).await.unwrap();
    assert!(repo.assign_role(3, Role::Admin).await.unwrap());
    assert!(raw::get::<Option<String>>(&mut conn, &key).await.is_none());
    assert!(
        raw::get::<Option<String>>(&mut conn, &format!("{PREFIX}:permissions:2"))
            .await
            .is_some()
    );
    assert!(
        repo.has_permission(3, Permission::ManageUsers)
            .await
            .unwrap()
    );
    assert!(repo.revoke_role(3, Role::Admin).await.unwrap());
    assert!(raw::get::<Option<String>>(&mut conn, &key).await.is_none());
    assert_eq!(repo.permissions(3).await.unwrap(), manager);

    // A change the repository did not make (here: the cached set edited behind its back) is
    // served until it expires, or until a refresh drops and recomputes it.
    raw::set_px(
        &mut conn,
        &key,
        r#"["view_projects"]"#,
        Duration::from_secs(3600),
    )
    .await;
    assert_eq!(
        repo.permissions(3).await.unwrap(),
        HashSet::from([Permission::ViewProjects])
    );
    assert_eq!(repo.refresh_permissions(3).await.unwrap(), manager);
    let stored: HashSet<String> =
        serde_json::from_str(&raw::get::<Option<String>>(&mut conn, &key).await.unwrap()).unwrap();
    assert_eq!(stored.len(), 3);
    let ttl = raw::pttl(&mut conn, &key).await;
    assert!((3_590_000..=3_600_000).contains(&ttl), "PTTL {ttl}");

    // Everyone's, at once; and an unknown user is an error, never cached.
    repo.forget_all_permissions().await;
    assert!(
        raw::keys(&mut conn, &format!("{PREFIX}:permissions:*"))
            .await
            .is_empty()
    );
    assert!(matches!(
        repo.permissions(999).await,
        Err(UserError::NotFound(999))
    ));
    assert!(
        raw::keys(&mut conn, &format!("{PREFIX}:permissions:*"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn lookups_by_id_email_and_username_share_one_cached_user() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let repo = repo(redis_cache(&server).await).await;

    let by_email = repo.find_by_email("grace@example.com").await.unwrap();
    let by_username = repo.find_by_username("grace").await.unwrap();
    let by_id = repo.get_user_with_status(2).await.unwrap();
    assert!(
        by_id.from_cache,
        "the email lookup cached the user under user:id:2"
    );
    let grace = by_id.value.expect("user 2 exists");
    assert_eq!(grace.full_name, "Grace Hopper");
    assert_eq!(by_email.as_ref(), Some(&grace));
    assert_eq!(by_username.as_ref(), Some(&grace));

    // The email and username keys hold the id; the user is stored once.
    let email_key = format!("{PREFIX}:user:email:grace@example.com");
    let username_key = format!("{PREFIX}:user:username:grace");
    let id_key = format!("{PREFIX}:user:id:2");
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, &email_key)
            .await
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, &username_key)
            .await
            .as_deref(),
        Some("2")
    );
    let holding: Vec<String> = raw_dump(&mut conn)
        .await
        .into_iter()
        .filter(|(_, value)| value.contains("Grace Hopper"))
        .map(|(key, _)| key)
        .collect();
    assert_eq!(holding, std::slice::from_ref(&id_key));

    // Warm, the three lookups cost no database round trip (the email in any case).
    let before = repo.db_queries();
    assert_eq!(
        repo.find_by_email(" Grace@Example.COM ").await.unwrap(),
        Some(grace.clone())
    );
    assert_eq!(
        repo.find_by_username("grace").await.unwrap(),
        Some(grace.clone())
    );
    assert_eq!(repo.get_user(2).await.unwrap(), Some(grace.clone()));
    assert_eq!(repo.db_queries(), before);

    // An update drops all three keys, named by the email and username the user had.
    let patch = UserPatch {
        email: Some("grace.hopper@navy.example".into()),
        username: Some("amazing-grace".into()),
        full_name: Some("Rear Admiral Grace Hopper".into()),
        ..UserPatch::default()
    };
    let updated = repo.update_user(2, patch).await.unwrap();
    for key in [&email_key, &username_key, &id_key] {
        assert!(
            raw::get::<Option<String>>(&mut conn, key).await.is_none(),
            "{key} survived"
        );
    }
    assert_eq!(repo.find_by_email("grace@example.com").await.unwrap(), None);
    assert_eq!(repo.find_by_username("grace").await.unwrap(), None);
    assert_eq!(
        repo.find_by_email("grace.hopper@navy.example")
            .await
            .unwrap(),
        Some(updated.clone())
    );
    assert_eq!(
        repo.find_by_username("amazing-grace").await.unwrap(),
        Some(updated.clone())
    );
    let by_id = repo.get_user_with_status(2).await.unwrap();
    assert!(by_id.from_cache);
    assert_eq!(
        by_id.value.as_ref().map(|u| u.full_name.as_str()),
        Some("Rear Admiral Grace Hopper")
    );

    // A change of any other field drops user:id:{id} as well; the id mappings are rebuilt.
    let patch = UserPatch {
        active: Some(false),
        ..UserPatch::default()
    };
    repo.update_user(2, patch).await.unwrap();
    let by_id = repo.get_user_with_status(2).await.unwrap();
    assert!(!by_id.from_cache);
    assert_eq!(by_id.value.map(|u| u.active), Some(false));

    // A delete drops everything about the user.
    repo.find_by_email("grace.hopper@navy.example")
        .await
        .unwrap();
    repo.find_by_username("amazing-grace").await.unwrap();
    repo.permissions(2).await.unwrap();
    repo.delete_user(2).await.unwrap();
    let left: Vec<String> = raw::keys(&mut conn, "*")
        .await
        .into_iter()
        .filter(|key| key.ends_with(":2") || key.contains("grace"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        repo.find_by_email("grace.hopper@navy.example")
            .await
            .unwrap(),
        None
    );
    assert_eq!(repo.get_user(2).await.unwrap(), None);
}

/// Runs the scripted demo against Redis over a database file, then reads every value in Redis
/// and every hash in the database: no value holds a hash, a digest, or a password.
#[tokio::test]
async fn the_password_hash_never_reaches_redis() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let repo = UserRepo::connect(redis_cache(&server).await, &url)
        .await
        .unwrap();

    let mut output = Vec::new();
    run_demo(&repo, &mut output).await.unwrap();
    // More traffic through every cached read, after the demo's writes.
    for id in 1..=7 {
        repo.get_user(id).await.unwrap();
        repo.permissions(id).await.unwrap();
    }
    repo.list_users(0, 100).await.unwrap();
    repo.filter_users(&UserFilter::default()).await.unwrap();
    repo.find_by_username("linus").await.unwrap();
    repo.find_by_email("katherine@example.com").await.unwrap();

    // Login always reads the database, right or wrong.
    let before = repo.db_queries();
    let password = UserRepo::seed_password("linus");
    for _ in 0..3 {
        let user = repo.login("linus@example.com", &password).await.unwrap();
        assert_eq!(user.map(|u| u.id), Some(3));
    }
    assert_eq!(repo.login("linus@example.com", "nope").await.unwrap(), None);
    assert_eq!(repo.db_queries(), before + 4);

    let pool = cachekit_examples::db::connect(&url).await.unwrap();
    let hashes: Vec<String> = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 7);
    let entries = raw_dump(&mut conn).await;
    assert!(
        entries.len() >= 15,
        "the demo cached {} values",
        entries.len()
    );
    for (key, value) in &entries {
        for hash in &hashes {
            let digest = hash.rsplit('$').next().unwrap();
            assert!(
                !value.contains(hash.as_str()) && !value.contains(digest),
                "{key} holds a password hash"
            );
        }
        assert!(!value.contains("sha256$"), "{key}: {value}");
        assert!(!value.contains("password"), "{key}: {value}");
    }
}

#[tokio::test]
async fn the_demo_prints_misses_hits_and_invalidations() {
    init_tracing();
    let server = RedisServer::start();
    let repo = repo(redis_cache(&server).await).await;
    let mut output = Vec::new();
    run_demo(&repo, &mut output).await.unwrap();
    let output = String::from_utf8(output).unwrap();
    let line = |call: &str, nth: usize| nth_line(&output, call, nth);
    assert!(
        output.starts_with("users demo: cache backend redis, key prefix `app`"),
        "{output}"
    );
    assert!(line("list_users(0, 3)", 0).contains(" miss "), "{output}");
    assert!(line("list_users(0, 3)", 1).contains(" hit "), "{output}");
    assert!(line("list_users(0, 3)", 1).contains("db 0"), "{output}");
    assert!(
        line("create_user(katherine)", 0).contains("invalidated users:*"),
        "{output}"
    );
    assert!(line("filter_users", 2).contains(" miss "), "{output}");
    assert!(line("get_user(1)", 0).contains(" hit "), "{output}");
    assert!(line("permissions(2)", 1).contains(" hit "), "{output}");
    assert!(
        line("has_permission(2, manage_users)", 1).ends_with("true"),
        "{output}"
    );
    assert!(
        line("login(grace, old password)", 0).ends_with("none"),
        "{output}"
    );
    assert!(output.contains("errors=0"), "{output}");

    // And on the embedded store, with nothing configured.
    let repo = self::repo(CacheService::memory()).await;
    let mut output = Vec::new();
    run_demo(&repo, &mut output).await.unwrap();
    let output = String::from_utf8(output).unwrap();
    assert!(
        output.starts_with("users demo: cache backend memory"),
        "{output}"
    );
}

/// With Redis killed halfway, every call still answers correctly: writes are visible at once
/// through every lookup, and the demo runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_correctly_with_redis_killed_halfway() {
    init_tracing();
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    let repo = repo(cache.clone()).await;

    // Warm every kind of entry.
    assert_eq!(
        names(&repo.list_users(0, 3).await.unwrap()),
        ["ada", "grace", "linus"]
    );
    repo.filter_users(&UserFilter::default()).await.unwrap();
    repo.find_by_email("ada@example.com").await.unwrap();
    repo.find_by_username("ada").await.unwrap();
    repo.permissions(2).await.unwrap();
    assert!(repo.get_user_with_status(1).await.unwrap().from_cache);

    kill(&server);

    let listed = repo.list_users_with_status(0, 3).await.unwrap();
    assert!(!listed.from_cache);
    assert_eq!(names(&listed.value), ["ada", "grace", "linus"]);
    let hedy = repo.create_user(hedy()).await.unwrap();
    assert!(names(&repo.list_users(0, 10).await.unwrap()).contains(&"hedy"));
    assert_eq!(
        repo.filter_users(&UserFilter::default())
            .await
            .unwrap()
            .total,
        7
    );

    let patch = UserPatch {
        full_name: Some("Ada King".into()),
        ..UserPatch::default()
    };
    repo.update_user(1, patch).await.unwrap();
    for user in [
        repo.find_by_email("ada@example.com").await.unwrap(),
        repo.find_by_username("ada").await.unwrap(),
        repo.get_user(1).await.unwrap(),
    ] {
        assert_eq!(user.map(|u| u.full_name), Some("Ada King".to_owned()));
    }

    assert!(
        !repo
            .has_permission(2, Permission::ManageUsers)
            .await
            .unwrap()
    );
    repo.assign_role(2, Role::Admin).await.unwrap();
    assert!(
        repo.has_permission(2, Permission::ManageUsers)
            .await
            .unwrap()
    );
    assert!(
        repo.refresh_permissions(2)
            .await
            .unwrap()
            .contains(&Permission::ManageRoles)
    );

    let password = UserRepo::seed_password("grace");
    assert!(
        repo.login("grace@example.com", &password)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        repo.login("grace@example.com", "guess")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        repo.login("hedy@example.com", "frequency-hopping")
            .await
            .unwrap()
            .is_some()
    );

    repo.delete_user(hedy.id).await.unwrap();
    assert_eq!(repo.get_user(hedy.id).await.unwrap(), None);
    assert_eq!(repo.find_by_username("hedy").await.unwrap(), None);

    let stats = cache.stats();
    assert!(stats.errors > 0, "{stats:?}");
    assert!(stats.fallbacks > 0, "{stats:?}");

    // The whole demo, start to end, with Redis still down.
    let repo = self::repo(cache).await;
    let mut output = Vec::new();
    run_demo(&repo, &mut output).await.unwrap();
}
