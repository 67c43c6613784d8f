use cachekit::invalidates;

#[invalidates]
async fn delete_all() -> Result<(), String> {
    Ok(())
}

fn main() {}
