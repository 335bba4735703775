//! A router's `MONITOR` state, without I/O: whether the client monitors, which nodes'
//! links carry lines, the lines held until the `+OK` reaches the client, the output limit
//! a slow monitoring client is judged by, and how a line is told from a reply. What the
//! router does with it is [`super::monitor`]'s.

use std::time::Duration;

use bytes::BytesMut;

use crate::mux::UnreadLimit;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often a monitoring router checks that every node it should monitor is.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The timer of a monitoring router's checks ([`CHECK_EVERY`]); a late tick is not
/// caught up.
pub fn check_interval() -> Interval {
    let mut interval = tokio::time::interval(CHECK_EVERY);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// A router's MONITOR state.
#[derive(Debug, Default)]
pub struct Monitoring {
    /// The client's MONITOR was sent, and no RESET or QUIT since.
    pub(super) active: bool,
    /// The MONITOR entry, until it reaches the client: lines wait in `held` until then.
    pub(super) confirming: Option<u64>,
    pub(super) held: BytesMut,
    /// Nodes (by index) whose link carries lines: MONITOR sent, no `+RESET` since.
    pub(super) streaming: Vec<usize>,
    /// For each replica monitored (by index), its primary's address, whose lines (the
    /// replication link's) are left out.
    pub(super) replicas: Vec<(usize, String)>,
    /// QUIT read: lines are dropped from now.
    pub(super) quitting: bool,
    /// When the unread bytes went above the soft limit.
    pub(super) above_since: Option<Instant>,
    /// How much a monitoring client may leave unread (`proxy.output_buffer`…), judged as
    /// a lane judges its clients.
    pub(super) limit: UnreadLimit,
}

impl Monitoring {
    /// No monitoring yet; a slow monitoring client judged by `limit`.
    pub(super) fn new(limit: UnreadLimit) -> Self {
        Monitoring {
            limit,
            ..Monitoring::default()
        }
    }

    /// Whether the client monitors (lines may arrive).
    pub(super) fn is_active(&self) -> bool {
        self.active || !self.streaming.is_empty()
    }

    /// Node `index`'s link was lost: no line comes from it until it is monitored again.
    pub(super) fn forget_node(&mut self, index: usize) {
        self.streaming.retain(|&i| i != index);
        self.replicas.retain(|(i, _)| *i != index);
    }
}

/// Whether `reply` is a MONITOR line: a simple string starting with its time's digits (a
/// command's own status reply, `+OK`, `+PONG`, `+RESET`, never does).
pub(super) fn is_line(reply: &[u8]) -> bool {
    reply.first() == Some(&b'+') && reply.get(1).is_some_and(u8::is_ascii_digit)
}

/// The client address of a MONITOR line (`+<time> [<db> <addr>] "CMD" …`).
pub(super) fn line_client(line: &[u8]) -> Option<&[u8]> {
    let open = line.iter().position(|&b| b == b'[')?;
    let close = open + line[open..].iter().position(|&b| b == b']')?;
    let inside = &line[open + 1..close];
    let space = inside.iter().position(|&b| b == b' ')?;
    Some(&inside[space + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_from_status_replies() {
        assert!(is_line(
            b"+1700000000.123456 [0 127.0.0.1:5000] \"GET\" \"k\"\r\n"
        ));
        for reply in [
            &b"+OK\r\n"[..],
            b"+PONG\r\n",
            b"+RESET\r\n",
            b"$1\r\n1\r\n",
            b"-ERR x\r\n",
        ] {
            assert!(!is_line(reply), "{reply:?}");
        }
    }

    #[test]
    fn a_line_names_its_client() {
        let line = b"+1700000000.123456 [0 127.0.0.1:5000] \"SET\" \"[k]\" \"v\"\r\n";
        assert_eq!(line_client(line), Some(&b"127.0.0.1:5000"[..]));
        assert_eq!(
            line_client(b"+1700000000.1 [0 lua] \"GET\"\r\n"),
            Some(&b"lua"[..])
        );
        assert_eq!(line_client(b"+1\r\n"), None);
    }
}
