//! Reads that queue behind reads in flight and leave together, as one pipeline.
//!
//! A read of one server goes out at once while fewer than [`IN_FLIGHT`] reads are on the wire
//! and no batch is, so a lone or lightly concurrent caller pays one lock and nothing else.
//! Beyond that, reads wait in a queue; when a read in flight returns, the whole queue leaves as
//! one pipeline, sent by a task of its own, which then sends what queued meanwhile, and so on
//! while reads keep coming: under load, reads leave in batches only, each carrying what
//! arrived during the last one's round trip. Many tasks reading distinct keys then cost the connection one
//! message, one write and one reply parse per batch rather than per key, and the server one
//! read of the socket, while no timer decides when a batch leaves.
//!
//! Consistency: a queued read is sent after it was queued, so it sees every write that
//! returned before it began, as a read sent at once would. A queued read whose caller gave up
//! is dropped from the batch before it leaves.
//!
//! Time: a read sent at once is bounded by a timer of its own; a queued read has none (one
//! timer per read would cost the many readers of a loaded connection more than the batching
//! saves). A batch is bounded instead by the operation timeout counted from when its first
//! (earliest) read queued, which bounds each of its reads from when it queued, waiting
//! included; a read that queued later can time out sooner than its own timer would have.
//! A queue that forms behind reads sent at once leaves when one of them returns, which takes
//! its caller polling it to the end or dropping it; a caller may do neither for a while (a
//! `select!` branch kept for later), so such a queue is watched: if it has not left within the
//! operation timeout of its first read, its reads fail with a timeout ([`Watch`]). A queue that
//! forms while a batch is out needs no watch: the batch's task takes it when it ends, and the
//! batch ends within its own deadline whoever polls what.
//!
//! Batches and watches run as tasks: a batch on the runtime its slot was taken on (kept in the
//! slot's [`Permit`], so a future that ends elsewhere still sends it there), a watch on the
//! runtime of its queue's first read. A runtime that shuts down drops its tasks, and their
//! reads fail at once. A current-thread runtime can also be kept and not driven (between two
//! `block_on` calls), and its tasks then wait with it: so once a read on a current-thread
//! runtime has taken a slot or started a watch, every read that queues keeps a timer of its
//! own, as it would without batching, and a batch stuck on such a runtime costs its reads one
//! timeout rather than their wait for that runtime. A queued read always sees that note in
//! time: what sends its queue (the slots taken before it queued, the batches already out, its
//! queue's watch) started before it queued. The note is never cleared: a service shared with a
//! current-thread runtime once keeps timers for its queued reads from then on.

use crate::error::CacheError;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Reads on the wire before the next ones queue. Two keep the connection busy while a batch is
/// built; more would send reads one by one under load, which is what batching avoids.
pub(crate) const IN_FLIGHT: usize = 2;

/// One queued read: its key, where its reply goes, and when the first read of its queue queued
/// (its batch must answer within the operation timeout from then: a queued read has no timer
/// of its own).
pub(crate) struct Waiting {
    /// Shared with the read's caller, which built it: queuing copies no key.
    pub(crate) key: Arc<str>,
    pub(crate) reply: oneshot::Sender<Result<Vec<u8>, CacheError>>,
    pub(crate) since: Instant,
}

#[derive(Default)]
struct State {
    /// Reads and batches on the wire.
    in_flight: usize,
    /// Batches on the wire (each also counted in `in_flight`).
    batches: usize,
    queue: Vec<Waiting>,
    /// Queues formed so far: the number of the latest (the one waiting, if any), which a
    /// [`Watch`] names.
    queues: u64,
    /// Whether a read on a current-thread runtime has taken a slot or started a watch: then
    /// queued reads keep timers of their own (see the module's docs). Never cleared.
    timed: bool,
}

/// The queue of one connection's reads.
pub(crate) struct Batcher {
    state: Mutex<State>,
    /// Reads sent in batches so far.
    batched: AtomicU64,
    /// The operation timeout, within which each read is answered or fails.
    timeout: Duration,
}

/// How a read goes out.
pub(crate) enum Entry<'a> {
    /// Now, by the caller; the slot it holds is given back when the permit drops.
    Direct(Permit<'a>),
    /// In the next batch; the reply comes here. The first read of a queue that forms behind
    /// reads sent at once is handed its [`Watch`], to start. With `true`, the read must bound
    /// its own wait by a timer (a batch may wait for a runtime nobody drives).
    Queued(
        oneshot::Receiver<Result<Vec<u8>, CacheError>>,
        Option<Watch>,
        bool,
    ),
}

/// The watch over a queue that formed behind reads sent at once, [`expire`](Watch::expire)d
/// at its [`deadline`](Watch::deadline), the operation timeout after its first read queued: if
/// that queue still waits then, its reads fail with a timeout. Dropped unexpired (its task
/// never ran, or its runtime shut down), it fails them at once as reads whose batch was
/// dropped, rather than leave them unwatched.
pub(crate) struct Watch {
    batcher: Arc<Batcher>,
    queue: u64,
    since: Instant,
    expired: bool,
}

/// A read's slot on the wire. Dropped when the read returned or its caller gave up; if reads
/// queued meanwhile, it hands them to `launch` as the next batch, which keeps the slot.
pub(crate) struct Permit<'a> {
    batcher: &'a Batcher,
    launch: &'a Launch<'a>,
    /// The runtime the read took its slot on, where its batch is sent (even if its future ends
    /// on another); `None` off a runtime.
    runtime: Option<Handle>,
}

/// What sends a batch: in a task of its own (on the runtime given, else the current one),
/// giving its slot back through [`Batcher::finish`].
pub(crate) type Launch<'a> = dyn Fn(Vec<Waiting>, Option<Handle>) + Sync + 'a;

impl Batcher {
    /// The queue of a connection whose reads are answered within `timeout` or fail.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            state: Mutex::default(),
            batched: AtomicU64::new(0),
            timeout,
        }
    }

    /// The operation timeout its reads are bounded by.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a read of `key`, or queues it. `launch` sends a batch in a task of its
    /// own and gives the slot back through [`finish`](Self::finish).
    pub(crate) fn enter<'a>(
        self: &'a Arc<Self>,
        key: &Arc<str>,
        launch: &'a Launch<'a>,
    ) -> Entry<'a> {
        let mut state = self.lock();
        // While a batch is out, the load that made it is still there: reads join the next one.
        if state.in_flight < IN_FLIGHT && state.batches == 0 {
            state.in_flight += 1;
            // This read may launch the next batch, on its runtime: noted if that is one whose
            // tasks wait while nobody drives it.
            let runtime = Handle::try_current().ok();
            state.timed = state.timed || runtime.as_ref().is_some_and(is_current_thread);
            return Entry::Direct(Permit {
                batcher: self,
                launch,
                runtime,
            });
        }
        let (reply, receiver) = oneshot::channel();
        let mut watch = None;
        // One clock reading per queue, not per read.
        let since = match state.queue.first() {
            Some(first) => first.since,
            None => {
                state.queues += 1;
                let since = Instant::now();
                // Only a returning read sends this queue: it needs a watch.
                if state.batches == 0 {
                    state.timed = state.timed
                        || Handle::try_current().is_ok_and(|runtime| is_current_thread(&runtime));
                    watch = Some(Watch {
                        batcher: self.clone(),
                        queue: state.queues,
                        since,
                        expired: false,
                    });
                }
                since
            }
        };
        state.queue.push(Waiting {
            key: key.clone(),
            reply,
            since,
        });
        Entry::Queued(receiver, watch, state.timed)
    }

    /// Reads sent in batches so far.
    pub(crate) fn batched(&self) -> u64 {
        self.batched.load(Ordering::Relaxed)
    }

    /// The queued reads whose callers still wait, taken as the next batch and counted.
    fn next_batch(&self, state: &mut State) -> Option<Vec<Waiting>> {
        let batch = Self::take(state)?;
        self.batched
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// Called by a batch when its replies are delivered: the next batch if reads queued
    /// meanwhile (the slot stays taken), else `None` and the slot is given back.
    pub(crate) fn finish(&self) -> Option<Vec<Waiting>> {
        let mut state = self.lock();
        let next = self.next_batch(&mut state);
        if next.is_none() {
            state.in_flight -= 1;
            state.batches -= 1;
        }
        next
    }

    /// The queued reads whose callers still wait, if any.
    fn take(state: &mut State) -> Option<Vec<Waiting>> {
        state.queue.retain(|waiting| !waiting.reply.is_closed());
        (!state.queue.is_empty()).then(|| mem::take(&mut state.queue))
    }
}

impl Watch {
    /// When the watched queue's first read has waited the operation timeout.
    pub(crate) fn deadline(&self) -> Instant {
        self.since + self.batcher.timeout
    }

    /// Fails the watched queue's reads with a timeout, if it still waits.
    pub(crate) fn expire(mut self) {
        self.expired = true;
        let timeout = self.batcher.timeout;
        self.fail(|| CacheError::Timeout { op: "get", timeout });
    }

    fn fail(&self, error: impl Fn() -> CacheError) {
        let waiting = {
            let mut state = self.batcher.lock();
            // The watched queue is still the latest, and not empty: it has not left.
            if state.queues == self.queue {
                mem::take(&mut state.queue)
            } else {
                Vec::new()
            }
        };
        for waiting in waiting {
            let _ = waiting.reply.send(Err(error()));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.expired {
            self.fail(|| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the watch over this read's queue was dropped (its runtime shut down)",
                ))
                .into()
            });
        }
    }
}

/// Whether `runtime` is a current-thread runtime, whose tasks run only while something drives
/// it.
fn is_current_thread(runtime: &Handle) -> bool {
    runtime.runtime_flavor() == RuntimeFlavor::CurrentThread
}

/// A batch's slot on the wire, owned by the task that sends it. [`next`](Self::next) hands it
/// the reads that queued meanwhile, or gives the slot back. Dropped while it still holds the
/// slot (the task was dropped unfinished: its runtime shut down, or it was never run), it
/// gives the slot back and drops the reads still queued, whose readers then see their batch
/// gone instead of waiting for one that will never be sent.
pub(crate) struct Held {
    batcher: Arc<Batcher>,
    holding: bool,
}

impl Held {
    pub(crate) fn new(batcher: Arc<Batcher>) -> Self {
        Self {
            batcher,
            holding: true,
        }
    }

    /// The reads that queued while the last batch was out, or `None` with the slot given back.
    pub(crate) fn next(&mut self) -> Option<Vec<Waiting>> {
        let next = self.batcher.finish();
        self.holding = next.is_some();
        next
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        while self.holding {
            self.next();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let next = {
            let mut state = self.batcher.lock();
            let next = self.batcher.next_batch(&mut state);
            match next {
                // The slot passes to the batch.
                Some(_) => state.batches += 1,
                None => state.in_flight -= 1,
            }
            next
        };
        if let Some(batch) = next {
            (self.launch)(batch, self.runtime.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher() -> Arc<Batcher> {
        Arc::new(Batcher::new(Duration::from_secs(1)))
    }

    fn queued(
        entry: Entry<'_>,
    ) -> (
        oneshot::Receiver<Result<Vec<u8>, CacheError>>,
        Option<Watch>,
    ) {
        match entry {
            Entry::Queued(reply, watch, _) => (reply, watch),
            Entry::Direct(_) => panic!("expected to queue"),
        }
    }

    /// A queue that forms behind reads sent at once is watched: if it has not left when its
    /// watch drops, its reads fail with a timeout. A queue that left is not touched, and a
    /// queue that forms while a batch is out has no watch.
    #[test]
    fn a_queue_behind_reads_sent_at_once_fails_when_its_watch_ends() {
        let batcher = batcher();
        let launched = Mutex::new(Vec::new());
        let launch =
            |batch: Vec<Waiting>, _runtime: Option<Handle>| launched.lock().unwrap().push(batch);
        let (a, b) = (
            batcher.enter(&"a".into(), &launch),
            batcher.enter(&"b".into(), &launch),
        );
        let (mut c, watch) = queued(batcher.enter(&"c".into(), &launch));
        let watch = watch.expect("the first read of a queue behind reads sent at once");
        let (mut d, none) = queued(batcher.enter(&"d".into(), &launch));
        assert!(none.is_none(), "one watch per queue");
        // Neither a nor b returns (their callers stopped polling them): the watch ends.
        watch.expire();
        for reply in [&mut c, &mut d] {
            let error = reply.try_recv().unwrap().unwrap_err();
            assert!(error.is_timeout(), "{error:?}");
        }
        // The next queue has a watch of its own; once it left, its watch leaves it alone.
        let (mut e, watch) = queued(batcher.enter(&"e".into(), &launch));
        let watch = watch.expect("a new queue, a new watch");
        drop(a); // sends [e]
        assert_eq!(launched.lock().unwrap().len(), 1);
        // While that batch is out, a queue needs no watch: the batch's task takes it. Nor is
        // it the queue the earlier watch watched, which leaves it alone when it ends.
        let (mut f, none) = queued(batcher.enter(&"f".into(), &launch));
        assert!(none.is_none());
        watch.expire();
        assert!(matches!(
            e.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(matches!(
            f.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        drop(b);
    }

    fn timed(entry: &Entry<'_>) -> bool {
        match entry {
            Entry::Queued(_, _, timed) => *timed,
            Entry::Direct(_) => panic!("expected to queue"),
        }
    }

    fn runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
        let threaded = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (threaded, single)
    }

    /// Reads queue without timers of their own while every slot was taken on a multi-threaded
    /// runtime, and with them once a read on a current-thread runtime took one.
    #[test]
    fn queued_reads_keep_timers_once_a_current_thread_runtime_took_a_slot() {
        let (threaded, single) = runtimes();
        let batcher = batcher();
        let launch = |batch: Vec<Waiting>, _runtime: Option<Handle>| mem::forget(batch);
        let on_threaded = threaded.enter();
        let a = batcher.enter(&"a".into(), &launch);
        let b = batcher.enter(&"b".into(), &launch);
        // Kept: a queue's first read holds its watch, which ends the queue when dropped.
        let c = batcher.enter(&"c".into(), &launch);
        assert!(!timed(&c));
        drop(a); // sends [c]
        assert!(batcher.finish().is_none());
        drop(on_threaded);
        let on_single = single.enter();
        let d = batcher.enter(&"d".into(), &launch);
        assert!(matches!(d, Entry::Direct(_)), "a slot was free");
        drop(on_single);
        let e = batcher.enter(&"e".into(), &launch);
        assert!(timed(&e));
        drop((b, d, c, e));
    }

    /// A queue whose watch starts on a current-thread runtime makes its reads, and later ones,
    /// keep timers of their own.
    #[test]
    fn a_watch_started_on_a_current_thread_runtime_makes_queued_reads_keep_timers() {
        let (threaded, single) = runtimes();
        let batcher = batcher();
        let launch = |batch: Vec<Waiting>, _runtime: Option<Handle>| mem::forget(batch);
        let on_threaded = threaded.enter();
        let (a, b) = (
            batcher.enter(&"a".into(), &launch),
            batcher.enter(&"b".into(), &launch),
        );
        drop(on_threaded);
        let on_single = single.enter();
        let c = batcher.enter(&"c".into(), &launch);
        assert!(
            matches!(&c, Entry::Queued(_, Some(_), true)),
            "the watch's own read"
        );
        drop(on_single);
        let d = batcher.enter(&"d".into(), &launch);
        assert!(timed(&d));
        drop((a, b, c, d));
    }

    /// A launch for the tests that check where batches are sent: notes the flavour of the
    /// runtime each batch would be sent on, and sends nothing.
    fn record_runtime(
        sent_on: &Mutex<Vec<Option<RuntimeFlavor>>>,
        batch: Vec<Waiting>,
        runtime: Option<Handle>,
    ) {
        sent_on
            .lock()
            .unwrap()
            .push(runtime.map(|runtime| runtime.runtime_flavor()));
        mem::forget(batch);
    }

    /// A batch is sent on the runtime its slot was taken on, wherever the read that held the
    /// slot ended: reads queued behind it never wait for a runtime their reader did not use.
    #[test]
    fn a_batch_is_sent_on_the_runtime_its_slot_was_taken_on() {
        let (threaded, single) = runtimes();
        let batcher = batcher();
        let sent_on = Mutex::new(Vec::new());
        let launch = |batch, runtime| record_runtime(&sent_on, batch, runtime);
        let on_threaded = threaded.enter();
        let (a, b) = (
            batcher.enter(&"a".into(), &launch),
            batcher.enter(&"b".into(), &launch),
        );
        let c = batcher.enter(&"c".into(), &launch);
        drop(on_threaded);
        let on_single = single.enter();
        drop(a); // ends on the current-thread runtime; sends [c]
        drop(on_single);
        assert_eq!(
            *sent_on.lock().unwrap(),
            vec![Some(RuntimeFlavor::MultiThread)]
        );
        let d = batcher.enter(&"d".into(), &launch);
        assert!(!timed(&d), "no task waits on the current-thread runtime");
        drop((b, c, d));
    }

    /// Every slot keeps its runtime, also once queued reads keep timers: a read that ends off
    /// any runtime still has its batch sent.
    #[test]
    fn a_slot_taken_after_the_note_still_keeps_its_runtime() {
        let (_threaded, single) = runtimes();
        let batcher = batcher();
        let sent_on = Mutex::new(Vec::new());
        let launch = |batch, runtime| record_runtime(&sent_on, batch, runtime);
        let on_single = single.enter();
        let a = batcher.enter(&"a".into(), &launch); // takes the note
        let b = batcher.enter(&"b".into(), &launch);
        let c = batcher.enter(&"c".into(), &launch);
        drop(on_single);
        drop(b); // off any runtime; sends [c]
        assert_eq!(
            *sent_on.lock().unwrap(),
            vec![Some(RuntimeFlavor::CurrentThread)]
        );
        drop((a, c));
    }

    /// A watch dropped before its deadline (its runtime shut down) fails its queue's reads at
    /// once, as reads whose batch was dropped rather than as timeouts.
    #[test]
    fn a_watch_dropped_unexpired_fails_its_queue_as_dropped() {
        let batcher = batcher();
        let launch = |batch: Vec<Waiting>, _runtime: Option<Handle>| drop(batch);
        let (_a, _b) = (
            batcher.enter(&"a".into(), &launch),
            batcher.enter(&"b".into(), &launch),
        );
        let (mut c, watch) = queued(batcher.enter(&"c".into(), &launch));
        drop(watch);
        let error = c.try_recv().unwrap().unwrap_err();
        assert!(!error.is_timeout(), "{error:?}");
        assert!(error.to_string().contains("runtime shut down"), "{error}");
    }

    #[test]
    fn reads_go_out_at_once_until_the_wire_is_full_then_leave_together() {
        let batcher = batcher();
        let launched = Mutex::new(Vec::new());
        let launch = |batch: Vec<Waiting>, _runtime: Option<Handle>| {
            launched
                .lock()
                .unwrap()
                .push(batch.iter().map(|w| w.key.to_string()).collect::<Vec<_>>());
            // The batch holds on to its senders as a real one would until it replies.
            mem::forget(batch);
        };
        let first = batcher.enter(&"a".into(), &launch);
        let second = batcher.enter(&"b".into(), &launch);
        assert!(matches!(first, Entry::Direct(_)));
        assert!(matches!(second, Entry::Direct(_)));
        let third = batcher.enter(&"c".into(), &launch);
        let fourth = batcher.enter(&"d".into(), &launch);
        let gave_up = batcher.enter(&"e".into(), &launch);
        assert!(matches!(third, Entry::Queued(..)));
        drop(gave_up);
        drop(first);
        assert_eq!(*launched.lock().unwrap(), vec![vec!["c", "d"]]);
        // The batch kept the slot: the wire is still full.
        let f = batcher.enter(&"f".into(), &launch);
        assert!(matches!(f, Entry::Queued(..)));
        drop(second);
        assert_eq!(launched.lock().unwrap().len(), 2);
        assert_eq!(launched.lock().unwrap()[1], vec!["f"]);
        // Both batches finish with nothing queued: both slots are free again.
        assert!(batcher.finish().is_none());
        assert!(batcher.finish().is_none());
        assert!(matches!(
            batcher.enter(&"g".into(), &launch),
            Entry::Direct(_)
        ));
        drop((third, fourth, f));
    }

    /// While a batch is out, reads queue even with a slot free; once it ends with nothing
    /// queued, reads go out at once again.
    #[test]
    fn under_load_reads_leave_in_batches_only() {
        let batcher = batcher();
        let launched = Mutex::new(0);
        let launch = |batch: Vec<Waiting>, _runtime: Option<Handle>| {
            *launched.lock().unwrap() += 1;
            mem::forget(batch);
        };
        let (a, b) = (
            batcher.enter(&"a".into(), &launch),
            batcher.enter(&"b".into(), &launch),
        );
        let c = batcher.enter(&"c".into(), &launch);
        drop(a); // [c] leaves as a batch, in a's slot
        drop(b); // b's slot is free
        assert_eq!(*launched.lock().unwrap(), 1);
        let d = batcher.enter(&"d".into(), &launch);
        assert!(matches!(d, Entry::Queued(..)), "a batch is out");
        assert_eq!(batcher.finish().map(|batch| batch.len()), Some(1));
        assert!(batcher.finish().is_none());
        assert!(matches!(
            batcher.enter(&"e".into(), &launch),
            Entry::Direct(_)
        ));
        drop((c, d));
    }

    /// A batch whose task is dropped unfinished gives its slot back and drops the reads that
    /// queued behind it.
    #[test]
    fn a_batch_dropped_unfinished_gives_its_slot_back() {
        let batcher = batcher();
        let held = Mutex::new(Vec::new());
        let launch = |batch: Vec<Waiting>, _runtime: Option<Handle>| {
            held.lock().unwrap().push(Held::new(batcher.clone()));
            drop(batch);
        };
        let (a, b) = (
            batcher.enter(&"a".into(), &launch),
            batcher.enter(&"b".into(), &launch),
        );
        let c = batcher.enter(&"c".into(), &launch);
        drop(a); // launches [c]: the batch now holds a's slot
        let Entry::Queued(mut d, ..) = batcher.enter(&"d".into(), &launch) else {
            panic!("the wire is full")
        };
        // The batch's task is dropped before it sent anything: the slot comes back, and the
        // read queued behind it hears that its batch is gone.
        held.lock().unwrap().clear();
        assert!(matches!(
            d.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        drop((b, c));
        assert!(matches!(
            batcher.enter(&"e".into(), &launch),
            Entry::Direct(_)
        ));
        assert!(matches!(
            batcher.enter(&"f".into(), &launch),
            Entry::Direct(_)
        ));
    }
}
