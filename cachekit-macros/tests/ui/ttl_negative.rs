use cachekit::cached;

#[cached(ttl = -5)]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
