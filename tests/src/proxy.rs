//! An in-process TCP proxy that injects network faults between a service and its redis-server.
//!
//! [`FaultProxy`] listens on a loopback port and relays every connection it accepts to the
//! upstream server, byte for byte and in order. Between the two it can:
//!
//! - **stall** every connection ([`stall`](FaultProxy::stall) / [`resume`](FaultProxy::resume)):
//!   bytes are held, in both directions, and delivered late, in order, on resume. This is what a
//!   congested network or a stop-the-world pause on the path looks like to a client: its
//!   requests time out, then their answers and effects arrive after the fact;
//! - **cut** every connection ([`cut`](FaultProxy::cut) / [`restore`](FaultProxy::restore)):
//!   both sides are closed, bytes held by the proxy are lost, and new connections are closed as
//!   soon as they are accepted until the proxy is restored;
//! - hold or cut one request: [`hold_next`](FaultProxy::hold_next) delays the next
//!   client-to-server chunk containing a pattern (and, behind it, everything after it on its
//!   connection); [`cut_on`](FaultProxy::cut_on) cuts the connection carrying it instead, and
//!   [`cut_after`](FaultProxy::cut_after) cuts it just after the pattern;
//! - alternate stalls and free gaps of random lengths, from a seeded generator so that a run can
//!   be repeated ([`chaos`](FaultProxy::chaos)).
//!
//! Patterns are searched within one chunk, as read from the client's socket; a pattern split
//! across two reads is not found. Redis commands are small and written whole by the client, so
//! a command and its arguments arrive in one chunk unless they are many kilobytes long.
//!
//! Every control takes `&self`: share the proxy in an `Arc` to drive it from other tasks.
//! Dropping the proxy closes its listener and every connection.
//!
//! ```
//! use cachekit_tests::{FaultProxy, RedisServer};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = RedisServer::start();
//! let proxy = FaultProxy::start(server.addr()).await;
//! let client = redis::Client::open(proxy.url()).unwrap();
//! let mut conn = client.get_multiplexed_async_connection().await.unwrap();
//! let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
//! assert_eq!(pong, "PONG");
//! # });
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The most bytes relayed per read.
const CHUNK: usize = 64 * 1024;
/// Pause after a failed `accept` (out of file descriptors, for instance) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// A TCP proxy in front of one upstream server, injecting stalls and cuts on command.
///
/// Built with [`start`](Self::start) inside a tokio runtime; its tasks run on that runtime.
#[must_use = "the proxy stops as soon as its handle is dropped"]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    accept: JoinHandle<()>,
}

/// The fault state shared by the proxy's handle, its connections and its chaos tasks.
struct Faults {
    upstream: SocketAddr,
    /// Whether every connection is stalled.
    stalled: watch::Sender<bool>,
    cuts: watch::Sender<Cuts>,
    /// One-shot rules for client-to-server chunks, in the order they were set.
    rules: Mutex<Vec<Rule>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cuts {
    /// Bumped by every `cut`: a connection opened in an earlier epoch closes.
    epoch: u64,
    /// New connections are closed as soon as they are accepted.
    refusing: bool,
}

struct Rule {
    pattern: Vec<u8>,
    action: Action,
}

enum Action {
    Hold(Duration, watch::Sender<HoldPhase>),
    Cut(watch::Sender<bool>),
    CutAfter(watch::Sender<bool>),
}

/// Where a chunk held by [`FaultProxy::hold_next`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldPhase {
    /// No chunk has matched yet.
    Waiting,
    /// A matching chunk is held.
    Held,
    /// The hold is over; the chunk is being written to the server.
    Released,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, relaying to `upstream`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|error| panic!("cannot bind a port for the fault proxy: {error}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("the fault proxy's listener has no address: {error}"));
        let faults = Arc::new(Faults {
            upstream,
            stalled: watch::Sender::new(false),
            cuts: watch::Sender::new(Cuts::default()),
            rules: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, faults.clone()));
        Self {
            addr,
            faults,
            accept,
        }
    }

    /// The proxy's own address, `127.0.0.1:port`: connect here instead of to the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:port/0` for the proxy's port.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Stalls every connection, open or opened later: nothing is delivered in either direction
    /// until [`resume`](Self::resume). Bytes sent meanwhile are held (by the proxy, then by the
    /// sockets' buffers), not lost.
    pub fn stall(&self) {
        self.faults.stall();
    }

    /// Ends a stall: held bytes are delivered, late and in order.
    pub fn resume(&self) {
        self.faults.resume();
    }

    /// Whether connections are stalled now.
    pub fn is_stalled(&self) -> bool {
        *self.faults.stalled.borrow()
    }

    /// Closes every open connection, on both sides, now (bytes the proxy holds are lost), and
    /// closes new connections as soon as they are accepted until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.faults.cuts.send_modify(|cuts| {
            cuts.epoch += 1;
            cuts.refusing = true;
        });
    }

    /// Accepts and relays new connections again after a [`cut`](Self::cut). Connections that
    /// were cut stay closed: clients reconnect.
    pub fn restore(&self) {
        self.faults.cuts.send_modify(|cuts| cuts.refusing = false);
    }

    /// Holds the next client-to-server chunk that contains `pattern` for `duration`, then
    /// delivers it. Everything sent after it on the same connection waits behind it; other
    /// connections and the server-to-client direction are not held. The hold starts when the
    /// chunk is read; a stall or a cut still applies to it afterwards.
    ///
    /// Rules set by `hold_next` and [`cut_on`](Self::cut_on) are one-shot and tried in the
    /// order they were set; a chunk triggers at most one. The pattern is searched within one
    /// chunk (see the [module docs](self)).
    pub fn hold_next(&self, pattern: &[u8], duration: Duration) -> Hold {
        let (phase, watcher) = watch::channel(HoldPhase::Waiting);
        self.faults.add_rule(pattern, Action::Hold(duration, phase));
        Hold { phase: watcher }
    }

    /// Cuts the connection carrying the next client-to-server chunk that contains `pattern`,
    /// before forwarding it: the server never sees that chunk. Other connections are untouched
    /// and new ones are accepted. One-shot, like [`hold_next`](Self::hold_next).
    pub fn cut_on(&self, pattern: &[u8]) -> Tripwire {
        let (fired, watcher) = watch::channel(false);
        self.faults.add_rule(pattern, Action::Cut(fired));
        Tripwire { fired: watcher }
    }

    /// Forwards the next client-to-server chunk that contains `pattern` up to the end of the
    /// pattern, then cuts its connection: the server runs what it received and never sees the
    /// rest of the chunk, as when a connection dies in the middle of a pipeline. One-shot,
    /// like [`hold_next`](Self::hold_next).
    pub fn cut_after(&self, pattern: &[u8]) -> Tripwire {
        let (fired, watcher) = watch::channel(false);
        self.faults.add_rule(pattern, Action::CutAfter(fired));
        Tripwire { fired: watcher }
    }

    /// Alternates free gaps and stalls, starting with a gap, each of a length drawn uniformly
    /// from its range by a generator seeded with `seed` (the same seed gives the same lengths).
    /// Runs until the returned handle is dropped, which also ends a stall in progress.
    ///
    /// # Panics
    ///
    /// If a range is empty (its start after its end).
    pub fn chaos(
        &self,
        seed: u64,
        stall: RangeInclusive<Duration>,
        gap: RangeInclusive<Duration>,
    ) -> Chaos {
        assert!(
            stall.start() <= stall.end() && gap.start() <= gap.end(),
            "empty chaos range: stall {stall:?}, gap {gap:?}"
        );
        let shared = Arc::new(ChaosShared {
            faults: self.faults.clone(),
            stopped: Mutex::new(false),
            windows: AtomicU64::new(0),
        });
        let task = tokio::spawn(chaos_loop(shared.clone(), SplitMix64(seed), stall, gap));
        Chaos { shared, task }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it drops them, which closes
        // every socket.
        self.accept.abort();
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.faults.upstream)
            .field("stalled", &self.is_stalled())
            .finish_non_exhaustive()
    }
}

/// A request held by [`FaultProxy::hold_next`]: tells when the hold starts and ends.
#[derive(Debug, Clone)]
pub struct Hold {
    phase: watch::Receiver<HoldPhase>,
}

impl Hold {
    /// Waits until a matching chunk is held (returns at once if it was). Also returns if the
    /// proxy is dropped before any chunk matched.
    pub async fn held(&self) {
        let mut phase = self.phase.clone();
        let _ = phase.wait_for(|phase| *phase != HoldPhase::Waiting).await;
    }

    /// Waits until the hold is over and the chunk is being written to the server; `false` if
    /// that will never happen (its connection was cut during the hold, or the proxy dropped).
    /// Anything the client reads in reply to the held chunk arrives after this.
    pub async fn released(&self) -> bool {
        let mut phase = self.phase.clone();
        phase
            .wait_for(|phase| *phase == HoldPhase::Released)
            .await
            .is_ok()
    }

    /// Whether a matching chunk is held or was.
    pub fn is_held(&self) -> bool {
        *self.phase.borrow() != HoldPhase::Waiting
    }

    /// Whether the hold is over.
    pub fn is_released(&self) -> bool {
        *self.phase.borrow() == HoldPhase::Released
    }
}

/// A connection cut armed by [`FaultProxy::cut_on`].
#[derive(Debug, Clone)]
pub struct Tripwire {
    fired: watch::Receiver<bool>,
}

impl Tripwire {
    /// Waits until a matching chunk cut its connection. Also returns if the proxy is dropped
    /// first.
    pub async fn fired(&self) {
        let mut fired = self.fired.clone();
        let _ = fired.wait_for(|fired| *fired).await;
    }

    /// Whether a matching chunk cut its connection.
    pub fn has_fired(&self) -> bool {
        *self.fired.borrow()
    }
}

/// Stalls and gaps started by [`FaultProxy::chaos`]; dropping it stops them and resumes the
/// proxy.
#[must_use = "chaos stops as soon as its handle is dropped"]
pub struct Chaos {
    shared: Arc<ChaosShared>,
    task: JoinHandle<()>,
}

struct ChaosShared {
    faults: Arc<Faults>,
    /// Set under the lock by `Drop`: once set, the task stalls no more, so a stall cannot
    /// begin after the handle's final `resume`.
    stopped: Mutex<bool>,
    windows: AtomicU64,
}

impl Chaos {
    /// How many stalls have begun so far.
    pub fn windows(&self) -> u64 {
        self.shared.windows.load(Ordering::SeqCst)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        let mut stopped = lock(&self.shared.stopped);
        *stopped = true;
        self.shared.faults.resume();
        drop(stopped);
        self.task.abort();
    }
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos")
            .field("windows", &self.windows())
            .finish_non_exhaustive()
    }
}

impl Faults {
    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn resume(&self) {
        self.stalled.send_replace(false);
    }

    fn add_rule(&self, pattern: &[u8], action: Action) {
        lock(&self.rules).push(Rule {
            pattern: pattern.to_vec(),
            action,
        });
    }

    /// Removes the first rule whose pattern `chunk` contains; returns its action and where in
    /// `chunk` the pattern ends.
    fn take_rule(&self, chunk: &[u8]) -> Option<(Action, usize)> {
        let mut rules = lock(&self.rules);
        let (index, end) = rules.iter().enumerate().find_map(|(index, rule)| {
            find(chunk, &rule.pattern).map(|at| (index, at + rule.pattern.len()))
        })?;
        Some((rules.remove(index).action, end))
    }
}

async fn accept_loop(listener: TcpListener, faults: Arc<Faults>) {
    // Owned here so that aborting this task (dropping the proxy) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        // Subscribed before reading the epoch: a cut from now on reaches this connection.
        let cuts = faults.cuts.subscribe();
        let current = *cuts.borrow();
        if current.refusing {
            drop(client);
            continue;
        }
        connections.spawn(serve(client, faults.clone(), cuts, current.epoch));
    }
}

/// Relays one connection until either side closes it, a rule cuts it, or a cut of a later
/// epoch than `epoch` closes it. Returning drops both sockets, which closes them.
async fn serve(
    client: TcpStream,
    faults: Arc<Faults>,
    mut cuts: watch::Receiver<Cuts>,
    epoch: u64,
) {
    tokio::select! {
        _ = cuts.wait_for(|cuts| cuts.epoch != epoch) => {}
        () = relay(client, &faults) => {}
    }
}

async fn relay(client: TcpStream, faults: &Faults) {
    let Ok(server) = TcpStream::connect(faults.upstream).await else {
        return;
    };
    // Chunks go on as soon as they are released, not coalesced by Nagle's algorithm.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    tokio::select! {
        () = pump(from_client, to_server, faults, Direction::ToServer) => {}
        () = pump(from_server, to_client, faults, Direction::ToClient) => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Copies one direction of a connection chunk by chunk, applying the faults to each; returns
/// when the source closes, a write fails, or a rule cuts the connection. One chunk at a time,
/// so order is kept: a chunk waits (for a hold or a stall) with everything behind it.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, faults: &Faults, dir: Direction) {
    let mut stalled = faults.stalled.subscribe();
    let mut buf = vec![0; CHUNK];
    loop {
        let len = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(len) => len,
        };
        let chunk = &buf[..len];
        let mut released = None;
        if dir == Direction::ToServer {
            match faults.take_rule(chunk) {
                Some((Action::Cut(fired), _)) => {
                    fired.send_replace(true);
                    return;
                }
                Some((Action::CutAfter(fired), end)) => {
                    let _ = to.write_all(&chunk[..end]).await;
                    fired.send_replace(true);
                    return;
                }
                Some((Action::Hold(duration, phase), _)) => {
                    phase.send_replace(HoldPhase::Held);
                    tokio::time::sleep(duration).await;
                    released = Some(phase);
                }
                None => {}
            }
        }
        // Checked after the read: a chunk read just before a stall began waits for its end.
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if let Some(phase) = released {
            phase.send_replace(HoldPhase::Released);
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

async fn chaos_loop(
    shared: Arc<ChaosShared>,
    mut rng: SplitMix64,
    stall: RangeInclusive<Duration>,
    gap: RangeInclusive<Duration>,
) {
    loop {
        tokio::time::sleep(rng.duration(&gap)).await;
        {
            let stopped = lock(&shared.stopped);
            if *stopped {
                return;
            }
            shared.faults.stall();
            shared.windows.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(rng.duration(&stall)).await;
        shared.faults.resume();
    }
}

/// Where `needle` first occurs in `haystack`; an empty needle at 0.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stay consistent even if a holder panicked: keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, well-mixed, seedable generator, enough to vary
/// fault timings reproducibly.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly (up to a negligible modulo bias) from `range`, to the
    /// nanosecond.
    fn duration(&mut self, range: &RangeInclusive<Duration>) -> Duration {
        let low = range.start().as_nanos();
        let span = range.end().as_nanos() - low;
        let offset = u128::from(self.next_u64()) % (span + 1);
        let nanos = u64::try_from(low + offset).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    /// How long any step may take before the test calls it hung.
    const BOUND: Duration = Duration::from_secs(10);
    /// How long a stalled or held connection is watched for a reply that must not come. A
    /// correct proxy never delivers one, so this can only lengthen the test, never fail it.
    const QUIET: Duration = Duration::from_millis(300);

    async fn within<T>(what: &str, call: impl Future<Output = T>) -> T {
        tokio::time::timeout(BOUND, call)
            .await
            .unwrap_or_else(|_| panic!("`{what}` did not complete within {BOUND:?}"))
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        within("connect", TcpStream::connect(proxy.addr()))
            .await
            .expect("the proxy accepts connections")
    }

    /// Sends an inline command (`PING`, `ECHO word`), without waiting for the reply.
    async fn send(conn: &mut TcpStream, command: &str) {
        conn.write_all(format!("{command}\r\n").as_bytes())
            .await
            .expect("write to the proxy");
    }

    /// Reads exactly `expected.len()` bytes and checks them.
    async fn expect_reply(conn: &mut TcpStream, expected: &[u8]) {
        let mut reply = vec![0; expected.len()];
        within("reading the reply", conn.read_exact(&mut reply))
            .await
            .expect("the reply arrives");
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(expected)
        );
    }

    /// Whether the connection stays silent for [`QUIET`].
    async fn stays_quiet(conn: &mut TcpStream) -> bool {
        let mut byte = [0; 1];
        tokio::time::timeout(QUIET, conn.read(&mut byte))
            .await
            .is_err()
    }

    /// Whether the peer closed the connection: a read ends (EOF) or fails.
    async fn is_closed(conn: &mut TcpStream) -> bool {
        let mut byte = [0; 1];
        match within("reading from a cut connection", conn.read(&mut byte)).await {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        }
    }

    async fn exists(server: &RedisServer, key: &str) -> bool {
        let mut conn = server.connection().await;
        crate::raw::exists(&mut conn, key).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_commands_both_ways() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut conn = connect(&proxy).await;
        send(&mut conn, "PING").await;
        expect_reply(&mut conn, b"+PONG\r\n").await;

        // Through redis-rs too, with a value larger than one chunk: the bytes come back
        // whole and in order.
        let client = redis::Client::open(proxy.url()).unwrap();
        let mut conn = within("connect", client.get_multiplexed_async_connection())
            .await
            .unwrap();
        let big: Vec<u8> = (0..3 * CHUNK).map(|i| (i * 7 % 251) as u8).collect();
        let () = within(
            "SET",
            redis::cmd("SET")
                .arg("big")
                .arg(&big)
                .query_async(&mut conn),
        )
        .await
        .unwrap();
        let back: Vec<u8> = within("GET", redis::cmd("GET").arg("big").query_async(&mut conn))
            .await
            .unwrap();
        assert!(back == big, "the value came back altered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ping_during_a_stall_completes_only_after_resume() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut open = connect(&proxy).await;
        send(&mut open, "PING").await;
        expect_reply(&mut open, b"+PONG\r\n").await;

        proxy.stall();
        assert!(proxy.is_stalled());
        send(&mut open, "SET during-stall 1").await;
        send(&mut open, "PING").await;
        let mut opened_during_stall = connect(&proxy).await;
        send(&mut opened_during_stall, "PING").await;
        assert!(stays_quiet(&mut open).await, "a reply came during a stall");
        assert!(
            stays_quiet(&mut opened_during_stall).await,
            "a connection opened during a stall was not stalled"
        );
        assert!(
            !exists(&server, "during-stall").await,
            "a command reached the server during a stall"
        );

        proxy.resume();
        // Delivered late, in order.
        expect_reply(&mut open, b"+OK\r\n+PONG\r\n").await;
        expect_reply(&mut opened_during_stall, b"+PONG\r\n").await;
        assert!(exists(&server, "during-stall").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_closes_connections_until_restore() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut open = connect(&proxy).await;
        send(&mut open, "PING").await;
        expect_reply(&mut open, b"+PONG\r\n").await;

        // Through redis-rs: the next command after a cut fails.
        let client = redis::Client::open(proxy.url()).unwrap();
        let mut multiplexed = within("connect", client.get_multiplexed_async_connection())
            .await
            .unwrap();
        let () = within("PING", redis::cmd("PING").query_async(&mut multiplexed))
            .await
            .unwrap();

        proxy.cut();
        assert!(
            is_closed(&mut open).await,
            "an open connection survived a cut"
        );
        let result: redis::RedisResult<String> =
            within("PING", redis::cmd("PING").query_async(&mut multiplexed)).await;
        assert!(result.is_err(), "a command went through a cut connection");
        let mut during_cut = connect(&proxy).await;
        assert!(
            is_closed(&mut during_cut).await,
            "a connection opened during a cut was relayed"
        );

        proxy.restore();
        let mut after = connect(&proxy).await;
        send(&mut after, "PING").await;
        expect_reply(&mut after, b"+PONG\r\n").await;
        let mut reconnected = within("reconnect", client.get_multiplexed_async_connection())
            .await
            .unwrap();
        let pong: String = within("PING", redis::cmd("PING").query_async(&mut reconnected))
            .await
            .unwrap();
        assert_eq!(pong, "PONG");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hold_next_delays_only_the_matching_command_and_what_follows_it() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut held_conn = connect(&proxy).await;
        let mut other_conn = connect(&proxy).await;
        // Long enough that the other connection's round trips finish inside it on any machine.
        let hold = proxy.hold_next(b"held-1", Duration::from_secs(2));

        // Not matching: passes, and the rule stays armed.
        send(&mut held_conn, "ECHO free-1").await;
        expect_reply(&mut held_conn, b"$6\r\nfree-1\r\n").await;
        assert!(!hold.is_held());

        send(&mut held_conn, "ECHO held-1").await;
        within("the hold", hold.held()).await;
        send(&mut held_conn, "ECHO free-2").await;
        // Another connection is not held.
        send(&mut other_conn, "ECHO other").await;
        expect_reply(&mut other_conn, b"$5\r\nother\r\n").await;
        assert!(
            !hold.is_released(),
            "the hold ended before another connection's round trip"
        );

        // The held command's reply, then the one behind it, come after the release.
        expect_reply(&mut held_conn, b"$6\r\nheld-1\r\n$6\r\nfree-2\r\n").await;
        assert!(hold.is_released());
        assert!(within("the release", hold.released()).await);

        // One-shot: the same pattern passes now.
        send(&mut held_conn, "ECHO held-1").await;
        expect_reply(&mut held_conn, b"$6\r\nheld-1\r\n").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_after_delivers_up_to_the_pattern_and_cuts() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut conn = connect(&proxy).await;
        let tripwire = proxy.cut_after(b"SET first 1\r\n");

        // Both commands in one write, so in one chunk.
        send(&mut conn, "SET first 1\r\nSET second 2").await;
        let mut rest = Vec::new();
        let _ = within("the cut", conn.read_to_end(&mut rest)).await;
        assert!(tripwire.has_fired());
        assert!(
            exists(&server, "first").await,
            "the command before the cut was lost"
        );
        assert!(
            !exists(&server, "second").await,
            "the command after the cut reached the server"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_on_cuts_only_the_connection_carrying_the_pattern() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut doomed = connect(&proxy).await;
        let mut other = connect(&proxy).await;
        let tripwire = proxy.cut_on(b"doomed-key");

        send(&mut doomed, "PING").await;
        expect_reply(&mut doomed, b"+PONG\r\n").await;
        assert!(!tripwire.has_fired());

        send(&mut doomed, "SET doomed-key 1").await;
        assert!(is_closed(&mut doomed).await, "the connection was not cut");
        assert!(tripwire.has_fired());
        assert!(
            !exists(&server, "doomed-key").await,
            "the cut command reached the server"
        );

        send(&mut other, "PING").await;
        expect_reply(&mut other, b"+PONG\r\n").await;
        let mut new = connect(&proxy).await;
        send(&mut new, "SET doomed-key 1").await;
        expect_reply(&mut new, b"+OK\r\n").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chaos_stalls_repeatedly_and_loses_nothing() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        let mut conn = connect(&proxy).await;
        let chaos = proxy.chaos(
            7,
            Duration::from_millis(20)..=Duration::from_millis(60),
            Duration::from_millis(20)..=Duration::from_millis(60),
        );
        let mut n = 0_u64;
        within("three chaos windows", async {
            while chaos.windows() < 3 {
                n += 1;
                let word = format!("w{n:06}");
                send(&mut conn, &format!("ECHO {word}")).await;
                expect_reply(&mut conn, format!("$7\r\n{word}\r\n").as_bytes()).await;
            }
        })
        .await;
        drop(chaos);
        assert!(!proxy.is_stalled(), "dropping chaos left the proxy stalled");
        send(&mut conn, "PING").await;
        expect_reply(&mut conn, b"+PONG\r\n").await;
    }

    #[test]
    fn the_generator_is_deterministic_and_stays_in_range() {
        let range = Duration::from_millis(300)..=Duration::from_millis(700);
        let draw = |seed| {
            let mut rng = SplitMix64(seed);
            (0..1000).map(|_| rng.duration(&range)).collect::<Vec<_>>()
        };
        let first = draw(42);
        assert_eq!(first, draw(42));
        assert_ne!(first, draw(43));
        assert!(first.iter().all(|d| range.contains(d)));
        let point = Duration::from_millis(5)..=Duration::from_millis(5);
        assert_eq!(SplitMix64(1).duration(&point), Duration::from_millis(5));
    }

    #[test]
    fn patterns_are_found_anywhere_in_a_chunk() {
        assert_eq!(find(b"*2\r\n$7\r\nEVALSHA\r\n", b"EVALSHA"), Some(8));
        assert_eq!(find(b"abc", b""), Some(0));
        assert_eq!(find(b"EVALSH", b"EVALSHA"), None);
    }
}
