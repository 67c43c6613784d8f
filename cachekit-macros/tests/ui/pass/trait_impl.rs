// `async fn` in traits: the attribute works in trait impls and default bodies.
#![deny(warnings)]
#![allow(async_fn_in_trait)]

use cachekit::{CacheService, HasCache, cached};

trait Users: HasCache {
    async fn name(&self, id: u64) -> Option<String>;

    #[cached(key = "default:{id}", status)]
    async fn default_name(&self, id: u64) -> Option<String> {
        Some(id.to_string())
    }
}

struct Repo {
    cache: CacheService,
}

impl HasCache for Repo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Users for Repo {
    #[cached(key = "names:{id}")]
    async fn name(&self, id: u64) -> Option<String> {
        Some(id.to_string())
    }
}

async fn use_them(repo: Repo) {
    let _ = repo.name(1).await;
    let _ = repo.default_name(1).await;
    let _ = repo.default_name_with_status(1).await;
}

fn main() {
    let _ = use_them;
}
