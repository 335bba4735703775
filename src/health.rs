//! Whether the upstream answers, for `/readyz`: set by the memory monitor
//! ([`crate::monitor`]) after every poll, so `/readyz` follows Redis even when no client is
//! connected, without a connection of its own.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the upstream answered the monitor's last poll.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    up: AtomicBool,
}

impl UpstreamHealth {
    /// True when the last poll was answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Record the outcome of a poll, logging changes.
    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("upstream is answering");
            } else {
                tracing::warn!("upstream is not answering");
            }
        }
        metrics::gauge!("respguard_upstream_up").set(if up { 1.0 } else { 0.0 });
    }
}
