// The futures of annotated functions are `Send` when the original's would be, so they can be
// spawned on a multi-threaded runtime.
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
    #[cached(key = "users:{id}", status)]
    async fn get(&self, id: u64, name: &str) -> Result<Option<String>, String> {
        Ok(Some(format!("{id}{name}")))
    }

    #[invalidates("users:{id}")]
    #[cached(key = "x:{id}")]
    async fn both(&mut self, id: u64) -> Result<u64, String> {
        Ok(id)
    }
}

#[cached]
async fn free(id: u64) -> Vec<u64> {
    vec![id]
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    let mut repo = Repo {
        cache: CacheService::memory(),
    };
    assert_send(repo.get(1, "a"));
    assert_send(repo.get_with_status(1, "a"));
    assert_send(repo.both(1));
    assert_send(free(1));
}
