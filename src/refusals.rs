//! Refusals counted by client, for the status report's "top refused clients": the first
//! place an operator looks when a guard starts refusing is who is being refused.
//!
//! Bounded: at most `capacity` clients are counted by name; refusals of further clients
//! are counted together as `other`, so a flood of new addresses cannot grow the map.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::identity::ClientIdentity;

/// Refusals per client (address without the port, user and name).
#[derive(Debug)]
pub struct RefusalTally {
    by_client: DashMap<Box<str>, u64>,
    capacity: usize,
    other: AtomicU64,
}

impl RefusalTally {
    /// A tally counting at most `capacity` clients by name.
    pub fn new(capacity: usize) -> Self {
        RefusalTally {
            by_client: DashMap::new(),
            capacity,
            other: AtomicU64::new(0),
        }
    }

    /// Count one refusal of `client`.
    pub fn record(&self, client: &ClientIdentity) {
        let mut key = client.peer.ip().to_string();
        if let Some(u) = &client.user {
            key.push_str(" user=");
            key.push_str(&String::from_utf8_lossy(u));
        }
        if let Some(n) = &client.name {
            key.push_str(" name=");
            key.push_str(&String::from_utf8_lossy(n));
        }
        if let Some(mut count) = self.by_client.get_mut(key.as_str()) {
            *count += 1;
        } else if self.by_client.len() < self.capacity {
            *self.by_client.entry(key.into_boxed_str()).or_insert(0) += 1;
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `n` clients refused most, most first (`other` included when it counts).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .by_client
            .iter()
            .map(|e| (e.key().to_string(), *e.value()))
            .collect();
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            all.push(("other".into(), other));
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Clients counted by name.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True when no client was refused.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty() && self.other.load(Ordering::Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str, user: Option<&'static str>) -> ClientIdentity {
        let mut c = ClientIdentity::new(format!("{ip}:5000").parse().unwrap());
        c.user = user.map(|u| bytes::Bytes::from_static(u.as_bytes()));
        c
    }

    #[test]
    fn the_most_refused_come_first_and_the_map_stays_bounded() {
        let t = RefusalTally::new(3);
        for _ in 0..5 {
            t.record(&client("10.0.0.1", Some("app")));
        }
        t.record(&client("10.0.0.2", None));
        t.record(&client("10.0.0.2", None));
        t.record(&client("10.0.0.3", None));
        for i in 0..100 {
            t.record(&client(&format!("10.1.0.{i}"), None));
        }
        assert_eq!(t.len(), 3, "at most three clients by name");
        assert_eq!(
            t.top(3),
            vec![
                ("other".to_string(), 100),
                ("10.0.0.1 user=app".to_string(), 5),
                ("10.0.0.2".to_string(), 2)
            ]
        );
    }
}
