//! The scripted demo the `users` binary runs: every pattern once, with what happened.

use super::model::{NewUser, Page, Permission, PublicUser, Role, UserFilter, UserPatch};
use super::repo::{UserError, UserRepo};
use cachekit::HasCache;
use cachekit::key::hash_args;
use std::collections::HashSet;
use std::io::{self, Write};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A repository call failed.
    #[error(transparent)]
    User(#[from] UserError),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    /// Something the demo checks did not hold.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

/// Runs the demo on a freshly connected repository, writing what happens to `out`: each call,
/// whether the cache answered (`hit`) or the database did (`miss`), how many database round
/// trips it made, and the cache's statistics at the end. Finishes in well under a second on
/// the embedded store or a local Redis.
pub async fn run_demo(repo: &UserRepo, out: &mut dyn Write) -> Result<(), DemoError> {
    let cache = repo.cache();
    writeln!(
        out,
        "users demo: cache backend {}, key prefix `{}`",
        cache.stats().backend,
        cache.prefix()
    )?;
    let mut step = Step::new(repo);

    writeln!(out, "\n== lists and filters, cached under hashed keys")?;
    // The keys the macro builds: the template, then the SHA-256 of the unnamed arguments.
    let list_key = format!("users:list:{}", hash_args(&(0u32, 3u32)));
    for round in 0..2 {
        let page = repo.list_users_with_status(0, 3).await?;
        let mut detail = names(&page.value);
        if round == 0 {
            detail.push_str(&format!(" under {}", short(&list_key)));
        }
        step.report(out, "list_users(0, 3)", Some(page.from_cache), &detail)?;
    }
    let filter = UserFilter {
        active: Some(true),
        department: Some("research".into()),
        ..UserFilter::default()
    };
    let filter_key = format!("users:filter:{}", hash_args(&(&filter,)));
    filter_step(repo, &mut step, out, &filter, Some(&filter_key)).await?;
    filter_step(repo, &mut step, out, &filter, None).await?;
    let katherine = repo
        .create_user(NewUser {
            email: "Katherine@Example.com".into(),
            username: "katherine".into(),
            full_name: "Katherine Johnson".into(),
            department: "research".into(),
            password: "katherine-password".into(),
        })
        .await?;
    let detail = format!("id {}; invalidated users:*", katherine.id);
    step.report(out, "create_user(katherine)", None, &detail)?;
    let page = filter_step(repo, &mut step, out, &filter, None).await?;
    if !page.items.iter().any(|u| u.id == katherine.id) {
        return Err(DemoError::Unexpected(
            "the new user is not in the filter".into(),
        ));
    }

    writeln!(out, "\n== one cached user behind three lookups")?;
    let ada = repo.find_by_email("ada@example.com").await?;
    step.report(out, "find_by_email(ada@example.com)", None, &user(&ada))?;
    let by_name = repo.find_by_username("ada").await?;
    step.report(out, "find_by_username(ada)", None, &user(&by_name))?;
    let by_id = repo.get_user_with_status(1).await?;
    step.report(
        out,
        "get_user(1)",
        Some(by_id.from_cache),
        &user(&by_id.value),
    )?;
    let again = repo.find_by_email("ADA@example.com").await?;
    step.report(out, "find_by_email(ADA@example.com)", None, &user(&again))?;
    let patch = UserPatch {
        email: Some("countess@example.com".into()),
        full_name: Some("Augusta Ada King".into()),
        ..UserPatch::default()
    };
    repo.update_user(1, patch).await?;
    step.report(
        out,
        "update_user(1, new email and name)",
        None,
        "invalidated user:id:1, user:email:ada@example.com, user:username:ada, users:*",
    )?;
    let old = repo.find_by_email("ada@example.com").await?;
    step.report(out, "find_by_email(ada@example.com)", None, &user(&old))?;
    let new = repo.find_by_email("countess@example.com").await?;
    step.report(
        out,
        "find_by_email(countess@example.com)",
        None,
        &user(&new),
    )?;
    let by_name = repo.find_by_username("ada").await?;
    step.report(out, "find_by_username(ada)", None, &user(&by_name))?;
    if old.is_some() || by_name.as_ref().map(|u| u.full_name.as_str()) != Some("Augusta Ada King") {
        return Err(DemoError::Unexpected("a lookup served the old user".into()));
    }

    writeln!(
        out,
        "\n== permissions: a HashSet<Permission> per user, one hour"
    )?;
    let grace = 2;
    for _ in 0..2 {
        let perms = repo.permissions_with_status(grace).await?;
        step.report(
            out,
            "permissions(2)",
            Some(perms.from_cache),
            &set(&perms.value),
        )?;
    }
    let can = repo.has_permission(grace, Permission::ManageUsers).await?;
    step.report(
        out,
        "has_permission(2, manage_users)",
        None,
        &can.to_string(),
    )?;
    repo.assign_role(grace, Role::Admin).await?;
    step.report(
        out,
        "assign_role(2, admin)",
        None,
        "invalidated permissions:2",
    )?;
    let can = repo.has_permission(grace, Permission::ManageUsers).await?;
    step.report(
        out,
        "has_permission(2, manage_users)",
        None,
        &can.to_string(),
    )?;
    let perms = repo.refresh_permissions(grace).await?;
    step.report(out, "refresh_permissions(2)", None, &set(&perms))?;
    if !can {
        return Err(DemoError::Unexpected(
            "the new role's permission is missing".into(),
        ));
    }

    writeln!(
        out,
        "\n== login always reads the database; the hash is never cached"
    )?;
    let password = UserRepo::seed_password("grace");
    let ok = repo.login("grace@example.com", &password).await?;
    step.report(out, "login(grace, right password)", None, &user(&ok))?;
    let ok = repo.login("grace@example.com", &password).await?;
    step.report(out, "login(grace, right password)", None, &user(&ok))?;
    let wrong = repo.login("grace@example.com", "guess").await?;
    step.report(out, "login(grace, wrong password)", None, &user(&wrong))?;
    repo.change_password(grace, "new-password").await?;
    step.report(out, "change_password(2)", None, "nothing to invalidate")?;
    let old = repo.login("grace@example.com", &password).await?;
    step.report(out, "login(grace, old password)", None, &user(&old))?;
    if ok.is_none() || wrong.is_some() || old.is_some() {
        return Err(DemoError::Unexpected("a login answered wrongly".into()));
    }

    let stats = cache.stats();
    writeln!(
        out,
        "\nstats: hits={} misses={} hit_rate={:.2} sets={} deletes={} invalidations={} errors={} \
         fallbacks={}; database round trips: {}",
        stats.hits,
        stats.misses,
        stats.hit_rate(),
        stats.sets,
        stats.deletes,
        stats.invalidations,
        stats.errors,
        stats.fallbacks,
        repo.db_queries()
    )?;
    Ok(())
}

/// Counts the database round trips of each step.
struct Step<'a> {
    repo: &'a UserRepo,
    queries: u64,
}

impl<'a> Step<'a> {
    fn new(repo: &'a UserRepo) -> Self {
        Self {
            repo,
            queries: repo.db_queries(),
        }
    }

    /// One line: the call, `hit`/`miss` when known, the round trips since the last line.
    fn report(
        &mut self,
        out: &mut dyn Write,
        call: &str,
        from_cache: Option<bool>,
        detail: &str,
    ) -> io::Result<()> {
        let now = self.repo.db_queries();
        let trips = now - self.queries;
        self.queries = now;
        let source = match from_cache {
            Some(true) => "hit",
            Some(false) => "miss",
            None => "",
        };
        writeln!(out, "  {call:<38} {source:<4}  db {trips}  {detail}")
    }
}

/// Runs the demo's filter query and reports it, with its key when given.
async fn filter_step(
    repo: &UserRepo,
    step: &mut Step<'_>,
    out: &mut dyn Write,
    filter: &UserFilter,
    key: Option<&str>,
) -> Result<Page<PublicUser>, DemoError> {
    let found = repo.filter_users_with_status(filter).await?;
    let mut detail = format!("{} of {}", names(&found.value.items), found.value.total);
    if let Some(key) = key {
        detail.push_str(&format!(" under {}", short(key)));
    }
    step.report(
        out,
        "filter_users(active research)",
        Some(found.from_cache),
        &detail,
    )?;
    Ok(found.value)
}

/// A hashed key, shortened for the screen.
fn short(key: &str) -> String {
    match key.rsplit_once(':') {
        Some((head, hash)) if hash.len() > 12 => format!("{head}:{}…", &hash[..12]),
        _ => key.to_owned(),
    }
}

fn names(users: &[PublicUser]) -> String {
    let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    format!("[{}]", names.join(", "))
}

fn user(user: &Option<PublicUser>) -> String {
    match user {
        Some(u) => format!("#{} {} <{}>", u.id, u.full_name, u.email),
        None => "none".into(),
    }
}

fn set(permissions: &HashSet<Permission>) -> String {
    let mut names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
    names.sort_unstable();
    format!("{{{}}}", names.join(", "))
}
