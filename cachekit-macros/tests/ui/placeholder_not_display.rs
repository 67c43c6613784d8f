use cachekit::cached;

#[derive(serde::Serialize)]
struct Filter;

#[cached(key = "users:{filter}")]
async fn search(filter: Filter) -> Vec<u64> {
    let _ = filter;
    vec![]
}

fn main() {}
