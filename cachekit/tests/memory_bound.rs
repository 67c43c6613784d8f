//! The embedded store's bound holds for the process's memory, not only for the bytes of its
//! keys and values: many tiny entries, each costing far more than its key and value, must not
//! take the process's RSS far past the bound.
//!
//! Its own test binary with one test, so the RSS measured is this test's alone. Linux only:
//! it reads `VmRSS` in `/proc/self/status`, and the per-entry overhead the store counts was
//! measured with glibc's allocator.
#![cfg(target_os = "linux")]

use cachekit::Backend;
use cachekit::backend::MemoryBackend;
use std::time::Duration;

/// The process's resident set, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .expect("a VmRSS line in kB");
    kib * 1024
}

#[tokio::test]
async fn many_tiny_entries_keep_the_rss_within_twice_the_bound() {
    const BOUND: u64 = 64 * 1024 * 1024;
    const ENTRIES: u64 = 1_500_000;
    let ttl = Duration::from_secs(3600);

    let before = rss_bytes();
    let store = MemoryBackend::new(BOUND);
    for i in 0..ENTRIES {
        // A 20-byte key and an 8-byte value. moka applies evictions as the writes go, so
        // the store is at its bound all along, but for the last few writes.
        let key = format!("cachekit:u:{i:09}");
        store.set(&key, &i.to_le_bytes(), ttl).await.unwrap();
    }
    let after = rss_bytes();

    let grown = after.saturating_sub(before);
    let held = store.entry_count();
    println!(
        "{ENTRIES} entries into a {BOUND}-byte store: {held} held; RSS {before} -> {after} bytes, \
         grown {grown} ({:.2}x the bound, {:.0} bytes a held entry)",
        grown as f64 / BOUND as f64,
        grown as f64 / held.max(1) as f64,
    );
    assert!(
        grown <= 2 * BOUND,
        "RSS grew by {grown} bytes, more than twice the {BOUND}-byte bound"
    );
    // The bound still holds a useful number of entries: not refused by a weight far too high.
    assert!(held * 1024 > BOUND, "only {held} entries held");
}
