// Both attributes on one function, in either order, on methods and free functions.
#![deny(warnings)]

use cachekit::{CacheService, HasCache, cached, invalidates};

struct Repo {
    cache: CacheService,
}

impl HasCache for Repo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Repo {
    #[cached(key = "users:{id}")]
    #[invalidates("user_lists:*")]
    async fn get_or_create(&self, id: u64) -> Result<u64, String> {
        Ok(id)
    }

    #[invalidates("user_lists:*")]
    #[cached(key = "users:{id}:v2", status)]
    async fn get_or_create_v2(&self, id: u64) -> Result<u64, String> {
        Ok(id)
    }
}

#[cachekit::invalidates("a:{id}", cache = CacheService::memory())]
#[cachekit::cached(key = "b:{id}")]
async fn free(id: u64) -> Option<u64> {
    Some(id)
}

async fn use_them(repo: Repo) {
    let _ = repo.get_or_create(1).await;
    let _ = repo.get_or_create_v2(1).await;
    let _ = repo.get_or_create_v2_with_status(1).await;
    let _ = free(1).await;
}

fn main() {
    let _ = use_them;
}
