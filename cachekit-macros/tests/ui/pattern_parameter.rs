use cachekit::cached;

#[cached(key = "page")]
async fn page((skip, limit): (u32, u32)) -> Vec<u32> {
    (skip..skip + limit).collect()
}

fn main() {}
