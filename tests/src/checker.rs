//! The core of the consistency checkers: a versioned in-memory "database", records of reads
//! and writes of it, and the check that no read saw a version older than a write (with its
//! invalidation) that had completed before the read began.
//!
//! Keys are small integers (`0..n`); versions grow by one per write of a key. A read that
//! overlaps a write may see either version; a read that *began after* a write returned must see
//! that write's version or a newer one.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use cachekit_tests::checker::{self, Read, Write};
//!
//! let t0 = Instant::now();
//! let writes = [Write { id: 0, end: t0 + Duration::from_millis(1), version: 1 }];
//! let reads = [Read { id: 0, start: t0 + Duration::from_millis(2), version: 0 }];
//! assert_eq!(checker::violations(&reads, &writes), 1);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A table of versioned rows `0..keys`, all at version 0 to begin with; each query takes about
/// a millisecond (a timer sleep on each side of the access).
#[derive(Debug)]
pub struct Db {
    versions: Vec<AtomicU64>,
}

impl Db {
    /// A table of `keys` rows.
    pub fn new(keys: u32) -> Self {
        Self {
            versions: (0..keys).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The current version of row `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not a row of the table.
    pub async fn read(&self, id: u32) -> u64 {
        tokio::time::sleep(Duration::from_micros(500)).await;
        let version = self.versions[id as usize].load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_micros(500)).await;
        version
    }

    /// Writes row `id`: bumps its version and returns the new one.
    ///
    /// # Panics
    ///
    /// If `id` is not a row of the table.
    pub async fn write(&self, id: u32) -> u64 {
        tokio::time::sleep(Duration::from_micros(500)).await;
        self.versions[id as usize].fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A read of key `id` that began at `start` and returned `version`.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    /// The key read.
    pub id: u32,
    /// When the read began.
    pub start: Instant,
    /// The version it returned.
    pub version: u64,
}

/// A write of key `id` that produced `version` and whose invalidation completed at `end`.
#[derive(Debug, Clone, Copy)]
pub struct Write {
    /// The key written.
    pub id: u32,
    /// When the write, its invalidation included, returned.
    pub end: Instant,
    /// The version it wrote.
    pub version: u64,
}

/// How many reads began after a write of their key returned but saw an older version than it.
pub fn violations(reads: &[Read], writes: &[Write]) -> usize {
    stale_lags(reads, writes).len()
}

/// For each read that [`violations`] counts, how long after the first write it missed had
/// returned the read began: how stale it was.
///
/// ```
/// use std::time::{Duration, Instant};
/// use cachekit_tests::checker::{self, Read, Write};
///
/// let t0 = Instant::now();
/// let writes = [Write { id: 0, end: t0, version: 1 }];
/// let reads = [Read { id: 0, start: t0 + Duration::from_millis(3), version: 0 }];
/// assert_eq!(checker::stale_lags(&reads, &writes), [Duration::from_millis(3)]);
/// ```
pub fn stale_lags(reads: &[Read], writes: &[Write]) -> Vec<Duration> {
    let keys = reads
        .iter()
        .map(|r| r.id)
        .chain(writes.iter().map(|w| w.id))
        .max()
        .map_or(0, |id| id as usize + 1);
    let mut by_key: Vec<Vec<(Instant, u64)>> = vec![Vec::new(); keys];
    for w in writes {
        by_key[w.id as usize].push((w.end, w.version));
    }
    // For each key: writes sorted by end, with the running maximum version, so a read's
    // bound is one binary search.
    let bounds: Vec<Vec<(Instant, u64)>> = by_key
        .into_iter()
        .map(|mut ws| {
            ws.sort_by_key(|&(end, _)| end);
            let mut max = 0;
            ws.into_iter()
                .map(|(end, v)| {
                    max = max.max(v);
                    (end, max)
                })
                .collect()
        })
        .collect();
    reads
        .iter()
        .filter_map(|r| {
            let ws = &bounds[r.id as usize];
            let before = ws.partition_point(|&(end, _)| end < r.start);
            if before == 0 || r.version >= ws[before - 1].1 {
                return None;
            }
            // The running maximum grows with `end`: the first write past the read's version.
            let missed = ws[..before].partition_point(|&(_, max)| max <= r.version);
            Some(r.start - ws[missed].0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_flags_a_read_older_than_a_completed_write() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let writes = [Write {
            id: 1,
            end: t(10),
            version: 3,
        }];
        let reads = [
            Read {
                id: 1,
                start: t(5),
                version: 2,
            }, // began before the write returned: allowed
            Read {
                id: 1,
                start: t(11),
                version: 3,
            },
            Read {
                id: 1,
                start: t(12),
                version: 2,
            }, // stale
            Read {
                id: 0,
                start: t(12),
                version: 0,
            }, // another key
        ];
        assert_eq!(violations(&reads, &writes), 1);
    }

    #[test]
    fn a_later_write_that_finished_first_still_bounds_reads() {
        // Writes of one key may return out of version order; the bound is the highest version
        // among the writes that had returned.
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let writes = [
            Write {
                id: 0,
                end: t(10),
                version: 5,
            },
            Write {
                id: 0,
                end: t(20),
                version: 4,
            },
        ];
        let reads = [Read {
            id: 0,
            start: t(25),
            version: 4,
        }];
        assert_eq!(violations(&reads, &writes), 1);
        assert_eq!(violations(&[], &[]), 0);
    }
}
