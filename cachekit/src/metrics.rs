//! Metrics through the [`metrics`] facade, when
//! [`CacheServiceBuilder::metrics`](crate::CacheServiceBuilder::metrics) turns them on: any
//! exporter the application installs (Prometheus, OpenTelemetry, StatsD...) receives them.
//!
//! Labels have bounded cardinality: `namespace` is the part of the logical key before its
//! first `:` (`users` for `users:42`; `_` for a key without one), never the key; after
//! [`MAX_NAMESPACES`] distinct ones, further namespaces are reported as `_other`. The handles of
//! each namespace are registered once, when first used, so install the recorder before the
//! service's first call.

use crate::breaker::BreakerState;
use crate::error::FaultKind;
use metrics::{Counter, Histogram, Unit};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Every metric's name, as documented in the crate docs.
pub mod names {
    /// Counter, labels `namespace`, `tier` (`store`: Redis or the embedded store; `local`: the
    /// in-process tier): reads that found a value.
    pub const HITS: &str = "cachekit_hits_total";
    /// Counter, label `namespace`: reads that found nothing usable (absent, undecodable, past
    /// its TTL, or the store unreachable).
    pub const MISSES: &str = "cachekit_misses_total";
    /// Counter, label `namespace`: loader runs of cache-aside calls (misses and refreshes).
    pub const LOADS: &str = "cachekit_loads_total";
    /// Counter, label `namespace`: loader runs that returned an error.
    pub const LOAD_ERRORS: &str = "cachekit_load_errors_total";
    /// Histogram, label `namespace`, seconds: how long loader runs took.
    pub const LOAD_DURATION: &str = "cachekit_load_duration_seconds";
    /// Counter, label `namespace` (of the key or pattern; `*` for `clear_all` and patterns
    /// across namespaces): entries removed by `delete`, `invalidate_pattern`, `clear_all` and
    /// `#[invalidates]`.
    pub const INVALIDATED: &str = "cachekit_invalidated_entries_total";
    /// Counter, label `namespace`: calls served by another caller's load or read of the same
    /// key in this process (single-flight and read coalescing) instead of their own.
    pub const COALESCED: &str = "cachekit_coalesced_total";
    /// Counter, label `namespace`: loaded or refreshed values not written because the key was
    /// invalidated (or written) while they loaded.
    pub const STALE_SETS_PREVENTED: &str = "cachekit_stale_sets_prevented_total";
    /// Counter, label `namespace`: values refreshed before (or past) their TTL and written back.
    pub const REFRESHES: &str = "cachekit_refreshes_total";
    /// Counter, label `namespace`: values served past their TTL because the loader failed.
    pub const STALE_SERVED: &str = "cachekit_stale_served_total";
    /// Counter, label `kind` (`timeout`, `connection`, `out_of_memory`, `no_permission`,
    /// `wrong_type`, `read_only`, `busy`, `too_large`, `other_reply`): backend faults.
    pub const FAULTS: &str = "cachekit_faults_total";
    /// Histogram, label `op` (`get`, `set`, `delete`, `lease`, `fill`, `release`, `renew`,
    /// `claim`, `invalidate_pattern`, `replay`, `rebuild_index`, `ping`), seconds: backend
    /// operations, timeouts included.
    pub const OPERATION_DURATION: &str = "cachekit_operation_duration_seconds";
    /// Gauge: the circuit breaker's state, `0` closed, `1` half-open, `2` open.
    pub const BREAKER_STATE: &str = "cachekit_breaker_state";
}

/// Distinct `namespace` label values before the rest are reported as `_other`.
pub const MAX_NAMESPACES: usize = 256;

/// Where a hit was served from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tier {
    Store,
    Local,
}

/// The handles of one namespace.
#[derive(Debug)]
pub(crate) struct Namespace {
    hits_store: Counter,
    hits_local: Counter,
    pub(crate) misses: Counter,
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) load_duration: Histogram,
    pub(crate) invalidated: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) stale_sets_prevented: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) stale_served: Counter,
}

impl Namespace {
    fn register(namespace: &str) -> Self {
        let ns = namespace.to_owned();
        let counter = |name: &'static str| metrics::counter!(name, "namespace" => ns.clone());
        Self {
            hits_store: metrics::counter!(names::HITS, "namespace" => ns.clone(), "tier" => "store"),
            hits_local: metrics::counter!(names::HITS, "namespace" => ns.clone(), "tier" => "local"),
            misses: counter(names::MISSES),
            loads: counter(names::LOADS),
            load_errors: counter(names::LOAD_ERRORS),
            load_duration: metrics::histogram!(names::LOAD_DURATION, "namespace" => ns.clone()),
            invalidated: counter(names::INVALIDATED),
            coalesced: counter(names::COALESCED),
            stale_sets_prevented: counter(names::STALE_SETS_PREVENTED),
            refreshes: counter(names::REFRESHES),
            stale_served: counter(names::STALE_SERVED),
        }
    }

    pub(crate) fn hit(&self, tier: Tier) {
        match tier {
            Tier::Store => self.hits_store.increment(1),
            Tier::Local => self.hits_local.increment(1),
        }
    }
}

/// The metrics of one service: the handles of each namespace seen so far.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    namespaces: RwLock<HashMap<Box<str>, Arc<Namespace>>>,
}

impl Metrics {
    /// Turns the metrics on: describes every metric to the installed recorder.
    pub(crate) fn new() -> Self {
        describe();
        Self::default()
    }

    /// The handles of the namespace of the logical key (or pattern) `key`.
    pub(crate) fn of(&self, key: &str) -> Arc<Namespace> {
        let namespace = namespace_of(key);
        if let Some(handles) = self
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
        {
            return handles.clone();
        }
        let mut namespaces = self
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let namespace = if namespaces.len() >= MAX_NAMESPACES && !namespaces.contains_key(namespace)
        {
            "_other"
        } else {
            namespace
        };
        namespaces
            .entry(namespace.into())
            .or_insert_with(|| Arc::new(Namespace::register(namespace)))
            .clone()
    }

    /// One backend operation, with its outcome's effect on the breaker.
    pub(crate) fn operation(&self, op: &'static str, took: Duration, breaker: BreakerState) {
        metrics::histogram!(names::OPERATION_DURATION, "op" => op).record(took.as_secs_f64());
        metrics::gauge!(names::BREAKER_STATE).set(match breaker {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        });
    }

    /// One backend fault.
    pub(crate) fn fault(&self, kind: FaultKind) {
        metrics::counter!(names::FAULTS, "kind" => kind.as_str()).increment(1);
    }
}

/// The `namespace` label of a logical key or pattern: the part before its first `:`, `_` for a
/// key without one, `*` for a pattern whose first part has a glob.
pub(crate) fn namespace_of(key: &str) -> &str {
    match key.split_once(':') {
        Some((ns, _)) if crate::key::has_glob(ns) => "*",
        Some((ns, _)) if !ns.is_empty() => ns,
        None if crate::key::has_glob(key) => "*",
        _ => "_",
    }
}

fn describe() {
    use names::*;
    metrics::describe_counter!(HITS, Unit::Count, "Reads that found a value, by tier");
    metrics::describe_counter!(MISSES, Unit::Count, "Reads that found nothing usable");
    metrics::describe_counter!(LOADS, Unit::Count, "Loader runs of cache-aside calls");
    metrics::describe_counter!(
        LOAD_ERRORS,
        Unit::Count,
        "Loader runs that returned an error"
    );
    metrics::describe_histogram!(LOAD_DURATION, Unit::Seconds, "Loader run time");
    metrics::describe_counter!(INVALIDATED, Unit::Count, "Entries removed by invalidations");
    metrics::describe_counter!(
        COALESCED,
        Unit::Count,
        "Calls served by a concurrent load or read of the same key"
    );
    metrics::describe_counter!(
        STALE_SETS_PREVENTED,
        Unit::Count,
        "Loaded values not written because the key was invalidated while they loaded"
    );
    metrics::describe_counter!(REFRESHES, Unit::Count, "Values refreshed and written back");
    metrics::describe_counter!(
        STALE_SERVED,
        Unit::Count,
        "Values served past their TTL because the loader failed"
    );
    metrics::describe_counter!(FAULTS, Unit::Count, "Backend faults by kind");
    metrics::describe_histogram!(OPERATION_DURATION, Unit::Seconds, "Backend operation time");
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_the_first_part_of_the_key() {
        assert_eq!(namespace_of("users:42"), "users");
        assert_eq!(namespace_of("users:42:roles"), "users");
        assert_eq!(namespace_of("answer"), "_");
        assert_eq!(namespace_of(":x"), "_");
        assert_eq!(namespace_of("users:*"), "users");
        assert_eq!(namespace_of("*"), "*");
        assert_eq!(namespace_of("user?:1"), "*");
    }

    #[test]
    fn namespaces_past_the_bound_are_reported_together() {
        let metrics = Metrics::default();
        for i in 0..MAX_NAMESPACES + 10 {
            metrics.of(&format!("ns{i}:1"));
        }
        let namespaces = metrics.namespaces.read().unwrap();
        assert_eq!(namespaces.len(), MAX_NAMESPACES + 1);
        assert!(namespaces.contains_key("_other"));
    }
}
