use cachekit::cached;

const TTL: u64 = 300;

#[cached(ttl = TTL)]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
