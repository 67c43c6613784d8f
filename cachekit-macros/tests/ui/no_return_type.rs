use cachekit::cached;

#[cached(key = "users:{id}")]
async fn touch(id: u64) {
    let _ = id;
}

fn main() {}
