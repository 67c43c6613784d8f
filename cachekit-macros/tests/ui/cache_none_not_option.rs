use cachekit::cached;

#[cached(cache_none)]
async fn get_user(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
