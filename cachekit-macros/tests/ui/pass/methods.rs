// Methods: the service comes from `HasCache`, whatever the receiver.
#![deny(warnings)]

use cachekit::{CacheService, HasCache, cached, invalidates};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: u64,
}

#[derive(Clone)]
struct Repo {
    cache: CacheService,
    hits: u64,
}

impl HasCache for Repo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Repo {
    /// Doc comments stay on the function.
    #[cached(ttl = 300, key = "users:{id}")]
    pub async fn get_user(&self, id: u64) -> Result<Option<User>, String> {
        if id == 0 {
            return Err("zero".into());
        }
        Ok(Some(User { id }))
    }

    #[cached(key = "counter")]
    async fn exclusive(&mut self) -> u64 {
        self.hits += 1;
        self.hits
    }

    #[cached(key = "by_value:{id}")]
    async fn by_value(self, id: u64) -> u64 {
        self.hits + id
    }

    #[cached(key = "arc:{id}")]
    async fn shared_pointer(self: Arc<Self>, id: u64) -> u64 {
        self.hits + id
    }

    #[cached(key = "users:{id}:status", status)]
    pub(crate) async fn with_status(&self, mut id: u64) -> Option<User> {
        id += 1;
        Some(User { id })
    }

    #[cached(key = "mut:{id}:status", status)]
    async fn exclusive_with_status(&mut self, id: u64) -> u64 {
        self.hits += id;
        self.hits
    }

    /// An associated function with `Self` in its signature can have a companion.
    #[cached(key = "repo:{id}", cache = CacheService::memory(), status)]
    async fn associated(id: u64) -> Option<Self> {
        let _ = id;
        None
    }

    #[cached(key = "field:{id}", cache = self.cache)]
    async fn from_a_field(&self, id: u64) -> u64 {
        self.hits + id
    }

    #[cached(key = "field_mut:{id}", cache = self.cache)]
    async fn from_a_field_exclusive(&mut self, id: u64) -> u64 {
        self.hits += id;
        self.hits
    }

    #[invalidates("users:*")]
    async fn update(&self, user: User) -> Result<User, String> {
        Ok(user)
    }

    #[invalidates("counter")]
    async fn reset(&mut self) {
        self.hits = 0;
    }
}

impl Serialize for Repo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.hits.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Repo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hits = u64::deserialize(deserializer)?;
        Ok(Self {
            cache: CacheService::memory(),
            hits,
        })
    }
}

async fn use_them(mut repo: Repo) {
    let _: Result<Option<User>, String> = repo.get_user(1).await;
    let _: u64 = repo.exclusive().await;
    let _: Option<User> = repo.with_status(1).await;
    let fetched = repo.with_status_with_status(1).await;
    let _: bool = fetched.from_cache;
    let _: u64 = repo.exclusive_with_status_with_status(1).await.value;
    let _: Option<Repo> = Repo::associated_with_status(1).await.value;
    let _ = repo.from_a_field(1).await;
    let _ = repo.from_a_field_exclusive(1).await;
    let _ = repo.update(User { id: 1 }).await;
    repo.reset().await;
    let _: u64 = Arc::new(repo.clone()).shared_pointer(1).await;
    let _: u64 = repo.by_value(1).await;
}

fn main() {
    let _ = use_them;
}
