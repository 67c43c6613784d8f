use cachekit::cached;

#[cached(ttl = 0)]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
