//! Warming the cache at start-up: a list of items loaded through the cache in the background,
//! a bounded number at a time.

use crate::CacheService;
use std::fmt::Display;
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

/// How often a running warm-up logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How many failed items a warm-up logs one by one; the rest are only counted.
const FAILURES_LOGGED: u64 = 3;

/// What a warm-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmUpReport {
    /// Items whose load returned `Ok`.
    pub loaded: u64,
    /// Items whose load returned `Err` or panicked.
    pub failed: u64,
    /// From the start of the warm-up to its last item.
    pub elapsed: Duration,
}

/// A warm-up running in the background, started by [`CacheService::warm_up`]. Await
/// [`finished`](Self::finished) to wait for it; dropping the handle leaves it running.
#[derive(Debug)]
pub struct WarmUp {
    task: JoinHandle<WarmUpReport>,
}

impl WarmUp {
    /// Waits until every item was loaded or failed, and says how it went.
    pub async fn finished(self) -> WarmUpReport {
        match self.task.await {
            Ok(report) => report,
            // The task itself does not panic (each item runs in a task of its own); it ends
            // early only when its runtime shuts down.
            Err(_) => WarmUpReport {
                loaded: 0,
                failed: 0,
                elapsed: Duration::ZERO,
            },
        }
    }

    /// Whether every item was loaded or failed.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl CacheService {
    /// Warms the cache: calls `load` for every item of `items`, at most `concurrency` at once
    /// (at least one), in a background task, and returns at once. `load` is what fills the
    /// cache: a `#[cached]` method, or a [`get_or_load`](Self::get_or_load) of the item's key.
    /// Progress is logged (`info`) at the start, every 5 s, and at the end, with the items
    /// loaded and failed; the first three failures are logged (`warn`) with their error. A
    /// load that panics counts as failed and stops nothing else.
    ///
    /// Start-up goes on while it runs; await [`WarmUp::finished`] to wait for it instead.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// let loader = cache.clone();
    /// let warming = cache.warm_up(1..=100u32, 8, move |id| {
    ///     let cache = loader.clone();
    ///     async move {
    ///         // Your database query, through the cache.
    ///         cache
    ///             .get_or_load(&format!("users:{id}"), None, || async move {
    ///                 Ok::<_, std::io::Error>(format!("user {id}"))
    ///             })
    ///             .await
    ///     }
    /// });
    /// let report = warming.finished().await;
    /// assert_eq!((report.loaded, report.failed), (100, 0));
    /// assert_eq!(cache.get::<String>("users:7").await.as_deref(), Some("user 7"));
    /// # });
    /// ```
    pub fn warm_up<I, F, Fut, T, E>(&self, items: I, concurrency: usize, load: F) -> WarmUp
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Display + Send + 'static,
    {
        let items = items.into_iter();
        let prefix = self.prefix().to_owned();
        let load = std::sync::Arc::new(load);
        let task = tokio::spawn(async move {
            let concurrency = concurrency.max(1);
            let started = Instant::now();
            let (mut loaded, mut failed) = (0u64, 0u64);
            let mut last_log = started;
            tracing::info!(
                prefix = %prefix,
                concurrency,
                "cachekit: warm-up started"
            );
            let mut running = JoinSet::new();
            let mut settle = |outcome: Result<Result<T, E>, tokio::task::JoinError>,
                              loaded: &mut u64,
                              failed: &mut u64| {
                match outcome {
                    Ok(Ok(_)) => *loaded += 1,
                    Ok(Err(error)) => {
                        *failed += 1;
                        if *failed <= FAILURES_LOGGED {
                            tracing::warn!(
                                prefix = %prefix,
                                error = %error,
                                "cachekit: warm-up: an item failed to load"
                            );
                        }
                    }
                    Err(_) => {
                        *failed += 1;
                        if *failed <= FAILURES_LOGGED {
                            tracing::warn!(
                                prefix = %prefix,
                                "cachekit: warm-up: an item's load panicked"
                            );
                        }
                    }
                }
                if last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = Instant::now();
                    tracing::info!(
                        prefix = %prefix,
                        loaded = *loaded,
                        failed = *failed,
                        "cachekit: warm-up in progress"
                    );
                }
            };
            for item in items {
                while running.len() >= concurrency {
                    if let Some(outcome) = running.join_next().await {
                        settle(outcome, &mut loaded, &mut failed);
                    }
                }
                // Called inside the item's own task: even a `load` that panics before it
                // returns its future fails that item alone.
                let load = load.clone();
                running.spawn(async move { load(item).await });
            }
            while let Some(outcome) = running.join_next().await {
                settle(outcome, &mut loaded, &mut failed);
            }
            let elapsed = started.elapsed();
            tracing::info!(
                prefix = %prefix,
                loaded,
                failed,
                elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "cachekit: warm-up finished"
            );
            WarmUpReport {
                loaded,
                failed,
                elapsed,
            }
        });
        WarmUp { task }
    }
}
