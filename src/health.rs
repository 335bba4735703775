//! Whether the upstream can serve, for `/readyz`: set by the memory monitor
//! ([`crate::monitor`]) after every poll, so `/readyz` follows Redis even when no client is
//! connected, without a connection of its own. A Redis that answers but is still loading its
//! dataset (`-LOADING`) is not ready, and `/readyz` says so rather than calling it silent.

use std::sync::atomic::{AtomicU8, Ordering};

/// What the monitor's last poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// No answer (unreachable, timed out, or an error other than `LOADING`).
    Silent = 0,
    /// It answered `-LOADING`: it is loading its dataset into memory.
    Loading = 1,
    /// It answered PING: it can serve.
    Up = 2,
}

impl Upstream {
    fn from_u8(v: u8) -> Upstream {
        match v {
            1 => Upstream::Loading,
            2 => Upstream::Up,
            _ => Upstream::Silent,
        }
    }

    /// Why the proxy is not ready, as `/readyz` says it (`None` when it is ready).
    pub fn not_ready_reason(self) -> Option<&'static str> {
        match self {
            Upstream::Up => None,
            Upstream::Loading => Some("upstream Redis is loading its dataset"),
            Upstream::Silent => Some("upstream not answering"),
        }
    }
}

/// Whether the upstream answered the monitor's last poll, and how.
#[derive(Debug)]
pub struct UpstreamHealth {
    state: AtomicU8,
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        UpstreamHealth {
            state: AtomicU8::new(Upstream::Silent as u8),
        }
    }
}

impl UpstreamHealth {
    /// True when the last poll was answered and Redis can serve.
    pub fn is_up(&self) -> bool {
        self.state() == Upstream::Up
    }

    /// What the last poll found.
    pub fn state(&self) -> Upstream {
        Upstream::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Record the outcome of a poll, logging changes.
    pub fn set(&self, state: Upstream) {
        if self.state.swap(state as u8, Ordering::Relaxed) != state as u8 {
            match state {
                Upstream::Up => tracing::info!("upstream is answering"),
                Upstream::Loading => tracing::warn!("upstream is loading its dataset"),
                Upstream::Silent => tracing::warn!("upstream is not answering"),
            }
        }
        let up = state == Upstream::Up;
        metrics::gauge!("respguard_upstream_up").set(if up { 1.0 } else { 0.0 });
    }
}
