//! The guard around a backend: one timeout per call, the circuit breaker, fault classification
//! and counting, and the per-call budget that keeps a whole cache-aside call within about one
//! operation timeout.
//!
//! Every backend call of the service goes through [`Guard::call`], or [`Guard::call_bounded`]
//! for a call that bounds itself (the Redis backend's batched reads, whose batches carry their
//! deadlines so that a queued read needs no timer of its own); the guard knows nothing of
//! keys, values, leases or invalidation. Only transport faults (timeouts, unreachable server)
//! feed the breaker; a server's reply to one operation (out of memory, no permission, wrong
//! type) fails that operation and is counted by kind.

use crate::backend::{Backend, MemoryBackend};
use crate::breaker::{Breaker, BreakerState, Permit};
use crate::error::CacheError;
use crate::stats::Counters;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::Unconstrained;
use tokio::time::Sleep;

/// What one public call of the service may still spend on the backend. Once one of its steps
/// met a transport fault (a timeout above all) or the open breaker, the remaining steps skip
/// the backend, so a call against a stalled server adds about one operation timeout, not one
/// per step.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    spent: AtomicBool,
}

impl Budget {
    pub(crate) fn is_spent(&self) -> bool {
        self.spent.load(Ordering::Relaxed)
    }

    pub(crate) fn spend(&self) {
        self.spent.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Guard {
    backend: Arc<dyn Backend>,
    timeout: Duration,
    admin_timeout: Duration,
    breaker: Breaker,
    counters: Arc<Counters>,
    /// Emptied when the breaker closes: entries written there during an outage may have missed
    /// other processes' invalidations, and the backend is authoritative again.
    fallback: Option<MemoryBackend>,
    /// Diagnostics only: calls go straight to the backend.
    bypass: bool,
    /// The last connection failure (refused, reset, TLS handshake) since the backend last
    /// answered: a later timeout alone does not say why the server cannot be reached.
    unreachable: LastFailure,
}

/// The detail of the last connection failure, behind a flag so that a call that succeeds pays
/// one relaxed load, not a lock, to clear it.
#[derive(Debug, Default)]
struct LastFailure {
    set: AtomicBool,
    detail: Mutex<Option<String>>,
}

impl LastFailure {
    fn remember(&self, detail: String) {
        *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail);
        self.set.store(true, Ordering::Release);
    }

    fn forget(&self) {
        if self.set.load(Ordering::Relaxed) {
            self.set.store(false, Ordering::Relaxed);
            *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn get(&self) -> Option<String> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Which bound a call gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    /// One command: the operation timeout.
    Op,
    /// A walk of many commands (pattern removal, replay): the admin timeout.
    Admin,
}

impl Guard {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        timeout: Duration,
        admin_timeout: Duration,
        breaker: Breaker,
        counters: Arc<Counters>,
        fallback: Option<MemoryBackend>,
    ) -> Self {
        Self {
            backend,
            timeout,
            admin_timeout,
            breaker,
            counters,
            fallback,
            bypass: false,
            unreachable: LastFailure::default(),
        }
    }

    /// The same guard, letting every call straight through (benchmark diagnostics).
    pub(crate) fn bypassed(mut self) -> Self {
        self.bypass = true;
        self
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Opens the breaker now: the first connection failed with `error`.
    pub(crate) fn trip(&self, error: &CacheError) {
        self.remember(error);
        self.breaker.trip();
    }

    /// Why the backend could not be reached the last time a connection failed, if it has not
    /// answered since: the cause behind later timeouts, for [`health`](crate::CacheService::health).
    pub(crate) fn last_connection_failure(&self) -> Option<String> {
        self.unreachable.get()
    }

    fn remember(&self, error: &CacheError) {
        if error.fault_kind() == Some(crate::error::FaultKind::Connection) {
            self.unreachable.remember(error.detail().to_string());
        }
    }

    /// Runs one backend call: skipped if the call's budget is spent or the breaker is open;
    /// otherwise bounded by the timeout, its outcome classified, counted and reported to the
    /// breaker.
    pub(crate) fn call<'a, T, F>(
        &'a self,
        op: &'static str,
        bound: Bound,
        budget: &'a Budget,
        call: F,
    ) -> Guarded<'a, F>
    where
        F: Future<Output = Result<T, CacheError>>,
    {
        let timeout = match bound {
            Bound::Op => self.timeout,
            Bound::Admin => self.admin_timeout,
        };
        Guarded::new(self, op, Some(timeout), budget, call)
    }

    /// [`call`](Self::call) for a call that bounds itself by the operation timeout (failing
    /// with [`CacheError::Timeout`]): no timer here.
    pub(crate) fn call_bounded<'a, T, F>(
        &'a self,
        op: &'static str,
        budget: &'a Budget,
        call: F,
    ) -> Guarded<'a, F>
    where
        F: Future<Output = Result<T, CacheError>>,
    {
        Guarded::new(self, op, None, budget, call)
    }

    /// Classifies a call's outcome, counts it and reports it to the breaker.
    fn settle<T>(
        &self,
        op: &'static str,
        budget: &Budget,
        permit: Permit,
        started: Option<Instant>,
        result: &Result<T, CacheError>,
    ) {
        match result {
            Err(e) if e.is_transport() => {
                self.record(e);
                self.remember(e);
                budget.spend();
                self.breaker.on_failure(permit);
            }
            outcome => {
                // A reply, even an error reply, shows the server reachable.
                if let Err(e) = outcome {
                    self.record(e);
                }
                self.unreachable.forget();
                if self.breaker.on_success(permit)
                    && let Some(store) = &self.fallback
                {
                    store.clear();
                }
            }
        }
        if let (Some(metrics), Some(started)) = (&self.counters.metrics, started) {
            metrics.operation(op, started.elapsed(), self.breaker.state());
        }
    }

    fn record(&self, error: &CacheError) {
        if let Some(kind) = error.fault_kind() {
            self.counters.fault(kind);
        }
    }

    /// Probes an unreachable backend every breaker cool-down, as the breaker's half-open probe,
    /// until the breaker closes. Holds only a weak reference: it ends when the service is
    /// dropped.
    pub(crate) async fn reconnect_in_background(guard: Weak<Self>, endpoint: Option<String>) {
        loop {
            let Some(wait) = guard.upgrade().map(|g| g.breaker.open_for()) else {
                return;
            };
            tokio::time::sleep(wait).await;
            let Some(guard) = guard.upgrade() else {
                return;
            };
            if guard.breaker.state() == BreakerState::Closed {
                return;
            }
            let budget = Budget::default();
            let ping = guard.backend.ping();
            if guard.call("ping", Bound::Op, &budget, ping).await.is_ok()
                && guard.breaker.state() == BreakerState::Closed
            {
                tracing::info!(
                    endpoint = endpoint.as_deref().unwrap_or(""),
                    "cachekit: backend reachable again"
                );
                return;
            }
        }
    }
}

pin_project! {
    /// A backend call run by the [`Guard`] ([`Guard::call`], [`Guard::call_bounded`]). A future of its own rather than
    /// an `async fn`, so that the call it wraps is held once, in place: an `async fn` would hold
    /// it twice (as its argument and as the future it awaits), and every future around the hit
    /// path would carry both copies, moved at every level.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Guarded<'a, F> {
        guard: &'a Guard,
        op: &'static str,
        timeout: Option<Duration>,
        budget: &'a Budget,
        phase: Phase,
        // Started with the call, when it has a timeout. Polled outside tokio's cooperative budget, as
        // `tokio::time::timeout` polls its timer once the call has spent the budget: a call
        // that spends it on every poll still times out.
        #[pin]
        timer: Option<Unconstrained<Sleep>>,
        #[pin]
        call: F,
    }
}

/// Where a [`Guarded`] call is.
enum Phase {
    /// Not polled yet: the checks come first.
    Start,
    /// Let straight through ([`Guard::bypassed`]).
    Bypass,
    /// Running, with the breaker's permit, since `started` (kept only for metrics).
    Running {
        permit: Permit,
        started: Option<Instant>,
    },
    Done,
}

impl<'a, F> Guarded<'a, F> {
    fn new(
        guard: &'a Guard,
        op: &'static str,
        timeout: Option<Duration>,
        budget: &'a Budget,
        call: F,
    ) -> Self {
        Self {
            guard,
            op,
            timeout,
            budget,
            phase: Phase::Start,
            timer: None,
            call,
        }
    }
}

impl<T, F> Future for Guarded<'_, F>
where
    F: Future<Output = Result<T, CacheError>>,
{
    type Output = Result<T, CacheError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let guard = *this.guard;
        if matches!(this.phase, Phase::Start) {
            if guard.bypass {
                *this.phase = Phase::Bypass;
            } else if this.budget.is_spent() {
                *this.phase = Phase::Done;
                return Poll::Ready(Err(CacheError::Skipped));
            } else {
                let Some(permit) = guard.breaker.allow() else {
                    this.budget.spend();
                    *this.phase = Phase::Done;
                    return Poll::Ready(Err(CacheError::CircuitOpen));
                };
                if let Some(timeout) = *this.timeout {
                    let timer = tokio::task::unconstrained(tokio::time::sleep(timeout));
                    this.timer.set(Some(timer));
                }
                let started = guard.counters.metrics.as_ref().map(|_| Instant::now());
                *this.phase = Phase::Running { permit, started };
            }
        }
        match this.phase {
            Phase::Bypass => return this.call.poll(cx),
            Phase::Running { .. } => {}
            Phase::Start | Phase::Done => panic!("a guarded call polled after it completed"),
        }
        let result = match this.call.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => match this.timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Err(CacheError::Timeout {
                    op: this.op,
                    timeout: this
                        .timeout
                        .expect("only a call with a timeout has a timer"),
                }),
                _ => return Poll::Pending,
            },
        };
        this.timer.set(None);
        if let Phase::Running { permit, started } = std::mem::replace(this.phase, Phase::Done) {
            guard.settle(this.op, this.budget, permit, started, &result);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    /// A backend whose `get` fails the way it is told to, or never answers.
    #[derive(Debug)]
    enum Failing {
        Reply(ServerErrorKind),
        Transport,
        Hang,
        /// Spends the task's cooperative budget on every poll, and never answers.
        Spin,
    }

    #[async_trait::async_trait]
    impl Backend for Failing {
        fn kind(&self) -> BackendKind {
            BackendKind::Custom
        }
        async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, CacheError> {
            match self {
                Self::Reply(kind) => {
                    Err(RedisError::from((ErrorKind::Server(*kind), "refused")).into())
                }
                Self::Transport => Err(CacheError::Backend("connection reset".into())),
                Self::Hang => std::future::pending().await,
                Self::Spin => loop {
                    tokio::task::consume_budget().await;
                },
            }
        }
        async fn set(&self, _: &str, _: &[u8], _: Duration) -> Result<(), CacheError> {
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<bool, CacheError> {
            Ok(false)
        }
        async fn delete_matching(&self, _: &str) -> Result<u64, CacheError> {
            Ok(0)
        }
        async fn ping(&self) -> Result<(), CacheError> {
            Ok(())
        }
    }

    fn guard(backend: Failing) -> (Guard, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let guard = Guard::new(
            Arc::new(backend),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Breaker::new(2, Duration::from_secs(60)),
            counters.clone(),
            None,
        );
        (guard, counters)
    }

    async fn get(guard: &Guard, budget: &Budget) -> Result<Option<Vec<u8>>, CacheError> {
        guard
            .call("get", Bound::Op, budget, guard.backend().get("k"))
            .await
    }

    /// A guarded call holds the call it runs once: an `async fn` taking it would hold it twice
    /// (as its argument and as the future it awaits), and every future around the hit path
    /// would carry both.
    #[test]
    fn a_guarded_call_holds_its_call_once() {
        let (guard, _) = guard(Failing::Hang);
        let budget = Budget::default();
        let call = async {
            let held = [0u8; 1024];
            std::future::pending::<()>().await;
            Ok::<usize, CacheError>(held.len())
        };
        let call_size = std::mem::size_of_val(&call);
        let guarded = guard.call("get", Bound::Op, &budget, call);
        let guarded_size = std::mem::size_of_val(&guarded);
        assert!(
            guarded_size < call_size + 512,
            "a guarded call of {call_size} bytes takes {guarded_size}"
        );
    }

    /// A call that spends tokio's cooperative budget on every poll still times out: the timer
    /// is polled outside the budget.
    #[tokio::test]
    async fn a_call_that_spends_the_cooperative_budget_still_times_out() {
        let (guard, _) = guard(Failing::Spin);
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), get(&guard, &Budget::default()))
                .await
                .expect("the guard's timeout fired");
        assert!(outcome.unwrap_err().is_timeout());
    }

    #[tokio::test]
    async fn replies_fail_one_call_and_never_open_the_breaker() {
        let (guard, counters) = guard(Failing::Reply(ServerErrorKind::NoPerm));
        for _ in 0..10 {
            let budget = Budget::default();
            let error = get(&guard, &budget).await.unwrap_err();
            assert!(!error.is_transport(), "{error}");
            assert!(
                !budget.is_spent(),
                "a reply leaves the rest of the call to the backend"
            );
        }
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        let stats = counters.snapshot(BackendKind::Custom, guard.breaker_state());
        assert_eq!((stats.errors, stats.faults.no_permission), (10, 10));
    }

    #[tokio::test]
    async fn transport_faults_open_the_breaker_and_spend_the_budget() {
        let (guard, counters) = guard(Failing::Transport);
        let budget = Budget::default();
        assert!(get(&guard, &budget).await.unwrap_err().is_transport());
        assert!(budget.is_spent());
        assert!(matches!(
            get(&guard, &budget).await,
            Err(CacheError::Skipped)
        ));
        get(&guard, &Budget::default()).await.unwrap_err();
        assert_eq!(guard.breaker_state(), BreakerState::Open);
        let open = get(&guard, &Budget::default()).await.unwrap_err();
        assert!(open.is_circuit_open());
        let stats = counters.snapshot(BackendKind::Custom, guard.breaker_state());
        assert_eq!(stats.faults.connection, 2, "skipped calls are not faults");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_times_out_once_and_the_rest_of_the_call_skips() {
        let (guard, counters) = guard(Failing::Hang);
        let budget = Budget::default();
        assert!(get(&guard, &budget).await.unwrap_err().is_timeout());
        assert!(matches!(
            get(&guard, &budget).await,
            Err(CacheError::Skipped)
        ));
        let stats = counters.snapshot(BackendKind::Custom, guard.breaker_state());
        assert_eq!(stats.faults.timeouts, 1);
    }
}
