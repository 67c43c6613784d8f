// Generic functions: hashed arguments need `Serialize`, the value `Serialize +
// DeserializeOwned + Clone + Send + Sync + 'static` (the in-process tier holds it).
#![deny(warnings)]

use cachekit::cached;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;

#[cached(key = "by:{query}")]
async fn by<Q: Display>(query: Q) -> Vec<u64> {
    let _ = query.to_string();
    vec![]
}

#[cached(key = "load:{id}", status)]
async fn load<T>(id: u64) -> Option<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let _ = id;
    None
}

#[cached(status)]
async fn any_query(query: impl Serialize + Send, limit: usize) -> Vec<u64> {
    let _ = (serde_json::to_string(&query), limit);
    vec![]
}

#[cached(key = "fixed:{n}", status)]
async fn fixed<const N: usize>(n: usize) -> Vec<u64> {
    let _ = n;
    vec![0; N]
}

async fn use_them() {
    let _ = by("x").await;
    let _: Option<String> = load::<String>(1).await;
    let _ = load_with_status::<u64>(1).await;
    let _ = any_query(1, 2).await;
    let _ = any_query_with_status("x", 2).await;
    let _ = fixed::<3>(1).await;
    let _ = fixed_with_status::<3>(1).await;
}

fn main() {
    let _ = use_them;
}
