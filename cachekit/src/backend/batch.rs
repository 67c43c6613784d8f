//! Reads that queue behind reads in flight and leave together, as one pipeline.
//!
//! A read of one server goes out at once while fewer than [`IN_FLIGHT`] reads are on the wire
//! and no batch is, so a lone or lightly concurrent caller pays one lock and nothing else.
//! Beyond that, reads wait in a queue; when a read in flight returns, the whole queue leaves as
//! one pipeline, sent by a task of its own, which then sends what queued meanwhile, and so on
//! while reads keep coming: under load, reads leave in batches only, each carrying what
//! arrived during the last one's round trip. Many tasks reading distinct keys then cost the connection one
//! message, one write and one reply parse per batch rather than per key, and the server one
//! read of the socket, while no read ever waits on a timer.
//!
//! Consistency: a queued read is sent after it was queued, so it sees every write that
//! returned before it began, as a read sent at once would. A queued read whose caller gave up
//! (its timeout) is dropped from the batch before it leaves.

use crate::error::CacheError;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Reads on the wire before the next ones queue. Two keep the connection busy while a batch is
/// built; more would send reads one by one under load, which is what batching avoids.
pub(crate) const IN_FLIGHT: usize = 2;

/// One queued read: its key and where its reply goes.
pub(crate) struct Waiting {
    pub(crate) key: String,
    pub(crate) reply: oneshot::Sender<Result<Vec<u8>, CacheError>>,
}

#[derive(Default)]
struct State {
    /// Reads and batches on the wire.
    in_flight: usize,
    /// Batches on the wire (each also counted in `in_flight`).
    batches: usize,
    queue: Vec<Waiting>,
}

/// The queue of one connection's reads.
#[derive(Default)]
pub(crate) struct Batcher {
    state: Mutex<State>,
    /// Reads sent in batches so far.
    batched: AtomicU64,
}

/// How a read goes out.
pub(crate) enum Entry<'a> {
    /// Now, by the caller; the slot it holds is given back when the permit drops.
    Direct(Permit<'a>),
    /// In the next batch; the reply comes here.
    Queued(oneshot::Receiver<Result<Vec<u8>, CacheError>>),
}

/// A read's slot on the wire. Dropped when the read returned or its caller gave up; if reads
/// queued meanwhile, it hands them to `launch` as the next batch, which keeps the slot.
pub(crate) struct Permit<'a> {
    batcher: &'a Batcher,
    launch: &'a Launch<'a>,
}

/// What sends a batch: in a task of its own, giving its slot back through
/// [`Batcher::finish`].
pub(crate) type Launch<'a> = dyn Fn(Vec<Waiting>) + Sync + 'a;

impl Batcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a read of `key`, or queues it. `launch` sends a batch in a task of its
    /// own and gives the slot back through [`finish`](Self::finish).
    pub(crate) fn enter<'a>(&'a self, key: &str, launch: &'a Launch<'a>) -> Entry<'a> {
        let mut state = self.lock();
        // While a batch is out, the load that made it is still there: reads join the next one.
        if state.in_flight < IN_FLIGHT && state.batches == 0 {
            state.in_flight += 1;
            return Entry::Direct(Permit {
                batcher: self,
                launch,
            });
        }
        let (reply, receiver) = oneshot::channel();
        state.queue.push(Waiting {
            key: key.to_owned(),
            reply,
        });
        Entry::Queued(receiver)
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
            (self.launch)(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_out_at_once_until_the_wire_is_full_then_leave_together() {
        let batcher = Batcher::default();
        let launched = Mutex::new(Vec::new());
        let launch = |batch: Vec<Waiting>| {
            launched
                .lock()
                .unwrap()
                .push(batch.iter().map(|w| w.key.clone()).collect::<Vec<_>>());
            // The batch holds on to its senders as a real one would until it replies.
            mem::forget(batch);
        };
        let first = batcher.enter("a", &launch);
        let second = batcher.enter("b", &launch);
        assert!(matches!(first, Entry::Direct(_)));
        assert!(matches!(second, Entry::Direct(_)));
        let third = batcher.enter("c", &launch);
        let fourth = batcher.enter("d", &launch);
        let gave_up = batcher.enter("e", &launch);
        assert!(matches!(third, Entry::Queued(_)));
        drop(gave_up);
        drop(first);
        assert_eq!(*launched.lock().unwrap(), vec![vec!["c", "d"]]);
        // The batch kept the slot: the wire is still full.
        let f = batcher.enter("f", &launch);
        assert!(matches!(f, Entry::Queued(_)));
        drop(second);
        assert_eq!(launched.lock().unwrap().len(), 2);
        assert_eq!(launched.lock().unwrap()[1], vec!["f"]);
        // Both batches finish with nothing queued: both slots are free again.
        assert!(batcher.finish().is_none());
        assert!(batcher.finish().is_none());
        assert!(matches!(batcher.enter("g", &launch), Entry::Direct(_)));
        drop((third, fourth, f));
    }

    /// While a batch is out, reads queue even with a slot free; once it ends with nothing
    /// queued, reads go out at once again.
    #[test]
    fn under_load_reads_leave_in_batches_only() {
        let batcher = Batcher::default();
        let launched = Mutex::new(0);
        let launch = |batch: Vec<Waiting>| {
            *launched.lock().unwrap() += 1;
            mem::forget(batch);
        };
        let (a, b) = (batcher.enter("a", &launch), batcher.enter("b", &launch));
        let c = batcher.enter("c", &launch);
        drop(a); // [c] leaves as a batch, in a's slot
        drop(b); // b's slot is free
        assert_eq!(*launched.lock().unwrap(), 1);
        let d = batcher.enter("d", &launch);
        assert!(matches!(d, Entry::Queued(_)), "a batch is out");
        assert_eq!(batcher.finish().map(|batch| batch.len()), Some(1));
        assert!(batcher.finish().is_none());
        assert!(matches!(batcher.enter("e", &launch), Entry::Direct(_)));
        drop((c, d));
    }

    /// A batch whose task is dropped unfinished gives its slot back and drops the reads that
    /// queued behind it.
    #[test]
    fn a_batch_dropped_unfinished_gives_its_slot_back() {
        let batcher = Arc::new(Batcher::default());
        let held = Mutex::new(Vec::new());
        let launch = |batch: Vec<Waiting>| {
            held.lock().unwrap().push(Held::new(batcher.clone()));
            drop(batch);
        };
        let (a, b) = (batcher.enter("a", &launch), batcher.enter("b", &launch));
        let c = batcher.enter("c", &launch);
        drop(a); // launches [c]: the batch now holds a's slot
        let Entry::Queued(mut d) = batcher.enter("d", &launch) else {
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
        assert!(matches!(batcher.enter("e", &launch), Entry::Direct(_)));
        assert!(matches!(batcher.enter("f", &launch), Entry::Direct(_)));
    }
}
