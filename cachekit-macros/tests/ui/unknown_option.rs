use cachekit::cached;

#[cached(tll = 300, key = "users:{id}")]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
