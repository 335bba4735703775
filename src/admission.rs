//! Admitting new client connections: rate limits that keep a reconnect storm (every web
//! instance reconnecting at once after a Redis hiccup, autoscaling adding instances) from
//! reaching Redis, and from using up the proxy.
//!
//! Two token buckets, each holding one second's worth of connections: one for all new
//! connections (`proxy.max_connections_per_second`) and one per client address
//! (`proxy.max_connections_per_second_per_address`; not per port, since a pool spreads one
//! application over many ports). A refused client gets a one-line error naming the setting,
//! and its connection is closed.
//!
//! The per-address table is bounded by `proxy.max_tracked_addresses`: when it is full,
//! addresses whose bucket has refilled (idle for a second) are dropped, at most once a
//! second; if it is still full, new addresses are admitted under the global limit only and
//! counted in `respguard_client_addresses_untracked_total`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use dashmap::DashMap;
use metrics::Counter;
use rustc_hash::FxBuildHasher;

/// A token bucket refilled at `rate` per second, holding at most `rate` tokens.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let r = f64::from(rate);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * r).min(r);
        self.at = now;
    }

    fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: u32, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= f64::from(rate)
    }
}

/// Why a connection was not admitted; the text is the error the client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("ERR respguard: too many new connections, try again later (proxy.max_connections_per_second = {0})")]
    Global(u32),
    #[error("ERR respguard: too many new connections from {0}, try again later (proxy.max_connections_per_second_per_address = {1})")]
    Address(IpAddr, u32),
}

/// The connection-rate limits, shared by the listener.
#[derive(Debug)]
pub struct Admission {
    global_rate: u32,
    global: Mutex<Bucket>,
    address_rate: u32,
    addresses: DashMap<IpAddr, Bucket, FxBuildHasher>,
    max_addresses: usize,
    last_sweep: Mutex<Instant>,
    untracked: Counter,
}

impl Admission {
    /// Limits of `global_rate` and `address_rate` new connections per second (0: none),
    /// following at most `max_addresses` addresses.
    pub fn new(global_rate: u32, address_rate: u32, max_addresses: usize) -> Self {
        let now = Instant::now();
        Admission {
            global_rate,
            global: Mutex::new(Bucket::full(global_rate, now)),
            address_rate,
            addresses: DashMap::with_hasher(FxBuildHasher),
            max_addresses,
            last_sweep: Mutex::new(now),
            untracked: metrics::counter!("respguard_client_addresses_untracked_total"),
        }
    }

    /// Admit a new connection from `ip`, or say why not.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        if self.address_rate > 0 {
            self.admit_address(ip, now)?;
        }
        if self.global_rate > 0 {
            let mut g = self.global.lock().expect("admission lock");
            if !g.take(self.global_rate, now) {
                return Err(Refusal::Global(self.global_rate));
            }
        }
        Ok(())
    }

    fn admit_address(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let rate = self.address_rate;
        if let Some(mut b) = self.addresses.get_mut(&ip) {
            return if b.take(rate, now) {
                Ok(())
            } else {
                Err(Refusal::Address(ip, rate))
            };
        }
        if self.addresses.len() >= self.max_addresses {
            self.sweep(now);
            if self.addresses.len() >= self.max_addresses {
                self.untracked.increment(1);
                return Ok(());
            }
        }
        let mut b = Bucket::full(rate, now);
        b.take(rate, now);
        self.addresses.insert(ip, b);
        Ok(())
    }

    /// Drop addresses idle long enough for their bucket to be full again; at most once a
    /// second, so a full table costs one pass per second, not one per connection.
    fn sweep(&self, now: Instant) {
        {
            let mut last = self.last_sweep.lock().expect("sweep lock");
            if now.duration_since(*last).as_secs() < 1 {
                return;
            }
            *last = now;
        }
        let rate = self.address_rate;
        self.addresses.retain(|_, b| !b.is_full(rate, now));
    }

    /// Addresses followed now.
    pub fn tracked_addresses(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn each_address_gets_its_own_second_of_connections() {
        let a = Admission::new(0, 3, 100);
        for _ in 0..3 {
            a.admit(ip(1)).unwrap();
        }
        assert_eq!(a.admit(ip(1)), Err(Refusal::Address(ip(1), 3)));
        a.admit(ip(2)).unwrap();
    }

    #[test]
    fn the_global_limit_covers_every_address() {
        let a = Admission::new(5, 0, 100);
        for n in 0..5 {
            a.admit(ip(n)).unwrap();
        }
        assert_eq!(a.admit(ip(99)), Err(Refusal::Global(5)));
    }

    #[test]
    fn the_address_table_is_bounded() {
        let a = Admission::new(0, 10, 1000);
        for n in 0..100_000 {
            a.admit(ip(n)).unwrap();
        }
        assert!(a.tracked_addresses() <= 1000, "{}", a.tracked_addresses());
    }
}
