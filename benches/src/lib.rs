//! Shared helpers for the cachekit benchmarks.
