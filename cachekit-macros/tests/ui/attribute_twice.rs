use cachekit::cached;

#[cached(key = "a:{id}")]
#[cached(key = "b:{id}")]
async fn get(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
