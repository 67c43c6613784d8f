//! The password hash: a type that cannot reach the cache.

use sha2::{Digest, Sha256};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::SystemTime;

/// A salted password hash as stored in the `users` table.
///
/// It deliberately implements neither `Serialize` nor `Deserialize`, and its `Debug` shows
/// nothing: a type holding it cannot be the value of a `#[cached]` function, so the hash can
/// never be written to the cache by mistake. The compiler says so:
///
/// ```compile_fail
/// use cachekit::{CacheService, cached};
/// use cachekit_examples::users::PasswordHash;
///
/// #[cached(key = "user:hash:{id}", cache = cache)]
/// async fn password_hash(cache: &CacheService, id: i64) -> Option<PasswordHash> {
///     None
/// }
/// ```
///
/// The scheme (SHA-256 over a random salt and the password) is a stand-in that keeps the
/// example free of dependencies; a real service uses a slow hash such as Argon2 or bcrypt.
/// What the example shows is where the hash goes, not how it is made.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

/// The stored form's scheme tag: `sha256${salt}${hex digest}`.
const SCHEME: &str = "sha256";

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        let salt = salt();
        let digest = digest(&salt, password);
        Self(format!("{SCHEME}${salt}${digest}"))
    }

    /// A hash read back from the database.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    /// The stored form, to write to the database.
    pub fn as_stored(&self) -> &str {
        &self.0
    }

    /// Whether `password` is the one hashed. A malformed stored hash matches nothing.
    pub fn verify(&self, password: &str) -> bool {
        let mut parts = self.0.splitn(3, '$');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(SCHEME), Some(salt), Some(expected)) => {
                constant_time_eq(digest(salt, password).as_bytes(), expected.as_bytes())
            }
            _ => false,
        }
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

fn digest(salt: &str, password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(b"$");
    hasher.update(password.as_bytes());
    hex::encode(hasher.finalize())
}

/// 128 bits from the standard library's randomly keyed hasher (seeded by the OS).
fn salt() -> String {
    let now = SystemTime::now();
    let a = RandomState::new().hash_one(now);
    let b = RandomState::new().hash_one((now, std::process::id()));
    format!("{a:016x}{b:016x}")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_password() {
        let hash = PasswordHash::new("correct horse");
        assert!(hash.verify("correct horse"));
        assert!(!hash.verify("correct horse "));
        assert!(!PasswordHash::from_stored("garbage".into()).verify(""));
    }

    #[test]
    fn salts_differ_and_debug_shows_nothing() {
        let (a, b) = (PasswordHash::new("pw"), PasswordHash::new("pw"));
        assert_ne!(a.as_stored(), b.as_stored());
        assert_eq!(format!("{a:?}"), "PasswordHash(<redacted>)");
    }
}
