use cachekit::cached;

struct Repo;

impl Repo {
    #[cached(key = "users:{id}")]
    async fn get_user(&self, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {}
