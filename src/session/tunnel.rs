//! Replication through the proxy. A replica (or `redis-cli --rdb`) sends SYNC or PSYNC;
//! once Redis starts answering (`+FULLRESYNC`, `+CONTINUE`, the RDB's `$` header, or a
//! keep-alive newline before them) the connection carries an RDB with no trailing CRLF and
//! then the replication stream, which no reply scanner can follow. So from that byte on
//! the session is a plain tunnel both ways for the rest of its life: no scanning, no
//! guards, no reply timeout. Nothing the client sent after SYNC is scanned before Redis's
//! answer, so it reaches Redis, in order, either as commands (after an error) or through
//! the tunnel.
//!
//! The tunnel waits on the same event loop as the session (`Session::next_event`), with
//! its own interest: never the reply watchdog or the drain deadline. Never scans a byte.

use super::intercept::Intercept;
use super::upstream::Upstream;
use super::{End, Event, Interest, LaneWatch, Session};
use crate::config::Replication;
use crate::resp;
use crate::shutdown::ShutdownWait;

impl Session {
    /// SYNC or PSYNC arrived: forward it, or refuse it with `proxy.replication = "refuse"`.
    pub(super) fn on_sync(&self) -> Intercept {
        match self.shared.replication {
            Replication::Tunnel => Intercept::Pass,
            Replication::Refuse => Intercept::Answer(resp::error(
                "ERR respguard: SYNC and PSYNC are refused (proxy.replication = \"refuse\"); replicate from Redis directly",
            )),
        }
    }

    /// Redis began a replication stream: replies before it go to the client as scanned,
    /// and every byte not yet scanned, either way, passes through from now on.
    pub(super) fn start_tunnel(&mut self) {
        self.replies.pass_all();
        self.requests.pass_all();
        self.state.queue_mut().clear();
        self.watchdog.disarm();
        // The request scanner is done with this connection.
        self.ignore_input = true;
        self.tunnel = true;
        self.shared.metrics.replication_tunnels.increment(1);
        tracing::info!(client = %self.identity, "SYNC/PSYNC accepted by Redis: the connection is now a byte tunnel, unguarded (proxy.replication)");
    }

    /// Carry bytes both ways until either side closes (after what it sent is written to
    /// the other) or the proxy shuts down.
    pub(super) async fn run_tunnel(&mut self, stop: &mut ShutdownWait) -> End {
        if self.shutting_down {
            return End::Shutdown;
        }
        self.flush_upstream();
        self.flush_client();
        loop {
            if !self.upstream.is_connected() && self.replies.unwritten() == 0 {
                return End::UpstreamLost("replication stream closed by Redis".into());
            }
            if self.input_closed && self.requests.unwritten() == 0 {
                return End::ClientClosed;
            }
            let cap = self.shared.output_buffer;
            let interest = Interest {
                client_read: !self.input_closed && self.requests.unwritten() < cap,
                upstream_read: self.upstream.is_connected() && self.replies.unwritten() < cap,
                inbox: LaneWatch::Off,
                client_write: self.replies.unwritten() > 0 || self.client.wants_flush(),
                upstream_write: self
                    .upstream
                    .stream()
                    .is_some_and(|u| self.requests.unwritten() > 0 || u.wants_flush()),
                shutdown: true,
                drain: None,
                watchdog: false,
                // A replication stream: Redis's side is what comes next.
                client_first: false,
            };
            let event = self.next_event(interest, stop).await;
            if let Some(end) = self.on_tunnel_event(event) {
                return end;
            }
        }
    }

    fn on_tunnel_event(&mut self, event: Event) -> Option<End> {
        let metrics = &self.shared.metrics;
        match event {
            Event::ClientRead(Ok(0)) => self.input_closed = true,
            Event::ClientRead(Ok(n)) => {
                metrics.client_bytes_received.increment(n as u64);
                self.requests.pass(n);
                self.flush_upstream();
            }
            Event::UpstreamRead(Ok(0)) => self.upstream = Upstream::none(),
            Event::UpstreamRead(Ok(n)) => {
                metrics.upstream_bytes_received.increment(n as u64);
                self.replies.pass(n);
                self.flush_client();
            }
            Event::ClientWrote(Ok(n)) => {
                metrics.client_bytes_sent.increment(n as u64);
                self.replies.wrote(n);
            }
            Event::UpstreamWrote(Ok(n)) => {
                metrics.upstream_bytes_sent.increment(n as u64);
                self.requests.wrote(n);
            }
            Event::ClientRead(Err(e)) | Event::ClientWrote(Err(e)) => {
                return Some(End::ClientError(e))
            }
            Event::UpstreamRead(Err(e)) | Event::UpstreamWrote(Err(e)) => {
                return Some(End::UpstreamLost(e.to_string()))
            }
            // A replica reconnects on its own; its link is not drained like commands. (A
            // tunnel runs on a connection of its own: no shared connection's news.)
            Event::Shutdown | Event::DrainExpired | Event::WatchdogFired | Event::Inbox => {
                return Some(End::Shutdown)
            }
        }
        None
    }
}
