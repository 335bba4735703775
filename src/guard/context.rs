//! The state guards share with the rest of the proxy, made once per proxy and kept across
//! reloads: the memory pressure the monitor writes and the shed guard reads (and the session
//! marks stale), the queue depths, the enqueue guard's memory. Never decides anything.

use std::sync::Arc;

use super::enqueue;
use super::queue::QueueDepths;
use super::script_catalog::ScriptCatalog;
use crate::config::RawGuards;
use crate::pressure::{MemoryPressure, Thresholds};

/// The state guards share with the rest of the proxy: the memory monitor's readings and the
/// queue depths. Created once per proxy; guards built again keep using the same state.
#[derive(Debug, Clone)]
pub struct GuardContext {
    /// Redis memory pressure, written by the monitor.
    pub pressure: Arc<MemoryPressure>,
    /// Depths of followed queues.
    pub queues: Arc<QueueDepths>,
    /// What the enqueue guard remembers of recent jobs.
    pub enqueue: Arc<enqueue::EnqueueMemory>,
    /// The scripts and functions whose source the shed guard has seen.
    pub scripts: Arc<ScriptCatalog>,
}

impl GuardContext {
    /// A context for `raw`'s settings.
    pub fn new(raw: &RawGuards) -> Self {
        let s = &raw.shed;
        GuardContext {
            pressure: Arc::new(MemoryPressure::new(Thresholds::new(
                s.soft_enter,
                s.soft_exit,
                s.hard_enter,
                s.hard_exit,
            ))),
            queues: Arc::new(QueueDepths::from_config(&raw.queue)),
            enqueue: Arc::new(enqueue::EnqueueMemory::new(&raw.enqueue)),
            scripts: Arc::new(ScriptCatalog::new()),
        }
    }
}
