//! When a session is done, and how it ends: nothing left in flight or to write
//! (`finished`), draining after the client half-closed or shutdown began, clients that
//! must be closed at once (blocked, subscribed, monitoring), a Redis that stays silent
//! while it owes replies (the reply watchdog firing), and a Redis that went away.
//!
//! Never reads or writes a socket: the event loop flushes what is left.

use super::upstream::Upstream;
use super::watchdog::Silence;
use super::{End, Session, StreamTo};
use crate::command::{Flags, Special};
use crate::reply_queue::{Disposition, Effect};
use crate::resp;

impl Session {
    /// The watchdog's deadline passed. Redis has timed out if it still owes replies, has
    /// sent nothing for `reply_timeout` since the oldest of those commands was read, and
    /// nothing excuses the wait: a blocking command, WAIT, subscribed mode or MONITOR, a
    /// command still streaming to Redis, or a client too slow to take its replies (then the
    /// proxy is the one not reading). Otherwise the watchdog re-arms for what is left.
    pub(super) fn on_watchdog(&mut self) -> Option<End> {
        self.watchdog.disarm();
        let timeout = self.shared.reply_timeout?;
        let oldest_command_us = self.state.queue().iter().next()?.received_us;
        if !self.upstream.is_connected() {
            return None;
        }
        let table = &self.shared.table;
        let excused = self.streaming == Some(StreamTo::Upstream)
            || self.replies.unwritten() >= self.shared.output_buffer
            || self.must_close_at_once()
            || (self.state.queue().iter()).any(|p| table.by_id(p.command).special == Special::Wait);
        let silence = Silence {
            now_us: self.clock_us(),
            oldest_command_us,
            last_reply_us: self.replies_arrived_us,
            excused,
        };
        if !self.watchdog.fired(silence, timeout) {
            return None;
        }
        self.shared.metrics.upstream_reply_timeouts.increment(1);
        tracing::warn!(
            client = %self.identity,
            waiting = self.state.queue().len(),
            "upstream sent nothing for {timeout:?} while replies were owed (upstream.reply_timeout); closing the connection"
        );
        self.upstream_lost(&format!(
            "no reply within {timeout:?}, upstream.reply_timeout"
        ))
    }

    /// The session's work is done when nothing is in flight and nothing is left to write.
    pub(super) fn finished(&mut self) -> Option<End> {
        let replies_delivered = self.state.queue().is_empty() && self.replies.unwritten() == 0;
        if self.close_when_flushed && replies_delivered {
            // QUIT or malformed input: whatever follows is never read.
            return Some(End::Closed);
        }
        let idle = replies_delivered
            && !self.pin_pending
            && self.requests.unwritten() == 0
            && !self.requests.scanner().in_command();
        if self.shutting_down && idle {
            // Answer what the client already sent: only when its socket is empty is it
            // safe to close without cutting a command off. tokio's cached readiness can lag
            // behind the socket, so ask the kernel directly.
            return if self.client.has_unread_bytes() {
                None
            } else {
                Some(End::Shutdown)
            };
        }
        if self.draining.is_some() && idle {
            return Some(End::ClientClosed);
        }
        None
    }

    pub(super) fn start_draining(&mut self) {
        if self.draining.is_none() {
            self.draining = Some(tokio::time::Instant::now() + self.shared.drain_timeout);
        }
    }

    /// A client that leaves while blocked, subscribed or monitoring is gone for good: close
    /// the upstream at once so Redis frees the connection, as it would for a direct client.
    pub(super) fn must_close_at_once(&self) -> bool {
        let queue = self.state.queue();
        queue.is_subscribed()
            || queue.is_monitoring()
            || queue.iter().any(|p| {
                matches!(p.effect, Effect::Monitor)
                    || self
                        .shared
                        .table
                        .by_id(p.command)
                        .flags
                        .contains(Flags::BLOCKING)
            })
    }

    /// Redis went away mid-session: the commands still waiting get an error that says so,
    /// then the client connection closes, as it would if it had been connected to Redis.
    ///
    /// Behind Sentinel, where a lost connection is most often a failover, a client whose
    /// connection held nothing but the proxy's own handshake (no state left on it, nothing
    /// half sent or half received) keeps its connection to the proxy: its next command
    /// opens a connection to the primary in use then.
    ///
    /// Right after a CLIENT KILL's reply, Redis closing the connection is that command
    /// killing it: as a direct client, this one gets the replies Redis sent and then sees
    /// its connection close, the commands after it unanswered (`CLIENT KILL SKIPME no`).
    pub(super) fn upstream_lost(&mut self, reason: &str) -> Option<End> {
        self.upstream = Upstream::none();
        if self.close_when_flushed || (self.input_closed && self.state.queue().is_empty()) {
            self.flush_client();
            return Some(End::Closed);
        }
        let killed = self.last_reply_killed;
        if killed {
            tracing::info!(client = %self.identity, "upstream connection killed by the client's CLIENT KILL");
        } else {
            tracing::info!(client = %self.identity, reason, "upstream connection lost");
        }
        let mid_reply = self.reply_partly_sent;
        self.replies.move_ready();
        let address = self.shared.gate.address();
        if !mid_reply && !killed {
            let message = resp::error(&format!(
                "ERR respguard: upstream {address} connection lost before the reply ({reason})"
            ));
            self.answer_lost(&message, u32::MAX);
        }
        if !mid_reply && !killed && self.may_replace_upstream() {
            // Nothing of the lost connection may reach the next one: commands not written
            // yet were answered with the error above, a reply cut off is dropped.
            drop(self.requests.take_output());
            self.replies.forget_unready();
            self.reply_forwarded = None;
            self.watchdog.disarm();
            self.upstream = Upstream::Missing {
                error: format!(
                    "ERR respguard: upstream {address} connection lost ({reason}); reconnecting"
                ),
            };
            return None;
        }
        self.ignore_input = true;
        self.close_when_flushed = true;
        // Give the client its errors; the run loop closes once they are written.
        self.state.queue_mut().clear();
        None
    }

    /// Whether the lost connection can be replaced without the client noticing anything but
    /// the errors of its commands in flight: behind Sentinel, with no lasting connection
    /// state sent, none held now (a transaction, a watched key, a subscription ...), and
    /// nothing half done.
    fn may_replace_upstream(&self) -> bool {
        self.shared.gate.follows_sentinel()
            && self.pinned
            && !self.lasting_state
            && self.state.holds_nothing()
            && !self.tunnel
            && !self.input_closed
            && self.streaming.is_none()
            && self.after_stream.is_empty()
            && !self.pin_pending
            && self.state.queue().is_empty()
    }

    /// Redis's connection was lost before the replies of the oldest `replies` commands
    /// waiting for it (`u32::MAX`: all of them): each gets `error`, oldest first. A local
    /// answer among them still goes out in its place; a hidden command's reply is simply
    /// never coming; a lost access probe leaves the guards as before it was sent.
    pub(super) fn answer_lost(&mut self, error: &[u8], mut replies: u32) {
        self.replies.move_ready();
        while replies > 0 {
            let Some(p) = self.state.queue_mut().pop_front() else {
                break;
            };
            match p.disposition {
                Disposition::Local(b) => {
                    self.replies.send(&b);
                    continue;
                }
                Disposition::Forward | Disposition::FilterExec(_) => self.replies.send(error),
                Disposition::Hide => {}
            }
            if p.effect == Effect::AccessProbe {
                self.probing = false;
                self.waiting_for_probe = false;
            }
            replies -= 1;
        }
    }
}
