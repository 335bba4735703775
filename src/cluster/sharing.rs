//! A router on shared node connections ([`super::shared`], `upstream.connections =
//! "multiplexed"`): which commands may share, and the moves off them.
//!
//! A command that leaves state on its connection or waits on it (the command table's
//! [`Pinning`]: MULTI, WATCH, blocking commands, WAIT, subscriptions, AUTH, RESET, READONLY,
//! ASKING, every CLIENT subcommand but SETINFO and REPLY…) moves the client to connections
//! of its own for the rest of its life, as redis-cluster-proxy does; `HELLO 2|3` moves it to
//! the shared connections of that protocol. `SELECT` (Redis Cluster changes nothing with
//! it), `CLIENT SETINFO` (a library's name) and `CLIENT REPLY` (answered by the router)
//! stay. A move waits until every earlier command is answered (the command held, the
//! session not read meanwhile), so the node runs the client's commands in the order sent
//! even though the next ones take another connection; then the shared links close and the
//! state the client set so far (`HELLO`, `SELECT`, `CLIENT SETINFO`) is replayed on each
//! connection of its own as it opens.

use bytes::Bytes;

use super::args::Args;
use super::node::NodeLink;
use super::router::{Router, Sharing};
use crate::command::Pinning;
use crate::scanner::request::{Limits, RequestScanner, Step};

impl Router {
    /// Whether the command `raw` (read as `args`) moves the client off its shared
    /// connections while earlier commands are unanswered: then it is held (true), and
    /// the session is not read until it is sent ([`Self::resume_held`]). Moves at once
    /// when nothing is owed.
    pub(super) fn hold_to_move(&mut self, raw: &Bytes, args: Args<'_>) -> bool {
        if self.shared.is_none() {
            return false;
        }
        let to = self.sharing_of(args);
        if to == Sharing::Stay {
            return false;
        }
        if !self.entries.is_empty() {
            self.held = Some((raw.clone(), to));
            return true;
        }
        self.move_to(to);
        false
    }

    /// Every command before the held one is answered: move, and send it.
    pub(super) fn resume_held(&mut self) {
        let Some((raw, to)) = self.held.take() else {
            return;
        };
        self.move_to(to);
        let mut scanner = RequestScanner::new(Limits {
            stream_threshold: u64::MAX,
            max_buffered_command: usize::MAX,
            ..Limits::default()
        });
        if let Step::Command { .. } = scanner.scan(&raw) {
            let args = Args::new(&raw, scanner.args());
            self.on_command(raw.clone(), args);
        }
    }

    /// Where `args` take a client on shared connections.
    fn sharing_of(&self, args: Args<'_>) -> Sharing {
        let info = match args.get(0) {
            Some(name) => self.table.classify(name, || args.get(1)),
            None => return Sharing::Stay,
        };
        let blocking = || (1..args.len()).any(|i| &args.upper(i)[..] == b"BLOCK");
        match info.pinning {
            Pinning::Never => return Sharing::Stay,
            Pinning::WhenBlocking if !blocking() => return Sharing::Stay,
            _ => {}
        }
        let (name, sub) = (args.upper(0), args.upper(1));
        match (&name[..], &sub[..]) {
            // Refused, or answered by the router; or state Redis Cluster keeps none of
            // (SELECT 0 changes nothing, any other is refused) or that is no one else's
            // business (a library's name and version).
            (b"MONITOR" | b"SELECT", _) | (b"CLIENT", b"REPLY" | b"SETINFO") => Sharing::Stay,
            (b"HELLO", _) if args.len() == 1 => Sharing::Stay,
            (b"HELLO", version) if args.len() == 2 => match version {
                b"2" | b"3" => {
                    let protocol = version[0] - b'0';
                    if protocol == self.identity {
                        Sharing::Stay
                    } else if self.shared.as_ref().is_some_and(|s| s.shares(protocol)) {
                        Sharing::Protocol(protocol)
                    } else {
                        Sharing::Own
                    }
                }
                // Refused by Redis, changing nothing.
                _ => Sharing::Stay,
            },
            _ => Sharing::Own,
        }
    }

    /// Leave the shared connections used so far (nothing is owed on them): for those of
    /// another protocol, or for connections of its own.
    fn move_to(&mut self, to: Sharing) {
        match to {
            Sharing::Stay => return,
            Sharing::Protocol(protocol) => self.identity = protocol,
            Sharing::Own => {
                self.shared = None;
                metrics::counter!("respguard_cluster_clients_unshared_total").increment(1);
            }
        }
        for index in 0..self.links.len() {
            self.links[index] = None;
            self.expects[index].clear();
            self.readonly[index] = false;
        }
        // Replies still to come on the closed links (a hidden READONLY's) are dropped.
        self.link_nodes.clear();
    }

    /// A link for `address` on a shared connection, while the client uses them.
    pub(super) fn shared_link(&self, id: u64, address: &str) -> Option<NodeLink> {
        let shared = self.shared.as_ref()?;
        let link = shared.attach(address, self.identity, id, self.events_tx.clone())?;
        Some(NodeLink::shared(id, address.to_string(), link))
    }

    /// On shared connections, a client that let more replies wait than
    /// `proxy.output_buffer_hard` is let go, so that no shared connection waits for it.
    pub(super) fn check_slow(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        if self.out.len() > shared.settings().unread_hard && self.broken.is_none() {
            self.slow = true;
            self.broken =
                Some("the client let more replies wait than proxy.output_buffer_hard".into());
        }
    }
}
