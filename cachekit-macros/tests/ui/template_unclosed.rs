use cachekit::cached;

#[cached(key = "users:{id")]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
