use cachekit::cached;

struct Filter;

#[cached(key = "users")]
async fn search(limit: u32, filter: &Filter, skip: u32) -> Vec<u64> {
    let _ = (filter, limit, skip);
    vec![]
}

fn main() {}
