//! Free loopback ports for test servers.
//!
//! A port is chosen at random outside the kernel's ephemeral range and checked free by binding
//! `127.0.0.1:port`. Staying out of the ephemeral range matters for outage tests: while a server is
//! down, a client reconnecting to its port gets an ephemeral source port, and if that equals the
//! destination port the kernel connects the socket to itself (TCP self-connect), which both
//! confuses the client and keeps the port busy so the server cannot come back. Ports from the
//! ephemeral range (the `127.0.0.1:0` trick) are the fallback when no other range is usable.
//!
//! Ports in use by servers of this process are also recorded, so two parallel tests never pick the
//! same one even between the check and the server's own bind.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// Preferred range: below Linux's default ephemeral range (32768-60999) and macOS's (49152-65535).
const PREFERRED_LOW: u16 = 20_000;
const PREFERRED_HIGH: u16 = 32_767;
/// Smallest usable preferred range once the ephemeral range is carved out of it.
const MIN_RANGE: u16 = 1_000;
const RANDOM_ATTEMPTS: u64 = 500;
const KERNEL_ATTEMPTS: usize = 100;

/// A port held for one server of this process; released when dropped.
#[derive(Debug)]
pub(crate) struct PortReservation(u16);

impl PortReservation {
    /// A port that is free now and not held by another server of this process.
    pub(crate) fn new() -> Self {
        if let Some((low, high)) = preferred_range() {
            let random = RandomState::new();
            let span = u64::from(high - low) + 1;
            for attempt in 0..RANDOM_ATTEMPTS {
                let offset = u16::try_from(random.hash_one(attempt) % span).unwrap_or(0);
                if let Some(reservation) = Self::try_port(low + offset) {
                    return reservation;
                }
            }
        }
        for _ in 0..KERNEL_ATTEMPTS {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:0: {error}"));
            if let Some(reservation) = Self::try_port(port) {
                return reservation;
            }
        }
        panic!("found no free loopback port for redis-server")
    }

    /// The reserved port number.
    pub(crate) fn port(&self) -> u16 {
        self.0
    }

    fn try_port(port: u16) -> Option<Self> {
        let mut held = held();
        if held.contains(&port) || !is_free(port) {
            return None;
        }
        held.insert(port);
        Some(Self(port))
    }
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        held().remove(&self.0);
    }
}

/// Whether nothing listens on `127.0.0.1:port` (nor on the wildcard address).
pub(crate) fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn held() -> MutexGuard<'static, HashSet<u16>> {
    static HELD: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    HELD.get_or_init(Mutex::default)
        .lock()
        // A panic while holding the lock cannot leave the set inconsistent: keep going.
        .unwrap_or_else(PoisonError::into_inner)
}

/// The preferred range minus the ephemeral range, if enough of it remains.
fn preferred_range() -> Option<(u16, u16)> {
    let (low, mut high) = (PREFERRED_LOW, PREFERRED_HIGH);
    if let Some((eph_low, eph_high)) = ephemeral_range()
        && eph_low <= high
        && eph_high >= low
    {
        high = eph_low.checked_sub(1)?;
    }
    (high >= low && high - low >= MIN_RANGE).then_some((low, high))
}

/// Linux's ephemeral port range; other systems' defaults lie above the preferred range.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_distinct_and_released() {
        let first = PortReservation::new();
        let second = PortReservation::new();
        assert_ne!(first.port(), second.port());
        let port = first.port();
        assert!(held().contains(&port));
        drop(first);
        assert!(!held().contains(&port));
    }

    #[test]
    fn preferred_ports_avoid_the_ephemeral_range() {
        if let (Some((_, high)), Some((eph_low, _))) = (preferred_range(), ephemeral_range()) {
            assert!(high < eph_low);
        }
    }
}
