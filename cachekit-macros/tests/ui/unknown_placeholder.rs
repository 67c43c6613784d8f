use cachekit::cached;

#[cached(key = "users:{idd}")]
async fn get_user(id: u64, name: String) -> Option<String> {
    Some(format!("{id}{name}"))
}

fn main() {}
