use cachekit::invalidates;

#[invalidates("users:{id}", ttl = 5)]
async fn delete_user(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
