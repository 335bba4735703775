//! A router on shared node connections ([`super::shared`], `upstream.connections =
//! "multiplexed"`): which commands may share, and the moves off them and back.
//!
//! A command that leaves state on its connection or waits on it (the command table's
//! [`Pinning`], the one the single-Redis multiplexing reads) moves the client to
//! connections of its own:
//! - **while the state lasts** ([`Pinning::WhileInUse`], and `XREAD … BLOCK`): MULTI until
//!   EXEC or DISCARD, WATCH until EXEC, DISCARD or UNWATCH, a blocking command or WAIT until
//!   answered, subscriptions until no node holds one (the counts of each node's last
//!   confirmation, [`super::subscriptions`]), and a `CLIENT SETNAME` Redis refuses;
//!   then, once every command is answered, its own connections close and it goes back to
//!   the shared connections of its protocol ([`Router::return_to_shared`]);
//! - **for the rest of its life** ([`Pinning::ForLife`]: RESET, READONLY, READWRITE,
//!   ASKING, `HELLO` with `SETNAME`, CLIENT subcommands but SETINFO, REPLY, SETNAME and
//!   GETNAME…), sent on shared connections or on its own; and `AUTH` past
//!   `upstream.shared_identities`, or sent on connections of its own.
//!
//! `AUTH [user] password` and `HELLO 2|3 AUTH user password` on shared connections move
//! the client to the shared connections of that user's identity instead
//! ([`super::identity`]), where Redis checks the password.
//!
//! On shared connections `CLIENT SETNAME` (a name Redis accepts), `GETNAME` and `CLIENT
//! SETINFO` (a library's name or version Redis accepts) are answered by the router
//! ([`Router::name_kept_here`]): they are the client's state, given to each connection of
//! its own, never to a shared one, where another client would see them; so is `QUIT`
//! (Redis would close a connection others use). `HELLO 2|3` alone moves it to the shared
//! connections of that protocol (or, when that protocol does not share, to its own until
//! it speaks one that does). `SELECT` (Redis Cluster changes nothing with it) and `CLIENT
//! REPLY` (answered by the router) stay.
//!
//! A client on connections of its own holds one place under `upstream.pinned_connections`
//! ([`PinnedLimit`](crate::mux::pinned::PinnedLimit), shared with every router), however
//! many nodes it then uses: counted per node, a client holding one place could wait for
//! another in the middle of its state, and two such clients for each other's. A move waits
//! up to `upstream.connect_timeout` for a place, else the held command (and those already
//! read after it) gets the limit's error and the client stays on shared connections, as a
//! single Redis's multiplexed client does.
//! A move waits until every earlier command is answered (the command held, the session not
//! read meanwhile), so the node runs the client's commands in the order sent even though
//! the next ones take another connection; then the shared links close and the state the
//! client set so far (`HELLO`, `CLIENT SETNAME`, `CLIENT SETINFO`) is replayed on each
//! connection of its own as it opens. A return needs nothing owed either: every reply is
//! in the router, in order, before the links it came on close.

use std::sync::Arc;

use bytes::Bytes;

use super::args::{read_stored, Args};
use super::node::NodeLink;
use super::router::{PlaceWait, Router, Sharing};
use crate::command::{Pinning, Special};
use crate::mux::pinned::{PinnedError, PinnedPermit};
use crate::mux::LaneIdentity;
use crate::resp;

impl Router {
    /// Whether the command `raw` (read as `args`) moves the client off its shared
    /// connections while earlier commands are unanswered: then it is held (true), and
    /// the session is not read until it is sent ([`Self::resume_held`]). Moves at once
    /// when nothing is owed. On connections of its own for a while, a command whose state
    /// lasts for the connection's life keeps the client there for good.
    pub(super) fn hold_to_move(&mut self, raw: &Bytes, args: Args<'_>) -> bool {
        if self.shared.is_none() {
            if self.home.is_some() && self.sharing_of(args) == Sharing::ForLife {
                self.stay_for_life();
            }
            return false;
        }
        let to = self.sharing_of(args);
        if to == Sharing::Stay {
            return false;
        }
        if !self.entries.is_empty() || !self.has_place_for(&to) {
            self.held = Some((raw.clone(), to));
            return true;
        }
        self.move_to(to);
        false
    }

    /// Whether a move to `to` may happen now as far as `upstream.pinned_connections` goes:
    /// one to connections of its own needs the client's place (one, however many nodes it
    /// then uses), taken now if one is free.
    fn has_place_for(&mut self, to: &Sharing) -> bool {
        if !matches!(to, Sharing::WhileInUse | Sharing::ForLife) || self.place.is_some() {
            return true;
        }
        self.place = self.shared.as_ref().and_then(|s| s.pinned().try_take());
        self.place.is_some()
    }

    /// Every command before the held one is answered: `None` when it may move now, else
    /// the wait for a place (every place is taken), which ends in [`Self::on_place`].
    pub(super) fn place_for_held(&mut self) -> Option<PlaceWait> {
        let to = self.held.as_ref()?.1.clone();
        if self.has_place_for(&to) {
            return None;
        }
        let shared = Arc::clone(self.shared.as_ref()?);
        Some(Box::pin(async move { shared.pinned().take().await }))
    }

    /// The wait for a place ended: with one, the held command moves the client and is
    /// sent; without (`upstream.connect_timeout` passed), it gets the limit's error, and
    /// so do the commands already read after it, the client staying on shared
    /// connections, as a single Redis's multiplexed client does.
    pub(super) fn on_place(&mut self, placed: Result<PinnedPermit, PinnedError>) {
        match placed {
            Ok(place) => {
                self.place = Some(place);
                self.resume_held();
            }
            Err(e) => {
                if self.held.take().is_none() {
                    return;
                }
                tracing::info!(error = %e, "no connections of its own for the cluster client");
                let error = resp::error(&format!("ERR respguard: {e}"));
                self.refusing = Some(error.clone());
                let silent = self.next_silent();
                self.answer(error, silent);
            }
        }
    }

    /// Every command before the held one is answered: move, and send it.
    pub(super) fn resume_held(&mut self) {
        let Some((raw, to)) = self.held.take() else {
            return;
        };
        self.move_to(to);
        read_stored(&raw, |args| self.on_command(raw.clone(), args));
    }

    /// On shared connections, `CLIENT SETNAME` with a name Redis accepts and `CLIENT
    /// GETNAME` are answered by the router as Redis would (`+OK`; the name, or null), the
    /// name kept as the client's state and given to each connection of its own, so a
    /// client library naming its connection takes none. True when answered.
    pub(super) fn name_kept_here(&mut self, raw: &Bytes, args: Args<'_>, silent: bool) -> bool {
        if self.shared.is_none() || self.sharing_of(args) != Sharing::Stay {
            return false;
        }
        let key = b"CLIENT SETNAME".to_vec();
        match &args.upper(1)[..] {
            b"SETNAME" => {
                let _ = self.record_state(key, raw.clone());
                self.answer(resp::simple("OK"), silent);
                return true;
            }
            // As the name: kept under the key a connection of its own replays it by.
            b"SETINFO" if self.knows_setinfo() => {
                let key = [&b"CLIENT SETINFO "[..], &args.upper(2)].concat();
                let _ = self.record_state(key, raw.clone());
                self.answer(resp::simple("OK"), silent);
                return true;
            }
            b"GETNAME" => {}
            _ => return false,
        }
        let name = self
            .state
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, command)| name_of(command))
            .filter(|name| !name.is_empty());
        let reply = match name {
            Some(name) => resp::bulk_reply(&name),
            None if self.protocol >= 3 => Bytes::from_static(b"_\r\n"),
            None => Bytes::from_static(b"$-1\r\n"),
        };
        self.answer(reply, silent);
        true
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
        if let Some(to) = self.user_sharing(args) {
            return to;
        }
        let (name, sub) = (args.upper(0), args.upper(1));
        match (&name[..], &sub[..]) {
            // Behind Sentinel a database is the connection's for good: shared ones stay
            // in the URL's.
            (b"SELECT", _) if !self.view.is_sharded() => Sharing::ForLife,
            // Refused, or answered by the router; or state Redis Cluster keeps none of
            // (SELECT 0 changes nothing, any other is refused) or that is no one else's
            // business (a library's name and version).
            (b"SELECT", _) | (b"CLIENT", b"REPLY") => Sharing::Stay,
            // The router answers (Redis would close a connection others use).
            (b"QUIT", _) if self.shared.is_some() => Sharing::Stay,
            // A library's name and version, kept like the name ([`Self::name_kept_here`]);
            // one Redis refuses goes to a connection of its own, where Redis says why.
            // Where Redis knows no SETINFO (before 7.2) it refuses it on any connection,
            // changing nothing.
            (b"CLIENT", b"SETINFO")
                if self.shared.is_none() || settable_info(args) || !self.knows_setinfo() =>
            {
                Sharing::Stay
            }
            (b"CLIENT", b"SETINFO") => Sharing::WhileInUse,
            // The router keeps the name and gives it to each connection of its own: on
            // shared connections it answers them ([`Self::name_kept_here`]); a name Redis
            // refuses goes to a connection of its own, where Redis says why.
            (b"CLIENT", b"SETNAME") if self.shared.is_some() && settable_name(args) => {
                Sharing::Stay
            }
            (b"CLIENT", b"GETNAME") if self.shared.is_some() && args.len() == 2 => Sharing::Stay,
            (b"CLIENT", b"SETNAME" | b"GETNAME") => Sharing::WhileInUse,
            (b"HELLO", _) if args.len() == 1 => Sharing::Stay,
            (b"HELLO", version) if args.len() == 2 => match version {
                b"2" | b"3" => {
                    let target = LaneIdentity {
                        protocol: version[0] - b'0',
                        ..self.identity.clone()
                    };
                    let pools = self.shared.as_ref().or(self.home.as_ref());
                    if target == self.identity && self.shared.is_some() {
                        Sharing::Stay
                    } else if pools.is_some_and(|s| s.admit(&target)) {
                        Sharing::Identity(target)
                    } else {
                        // Back once it speaks a protocol that shares.
                        Sharing::WhileInUse
                    }
                }
                // Refused by Redis, changing nothing.
                _ => Sharing::Stay,
            },
            _ if info.pinning == Pinning::ForLife => Sharing::ForLife,
            _ => Sharing::WhileInUse,
        }
    }

    /// Whether the nodes know `CLIENT SETINFO` (Redis 7.2 and later, Valkey).
    fn knows_setinfo(&self) -> bool {
        self.table.classify(b"CLIENT", || Some(b"SETINFO")).special == Special::ClientSetInfo
    }

    /// Leave the shared connections used so far (nothing is owed on them): for those of
    /// another identity (another user's until Redis accepts it), or for connections of its
    /// own (for a while, or for good).
    fn move_to(&mut self, to: Sharing) {
        match to {
            Sharing::Stay => return,
            Sharing::Identity(target) => self.take_identity(target),
            Sharing::WhileInUse | Sharing::ForLife => {
                let shared = self.shared.take();
                self.home = shared.filter(|_| to == Sharing::WhileInUse);
                metrics::counter!("respguard_cluster_clients_unshared_total").increment(1);
            }
        }
        self.close_links();
    }

    /// Close every node link (nothing is owed on them but hidden replies, which are
    /// dropped): the next command opens the links its place calls for.
    pub(super) fn close_links(&mut self) {
        for index in 0..self.links.len() {
            self.links[index] = None;
            self.expects[index].clear();
            self.readonly[index] = false;
        }
        // Replies still to come on the closed links (a hidden READONLY's) are dropped.
        self.link_nodes.clear();
    }

    /// A command whose state lasts for the connection's life was sent on the client's own
    /// connections: it keeps them.
    fn stay_for_life(&mut self) {
        self.home = None;
    }

    /// Whether a client on connections of its own for a while may go back to shared
    /// ones: its state ended (no transaction, watched key, subscription, blocking command),
    /// every command is answered and nothing is held, and its protocol shares. A
    /// subscription command is answered once its confirmations are in, and the last ones
    /// say what each node still holds (`Subscriptions`): no node holds any.
    pub(super) fn ready_to_return(&self) -> bool {
        let Some(home) = &self.home else {
            return false;
        };
        self.entries.is_empty()
            && self.held.is_none()
            && self.transaction.is_none()
            && self.watch_node.is_none()
            && self.subscriptions.first_subscribed().is_none()
            && self.broken.is_none()
            && home.admit(&LaneIdentity {
                protocol: self.protocol,
                ..self.identity.clone()
            })
    }

    /// Back to the shared connections of the client's user and protocol: its own
    /// connections close (they owe it nothing), and its next command takes a shared one.
    pub(super) fn return_to_shared(&mut self) {
        self.hand_back_links();
        self.identity.protocol = self.protocol;
        self.shared = self.home.take();
        self.place = None;
        self.close_links();
        metrics::counter!("respguard_cluster_clients_reshared_total").increment(1);
        tracing::debug!("cluster client back on shared node connections");
    }

    /// Going back to shared connections: each connection of the client's own left as a
    /// new one of its user and protocol is (nothing owed, not READONLY, no state given but
    /// `HELLO`) is handed back for the next client (`upstream.pinned_idle`); the others
    /// close with [`Self::close_links`].
    fn hand_back_links(&mut self) {
        let plain = |key: &Vec<u8>| matches!(&key[..], b"AUTH" | b"HELLO");
        if !self.state.iter().all(|(key, _)| plain(key)) {
            return;
        }
        let identity = self.own_identity();
        for index in 0..self.links.len() {
            if self.readonly[index] || !self.expects[index].is_empty() {
                continue;
            }
            if let Some(link) = self.links[index].take() {
                link.hand_back(identity.clone());
            }
        }
    }

    /// A link for `address` on a shared connection, while the client uses them.
    pub(super) fn shared_link(&self, id: u64, address: &str) -> Option<NodeLink> {
        let shared = self.shared.as_ref()?;
        let link = shared.attach(address, &self.identity, id, self.events_tx.clone())?;
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

/// Whether `CLIENT SETNAME`'s `args` name one Redis accepts: exactly one name, printable
/// ASCII without spaces, or empty (which removes it).
fn settable_name(args: Args<'_>) -> bool {
    args.len() == 3
        && args
            .get(2)
            .is_some_and(|n| n.iter().all(|b| (b'!'..=b'~').contains(b)))
}

/// Whether `CLIENT SETINFO`'s `args` set an attribute Redis accepts: `LIB-NAME` or
/// `LIB-VER` (any case) and one value of printable ASCII without spaces, or empty.
fn settable_info(args: Args<'_>) -> bool {
    args.len() == 4
        && matches!(&args.upper(2)[..], b"LIB-NAME" | b"LIB-VER")
        && args
            .get(3)
            .is_some_and(|v| v.iter().all(|b| (b'!'..=b'~').contains(b)))
}

/// The name a recorded `CLIENT SETNAME` command gives.
fn name_of(command: &Bytes) -> Option<Vec<u8>> {
    read_stored(command, |args| args.get(2).map(<[u8]>::to_vec)).flatten()
}
