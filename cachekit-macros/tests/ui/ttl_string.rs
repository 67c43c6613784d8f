use cachekit::cached;

#[cached(ttl = "300")]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
