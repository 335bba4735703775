//! Reply watches: how a guard that let a command through sees the reply to it.
//!
//! A guard asks for the reply from its check ([`super::CommandView::watch_reply`]) with a
//! [`ReplyWatch`]: a shared reference to something of its own that implements
//! [`ReplyWatcher`]. The session carries the watch with the command's place in the reply
//! queue and, when Redis's reply (not an error) arrives, calls [`ReplyWatch::on_reply`].
//! The watch holds the guard's state itself, not the guard, so a reply arriving after the
//! guards were rebuilt by a reload still reaches the state that asked for it.
//!
//! Never touches a socket, never blocks, never allocates: making a watch clones an `Arc`.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use crate::scanner::reply::ReplyInfo;

/// What a guard's watch does with the reply it asked for.
pub trait ReplyWatcher: Send + Sync + fmt::Debug {
    /// The reply to the watched command arrived and is not an error. Must be cheap: it runs
    /// on the session's reply path. Of several integer replies to one watch that arrive
    /// together, in a row, only the last is handed over (the session does not read the
    /// others' values): what a watcher records must be a value the newest reply replaces,
    /// such as a queue's length, never a count of replies.
    fn on_reply(&self, reply: &ReplyInfo);
}

/// A guard's request to see one command's reply, carried by the reply queue until it
/// arrives. Two words; cloning it clones an `Arc`.
#[derive(Clone)]
pub struct ReplyWatch(Arc<dyn ReplyWatcher>);

impl ReplyWatch {
    /// A watch calling `watcher` with the reply.
    #[inline]
    pub fn new(watcher: Arc<dyn ReplyWatcher>) -> Self {
        ReplyWatch(watcher)
    }

    /// The reply arrived (not an error): hand it to the watcher.
    #[inline]
    pub fn on_reply(&self, reply: &ReplyInfo) {
        self.0.on_reply(reply);
    }
}

impl PartialEq for ReplyWatch {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ReplyWatch {}

impl fmt::Debug for ReplyWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyWatch({:?})", self.0)
    }
}

/// Where a guard's check leaves its [`ReplyWatch`] for the engine to collect: the view of a
/// command is shared with every guard of the chain, so the slot is a cell.
#[derive(Default)]
pub struct WatchSlot(Cell<Option<ReplyWatch>>);

impl WatchSlot {
    /// Ask for the reply (a later request replaces an earlier one).
    #[inline]
    pub fn set(&self, watch: ReplyWatch) {
        self.0.set(Some(watch));
    }

    /// The watch asked for, if any, leaving the slot empty.
    #[inline]
    pub fn take(&self) -> Option<ReplyWatch> {
        self.0.take()
    }
}

impl fmt::Debug for WatchSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watch = self.0.take();
        let result = f.debug_tuple("WatchSlot").field(&watch).finish();
        self.0.set(watch);
        result
    }
}
