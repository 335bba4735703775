//! `upstream.reply_timeout` on a router's connections of its own to the nodes: a node that
//! owes the router replies and sends nothing for that long has its link closed as lost,
//! so the commands it owes get the error (`no reply within …, upstream.reply_timeout`,
//! counted in `respguard_upstream_reply_timeouts_total`, as for one Redis) and the next
//! command to that node opens a new link. A node owing the reply of a blocking command or
//! WAIT, or carrying the client's subscriptions, is excused, as a session excuses one
//! Redis. Shared node connections apply the same limit themselves ([`super::shared`]).
//!
//! One deadline per router (a [`crate::alarm::Alarm`]), set while some link of its own
//! owes replies and set again for what is left when it passes, so a busy router touches
//! the timer once per `reply_timeout`, not once per reply, and waits on it without a timer
//! of its own per turn.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::read_stored;
use super::node::NodeEvent;
use super::router::{Expect, Router};
use crate::command::{Flags, Special};

impl Router {
    /// Note that node `index` showed progress now (a reply arrived, or it begins to owe).
    #[inline]
    pub(super) fn node_progress(&mut self, index: usize) {
        if self.reply_timeout.is_some() {
            self.progress[index] = Instant::now();
        }
    }

    /// Whether to wait for the silence check: set (at one `reply_timeout` from now) when
    /// some link of the router's own owes replies and none is set; cleared while the
    /// router does not take node replies (then the proxy is the one not reading).
    pub(super) fn arm_silence_check(&mut self, taking: bool) -> bool {
        let Some(timeout) = self.reply_timeout else {
            return false;
        };
        if !taking {
            self.silence_check.clear();
            return false;
        }
        if self.silence_check.deadline().is_none()
            && (0..self.links.len()).any(|i| self.owes_on_own(i))
        {
            self.silence_check.set(Instant::now() + timeout);
        }
        self.silence_check.deadline().is_some()
    }

    /// The deadline passed: the replies already read are taken first, then each link of
    /// the router's own silent for `reply_timeout` while owing replies (and not excused)
    /// is closed as lost; the deadline is re-armed for the others.
    pub(super) fn on_silence(&mut self, events: &mut mpsc::Receiver<NodeEvent>) {
        self.silence_check.clear();
        let Some(timeout) = self.reply_timeout else {
            return;
        };
        for _ in 0..super::router::EVENTS {
            match events.try_recv() {
                Ok(event) => self.on_event(event),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for index in 0..self.links.len() {
            if !self.owes_on_own(index) {
                continue;
            }
            let due = self.progress[index] + timeout;
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
            } else if !self.excused(index) {
                // Read only once silent that long: the commands owed are not looked at
                // while replies come.
                self.time_out(index, timeout);
            }
        }
        if let Some(next) = next {
            self.silence_check.set(next);
        }
        self.unpark();
        self.release();
    }

    /// Whether node `index`'s link is one of the router's own and owes replies.
    fn owes_on_own(&self, index: usize) -> bool {
        !self.expects[index].is_empty()
            && self.links[index].as_ref().is_some_and(|l| !l.is_shared())
    }

    /// Whether node `index` may stay silent: it carries the client's subscriptions, or
    /// owes the reply of a blocking command or WAIT.
    fn excused(&self, index: usize) -> bool {
        self.subscriptions.subscribed(index)
            || self.expects[index].iter().any(|expect| match *expect {
                Expect::Part { seq, part } => self
                    .part_command(seq, part)
                    .is_some_and(|command| self.waits(command)),
                Expect::Hidden | Expect::HiddenAuth => false,
                Expect::Confirmations { .. } | Expect::Unsubscriptions { .. } => false,
            })
    }

    /// The command of part `part` of entry `seq`, while it waits.
    fn part_command(&self, seq: u64, part: u16) -> Option<&Bytes> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        Some(&self.entries.get(i)?.parts.get(usize::from(part))?.command)
    }

    /// Whether `command` may wait on its node by design: a blocking command or WAIT (read
    /// only when a deadline passes, never per command).
    fn waits(&self, command: &Bytes) -> bool {
        read_stored(command, |args| {
            let Some(name) = args.get(0) else {
                return false;
            };
            let info = self.table.classify(name, || args.get(1));
            info.flags.contains(Flags::BLOCKING) || info.special == Special::Wait
        })
        .unwrap_or(false)
    }

    /// Close node `index`'s link as lost for its silence.
    fn time_out(&mut self, index: usize, timeout: std::time::Duration) {
        metrics::counter!("respguard_upstream_reply_timeouts_total").increment(1);
        let Some(link) = &self.links[index] else {
            return;
        };
        tracing::warn!(
            node = %link.address,
            "cluster node sent nothing for {timeout:?} while replies were owed \
             (upstream.reply_timeout); closing the connection"
        );
        // The link's task ends with it: what it would still say is never read.
        self.link_nodes.remove(&link.id);
        let reason = format!("no reply within {timeout:?}, upstream.reply_timeout");
        self.on_lost(index, &reason, true);
    }
}
