use cachekit::{CacheService, HasCache, cached};

struct Repo {
    cache: CacheService,
}

impl HasCache for Repo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Repo {
    #[cached(key = "users:{self}")]
    async fn get_user(&self, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {}
