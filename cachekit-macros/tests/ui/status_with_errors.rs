// An error in the attribute is the only error: the function and its `_with_status`
// companion still exist for their callers.
use cachekit::cached;

#[cached(key = "users:{idd}", status)]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

async fn caller() -> bool {
    let _ = get_user(1).await;
    get_user_with_status(1).await.from_cache
}

fn main() {
    let _ = caller();
}
