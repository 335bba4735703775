//! The ACL user a multiplexed client runs as in front of a cluster (`upstream.connections =
//! "multiplexed"`): which node connections carry its commands after `AUTH`.
//!
//! A client starts as the URL's user, on the shared connections of the URL's identity
//! ([`SharedNodes::home`]). `AUTH [user] password` or `HELLO 2|3 AUTH user password` on
//! shared connections names an identity ([`LaneIdentity`]: the user with its password, and
//! the protocol; the URL's own credentials name the URL's): the client moves to that
//! identity's shared connections, each opened with those credentials and checked before it
//! carries a command ([`super::shared`]), up to `upstream.shared_identities` identities
//! (past it, to connections of its own for good, as before). Redis checks the password on
//! the identity's connection to the client's default node: the `AUTH` is sent there, and
//! the client's next commands wait, unread, until Redis answers
//! ([`Router::settle_identity`]):
//! - accepted, the client stays: its commands run as that user;
//! - refused (`-WRONGPASS …`, whether by the connection's own `AUTH` or by the client's),
//!   the client gets Redis's bytes and goes back to the identity it had, as a connection
//!   whose `AUTH` failed stays authenticated as before.
//!
//! `AUTH` with the identity in use stays on its connections, where Redis checks it again
//! and a refusal changes nothing; an `AUTH` whose argument count Redis refuses, and a
//! `HELLO` with a version Redis refuses, change nothing either and stay.
//!
//! The client's connections of its own (while a transaction, a subscription … lasts, or for
//! good) are given its user with a checked `AUTH` when they open ([`Router::own_handshake`]:
//! refused, each command sent there gets Redis's refusal), rather than the client's `AUTH`
//! replayed unchecked; an `AUTH` sent there moves that user once Redis accepts it. So no
//! command runs as a user the client did not authenticate as. `RESET` returns to the URL's
//! user, as the connections its `RESET` reached use Redis's `default` user.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::args::{read_stored, Args};
use super::node::{Handshake, NodeLink, Reuse};
use super::router::{Expect, Router, Sharing, Verification};
use super::shared::SharedNodes;
use crate::mux::{LaneIdentity, LaneUser};
use crate::resp;

impl Router {
    /// Where `AUTH` or `HELLO … AUTH` take a client on shared connections (see the module
    /// doc); `None` for any other command, and for a `HELLO` the router's general rules
    /// take (with `SETNAME`: connections of its own for good).
    pub(super) fn user_sharing(&self, args: Args<'_>) -> Option<Sharing> {
        let shared = self.shared.as_ref()?;
        let (protocol, user) = match &args.upper(0)[..] {
            b"AUTH" => match LaneUser::from_auth_args(&args.to_vec()[1..]) {
                Some(user) => (self.identity.protocol, user),
                // Refused by Redis for its argument count, changing nothing.
                None => return Some(Sharing::Stay),
            },
            b"HELLO" if args.len() > 2 && !matches!(args.get(1), Some(b"2" | b"3")) => {
                // A version Redis refuses before reading any option, changing nothing.
                return Some(Sharing::Stay);
            }
            b"HELLO" => hello_auth(args)?,
            _ => return None,
        };
        let target = LaneIdentity {
            user: self.user_of(user),
            db: 0,
            protocol,
        };
        Some(if target == self.identity {
            Sharing::Stay
        } else if shared.admit(&target) {
            Sharing::Identity(target)
        } else {
            tracing::debug!(
                "upstream.shared_identities reached: this cluster client keeps connections of \
                 its own"
            );
            Sharing::ForLife
        })
    }

    /// Use the shared connections of `target` from now on (the links are closed next); a
    /// move to another user waits for Redis's answer to the `AUTH` that asks for it.
    pub(super) fn take_identity(&mut self, target: LaneIdentity) {
        let previous = std::mem::replace(&mut self.identity, target);
        if previous.user != self.identity.user {
            self.verifying = Some(Verification {
                previous,
                confirmed: false,
                moved: true,
            });
        }
    }

    /// A state command `key` (`raw`) is about to be sent: an `AUTH` (or `HELLO … AUTH`)
    /// makes the client's next commands wait for Redis's answer (and every other node's),
    /// so that each runs as the user that answer leaves it (a connection of its own opened
    /// meanwhile would be given the user in force).
    pub(super) fn verify_if_auth(&mut self, key: &[u8], raw: &Bytes) {
        if self.verifying.is_some() || user_in(key, raw).is_none() {
            return;
        }
        self.verifying = Some(Verification {
            previous: self.identity.clone(),
            confirmed: false,
            moved: false,
        });
    }

    /// Redis answered the state command `key` (`raw`), `refused` or not: an accepted
    /// `AUTH` (or `HELLO … AUTH`) makes its user the client's, given to each connection
    /// of its own as it opens.
    pub(super) fn note_identity_reply(&mut self, key: &[u8], raw: &Bytes, refused: bool) {
        if refused {
            return;
        }
        let Some(user) = user_in(key, raw) else {
            return;
        };
        self.identity.user = self.user_of(user);
        if let Some(verification) = &mut self.verifying {
            verification.confirmed = true;
        }
    }

    /// Every command before and including the `AUTH` is answered: unless Redis accepted
    /// it, the client goes back to the identity it had (its links on the refused one's
    /// shared connections closed).
    pub(super) fn settle_identity(&mut self) {
        let Some(verification) = self.verifying.take() else {
            return;
        };
        let refusal = self.auth_refusal.take();
        if verification.confirmed {
            if let Some(refusal) = refusal {
                // Its commands would run on that node as the user it had before.
                self.broken = Some(refusal);
                return;
            }
            tracing::debug!(
                protocol = self.identity.protocol,
                "cluster client on the node connections of its user"
            );
            return;
        }
        self.identity = verification.previous;
        if verification.moved {
            self.close_links();
        }
    }

    /// `RESET`: the client's user is the URL's again.
    pub(super) fn forget_user(&mut self) {
        self.identity.user = None;
    }

    /// A connection of the client's own to `address` (link `id`, node `index`): one kept
    /// for its user and protocol if there is one (multiplexed), else a new one given its
    /// user ([`Self::own_handshake`]); then the client's state replayed, hidden.
    pub(super) fn own_link(&mut self, id: u64, index: usize, address: &str) -> NodeLink {
        let reuse = self.pools.as_ref().map(|pools| Reuse {
            pool: Arc::clone(pools.idle()),
            identity: self.own_identity(),
        });
        let link = NodeLink::open(
            id,
            address.to_string(),
            Arc::clone(self.view.gate()),
            self.events_tx.clone(),
            self.own_handshake(),
            reuse,
        );
        for (key, command) in &self.state {
            let Some(command) = self.replayed(key, command) else {
                continue;
            };
            link.send(command, 1);
            self.expects[index].push_back(Expect::Hidden);
        }
        link
    }

    /// What a connection of the client's own is as far as reuse goes: its user, and the
    /// client's protocol (its `HELLO` is replayed on it).
    pub(super) fn own_identity(&self) -> LaneIdentity {
        LaneIdentity {
            user: self.identity.user.clone(),
            db: 0,
            protocol: self.protocol,
        }
    }

    /// What a connection of the client's own is given first: `AUTH` as its user, checked
    /// before the connection carries a command (a refusal is each command's reply there).
    fn own_handshake(&self) -> Handshake {
        let user = LaneIdentity {
            user: self.identity.user.clone(),
            ..SharedNodes::home()
        };
        let timeout = match &self.pools {
            Some(pools) => pools.settings().handshake_timeout,
            None => self.view.gate().connect_timeout(),
        };
        Handshake {
            commands: user.handshake_from(&SharedNodes::home()),
            timeout,
        }
    }

    /// A node other than the one answering the client refused its `AUTH` (`reply`): the
    /// nodes disagree on the user (Redis Cluster does not spread ACL changes). Were the
    /// client's `AUTH` accepted, its commands would run on that node as the user it had
    /// before, so the client's connection ends instead, the reason logged: at once when the
    /// `AUTH` is in force (replayed by an `EXEC`), else once its answer accepts it.
    pub(super) fn on_hidden_auth_reply(&mut self, index: usize, reply: &[u8]) {
        if reply.first() != Some(&b'-') {
            return;
        }
        let refusal = format!(
            "cluster node {} refused the client's AUTH that another node answers: {}",
            self.node_addresses[index],
            String::from_utf8_lossy(reply).trim_end()
        );
        if self.verifying.is_some() {
            self.auth_refusal.get_or_insert(refusal);
        } else {
            self.broken = Some(refusal);
        }
    }

    /// Whether a node still owes the reply to the client's `AUTH` sent there unseen.
    pub(super) fn owes_hidden_auth(&self) -> bool {
        self.expects
            .iter()
            .flatten()
            .any(|owed| matches!(owed, Expect::HiddenAuth))
    }

    /// The state command `key` (`command`) as replayed on a new connection of the client's
    /// own: its user comes from [`Self::own_handshake`], so `AUTH` is not replayed and
    /// `HELLO` loses its `AUTH` clause.
    pub(super) fn replayed(&self, key: &[u8], command: &Bytes) -> Option<Bytes> {
        match key {
            b"AUTH" => None,
            b"HELLO" => Some(hello_without_auth(command)),
            _ => Some(command.clone()),
        }
    }

    /// The identity user of credentials: `None` (the URL's) when they are the URL's own.
    fn user_of(&self, user: LaneUser) -> Option<Arc<LaneUser>> {
        (!user.is_the_urls(self.view.gate().target())).then(|| Arc::new(user))
    }
}

/// `HELLO 2|3 AUTH user password` and nothing else: the protocol and the credentials.
fn hello_auth(args: Args<'_>) -> Option<(u8, LaneUser)> {
    let protocol = match args.get(1)? {
        b"2" => 2,
        b"3" => 3,
        _ => return None,
    };
    if args.len() != 5 || &args.upper(2)[..] != b"AUTH" {
        return None;
    }
    let user = LaneUser::from_auth_args(&[args.get(3)?, args.get(4)?])?;
    Some((protocol, user))
}

/// Where `HELLO`'s `AUTH` clause is among `args`, read as Redis reads its options.
fn auth_clause(args: Args<'_>) -> Option<usize> {
    let mut i = 2;
    while let Some(option) = args.get(i) {
        if option.eq_ignore_ascii_case(b"AUTH") {
            return (i + 2 < args.len()).then_some(i);
        }
        if !option.eq_ignore_ascii_case(b"SETNAME") {
            return None;
        }
        i += 2;
    }
    None
}

/// The credentials the state command `key` (`raw`: `AUTH`, or `HELLO` with an `AUTH`
/// clause) authenticates with.
pub(super) fn user_in(key: &[u8], raw: &Bytes) -> Option<LaneUser> {
    read_stored(raw, |args| match key {
        b"AUTH" => LaneUser::from_auth_args(&args.to_vec()[1..]),
        b"HELLO" => {
            let at = auth_clause(args)?;
            LaneUser::from_auth_args(&[args.get(at + 1)?, args.get(at + 2)?])
        }
        _ => None,
    })
    .flatten()
}

/// `HELLO` without its `AUTH` clause (the rest as sent).
fn hello_without_auth(raw: &Bytes) -> Bytes {
    read_stored(raw, |args| {
        let at = auth_clause(args)?;
        let kept: Vec<&[u8]> = args
            .to_vec()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !(at..at + 3).contains(i))
            .map(|(_, arg)| arg)
            .collect();
        let mut out = BytesMut::new();
        resp::command(&mut out, &kept);
        Some(out.freeze())
    })
    .flatten()
    .unwrap_or_else(|| raw.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&str]) -> Bytes {
        let mut out = BytesMut::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        resp::command(&mut out, &args);
        out.freeze()
    }

    /// `AUTH`'s one or two arguments and `HELLO`'s `AUTH` clause (after a `SETNAME`, or
    /// before one) name the credentials; a `SETNAME` whose name is `auth` does not.
    #[test]
    fn credentials_are_read_as_redis_reads_them() {
        let alice =
            |raw: &[&str], key: &[u8]| user_in(key, &command(raw)).map(|u| (u.name, u.password));
        let pair = Some((Bytes::from("alice"), Bytes::from("pw")));
        assert_eq!(alice(&["AUTH", "alice", "pw"], b"AUTH"), pair);
        assert_eq!(
            alice(&["auth", "pw"], b"AUTH").map(|u| u.0),
            Some(Bytes::from("default"))
        );
        assert_eq!(
            alice(&["HELLO", "3", "auth", "alice", "pw"], b"HELLO"),
            pair
        );
        assert_eq!(
            alice(
                &["HELLO", "3", "SETNAME", "n", "AUTH", "alice", "pw"],
                b"HELLO"
            ),
            pair
        );
        assert_eq!(alice(&["HELLO", "3", "SETNAME", "auth"], b"HELLO"), None);
        assert_eq!(alice(&["HELLO", "3"], b"HELLO"), None);
        assert_eq!(alice(&["AUTH", "a", "b", "c"], b"AUTH"), None);
    }

    /// A `HELLO` replayed on a connection given the user by its handshake keeps its
    /// protocol and name, not its `AUTH`.
    #[test]
    fn hello_is_replayed_without_its_auth_clause() {
        let hello = command(&["HELLO", "3", "AUTH", "alice", "pw", "SETNAME", "n"]);
        assert_eq!(
            hello_without_auth(&hello),
            command(&["HELLO", "3", "SETNAME", "n"])
        );
        let plain = command(&["HELLO", "3"]);
        assert_eq!(hello_without_auth(&plain), plain);
    }
}
