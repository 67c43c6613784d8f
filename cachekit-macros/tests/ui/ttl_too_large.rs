use cachekit::cached;

// One more than cachekit::MAX_TTL (10 years).
#[cached(ttl = 315_360_001)]
async fn get_user(id: u64) -> Option<u64> {
    Some(id)
}

// Beyond any u64 is the same mistake, not an overflow.
#[cached(ttl = 18446744073709551616)]
async fn get_role(id: u64) -> Option<u64> {
    Some(id)
}

// Milliseconds given as seconds.
#[cached(ttl = 18446744073709551615)]
async fn get_team(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
