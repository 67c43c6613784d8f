use cachekit::cached;

#[cached(key = "users:{id}")]
fn get_user(id: u64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
