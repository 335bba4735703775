//! The request loop: every whole command in the request pipe, in order, taken by a run of
//! commands read in one step (`run::forward_run`) or scanned and handed to `verdicts`;
//! the rest of a command too large to hold, streamed to Redis or discarded
//! as it arrives; malformed input, answered and closed as Redis does.
//!
//! Never judges a command itself, and never writes to a socket (the event loop flushes).

use super::run::Run;
use super::{Session, StreamTo};
use crate::clock;
use crate::pipeline::Span;
use crate::reply_queue::Pending;
use crate::resp;
use crate::scanner::request::{Step, StreamStep};

impl Session {
    /// Scan and route every whole command in the request buffer.
    pub(super) fn on_client_input(&mut self) {
        if self.has_requests_to_judge() {
            self.judge_input();
        }
        // One shared-counter update per read, not per command.
        if self.commands_in_batch > 0 {
            self.shared
                .metrics
                .commands
                .increment(self.commands_in_batch);
            self.commands_in_batch = 0;
        }
    }

    /// Whether the request loop has anything to act on: bytes read and not yet sent, a
    /// command streaming, an identity switch to settle, or reads held until an identity
    /// change is answered (the loop lets them go). Once replies arrive (the session carries
    /// on with what it read) most often none, and the loop's entry, about 200 instructions
    /// per unpipelined command, is not paid for nothing.
    #[inline]
    fn has_requests_to_judge(&self) -> bool {
        !self.requests.input().is_empty()
            || self.streaming.is_some()
            || self.switch.is_some()
            || self.state.identity_pending()
    }

    /// The request loop over what the request buffer holds.
    fn judge_input(&mut self) {
        // The commands at hand are judged at one instant: guards' clocks read the system's
        // once, not once per command (see `clock`).
        let _read = clock::ReadTime::enter();
        loop {
            if self.ignore_input
                || self.pin_pending
                || self.waiting_for_probe
                || self.connect_for_auth
                || self.state.queue().awaits_replication()
            {
                break;
            }
            if self.state.holds_for_identity() {
                break;
            }
            self.settle_switch();
            if let Some(to) = self.streaming {
                if self.continue_stream(to) {
                    continue;
                }
                break;
            }
            if self.state.queue().is_full() {
                break;
            }
            // Commands read in one step go through a run; the general scan below takes
            // what a run leaves.
            match self.forward_run() {
                Run::Decided => continue,
                Run::Forwarded(n) if n > 0 && self.state.queue().is_full() => break,
                Run::Forwarded(_) => {}
            }
            let (scanner, input) = self.requests.scan_parts();
            match scanner.scan(input) {
                Step::Incomplete => break,
                Step::Empty { end } => self.requests.ready_upto(end),
                Step::Command { start, end, inline } => {
                    let argc = self.requests.scanner().args().len();
                    self.on_command(Span::whole(start, end, inline, argc))
                }
                Step::Streaming {
                    start,
                    head_end,
                    argc,
                    next_len,
                } => self.on_streamed_head(Span::streamed_head(
                    start,
                    head_end,
                    argc as usize,
                    next_len,
                )),
                Step::Error(e) => {
                    self.protocol_error(&e.to_string());
                    break;
                }
            }
        }
        self.requests.move_ready();
    }

    /// Carry on with the rest of a streamed command, to Redis or nowhere. True once the
    /// command has ended (and the guard's extra commands for it are sent).
    fn continue_stream(&mut self, to: StreamTo) -> bool {
        let from = self.requests.ready();
        let (scanner, input) = self.requests.scan_parts();
        let (n, done) = match scanner.stream(input, from) {
            StreamStep::More(n) => (n, false),
            StreamStep::Done(n) => (n, true),
            StreamStep::Error(e) => {
                self.protocol_error(&e.to_string());
                return false;
            }
        };
        match to {
            StreamTo::Upstream => self.requests.add_ready(n),
            StreamTo::Discard => self.requests.discard(n),
        }
        if !done {
            return false;
        }
        self.streaming = None;
        if self.after_stream_hidden > 0 {
            // A guard's extra commands follow the streamed command they belong to.
            self.requests.send(&self.after_stream);
            self.after_stream.clear();
            let n = std::mem::take(&mut self.after_stream_hidden);
            self.state.expect_hidden(n);
        }
        true
    }

    /// Malformed input: Redis answers the error and closes the connection.
    pub(super) fn protocol_error(&mut self, message: &str) {
        tracing::debug!(client = %self.identity, error = message, "protocol error from client");
        self.shared.metrics.client_protocol_errors.increment(1);
        self.requests.move_ready();
        let id = self.shared.table.unknown().id;
        self.state
            .queue_mut()
            .push(Pending::local(id, resp::error(&format!("ERR {message}"))));
        self.emit_local_replies();
        self.ignore_input = true;
        self.close_when_flushed = true;
    }
}
