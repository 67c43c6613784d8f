use cachekit::cached;

#[cached(cache_none = true)]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
