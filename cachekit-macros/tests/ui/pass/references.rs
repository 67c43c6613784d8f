// Arguments may be references; placeholders need `Display`, hashed arguments `Serialize`.
#![deny(warnings)]

use cachekit::{cached, invalidates};
use serde::Serialize;

#[derive(Serialize)]
struct Filter {
    active: bool,
    tags: Vec<String>,
}

#[cached(key = "users:{name}")]
async fn by_name(name: &str, filter: &Filter) -> Vec<String> {
    vec![format!("{name}{}", filter.active)]
}

#[cached]
async fn by_slice(ids: &[u64], r#type: &String) -> Vec<u64> {
    let _ = r#type;
    ids.to_vec()
}

#[cached(key = "kind:{type}")]
async fn raw_identifier(r#type: &str) -> String {
    r#type.to_owned()
}

#[invalidates("users:{name}")]
async fn rename(name: &str, to: String) -> Result<String, String> {
    Ok(format!("{name}->{to}"))
}

#[cached(key = "{{users}}:{id}")]
async fn hash_tag(id: u64) -> u64 {
    id
}

async fn use_them() {
    let filter = Filter {
        active: true,
        tags: vec![],
    };
    let _ = filter.tags.len();
    let _ = by_name("ann", &filter).await;
    let _ = by_slice(&[1, 2], &String::new()).await;
    let _ = raw_identifier("x").await;
    let _ = rename("a", "b".into()).await;
    let _ = hash_tag(1).await;
}

fn main() {
    let _ = use_them;
}
