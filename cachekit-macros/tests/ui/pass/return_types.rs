// Return types: `Result` (aliases too), `Option`, `Result<Option<_>>`, plain values; `?` and
// `return` in the body.
#![deny(warnings)]

use cachekit::{cached, invalidates};

#[derive(Debug)]
struct DbError;

impl From<std::num::ParseIntError> for DbError {
    fn from(_: std::num::ParseIntError) -> Self {
        Self
    }
}

type DbResult<T> = Result<T, DbError>;

#[cached(key = "parse:{text}")]
async fn parse(text: String) -> Result<u64, DbError> {
    if text.is_empty() {
        return Ok(0);
    }
    let n: u64 = text.parse()?;
    Ok(n)
}

#[cached(key = "alias:{text}", status)]
async fn alias(text: String) -> DbResult<Option<u64>> {
    Ok(Some(text.parse()?))
}

#[cached(key = "io:{path}")]
async fn io(path: String) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[cached(key = "option:{id}", cache_none)]
async fn option(id: u64) -> Option<u64> {
    if id == 0 {
        return None;
    }
    Some(id)
}

#[cached(key = "tuple", status)]
async fn tuple() -> (u64, String) {
    (1, String::new())
}

#[cached(ttl = 1, key = "list")]
async fn list() -> Vec<u64> {
    (0..3).collect()
}

#[invalidates("plain")]
async fn plain() -> u64 {
    1
}

#[invalidates("parsed")]
async fn invalidate_parse(text: &str) -> DbResult<u64> {
    Ok(text.parse()?)
}

async fn use_them() {
    let _: Result<u64, DbError> = parse(String::new()).await;
    let _: DbResult<Option<u64>> = alias(String::new()).await;
    let _: DbResult<cachekit::Fetched<Option<u64>>> = alias_with_status(String::new()).await;
    let _ = io(String::new()).await;
    let _ = option(1).await;
    let _: cachekit::Fetched<(u64, String)> = tuple_with_status().await;
    let _ = tuple().await;
    let _ = list().await;
    let _ = plain().await;
    let _ = invalidate_parse("1").await;
}

fn main() {
    let _ = use_them;
}
