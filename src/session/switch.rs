//! A multiplexed client moving to the shared connections of another identity
//! ([`LaneIdentity`]: ACL user, database, protocol version) instead of taking a connection
//! of its own.
//!
//! `AUTH [user] password` on a lane (without `[auth]`; under it the proxy authenticates
//! clients itself, and a client's first accepted AUTH joins the lanes of its mapped Redis
//! user, [`Session::join_lanes_of_mapped_user`]): the identity's user is the one named (`default`
//! for one argument; the URL's own credentials name the URL's identity). Redis checks the
//! password every time: for another user, on a lane of that user's identity, opened with
//! these credentials (a wrong password fails its handshake, and the client's AUTH gets
//! Redis's `-WRONGPASS`, the client staying where it was); for the user and password in
//! use, on the client's own lane, where a success changes nothing and a refusal leaves
//! the connection as it was. `HELLO v AUTH user password` works the same way, with the
//! protocol. An AUTH Redis refuses for its argument count goes to the client's lane.
//!
//! `SELECT n` on a lane, outside any other connection state (on a lane there is none: a
//! transaction or a subscription already gave the client a connection of its own, where
//! SELECT stays a command for that connection's life):
//! - an argument Redis refuses (not a canonical integer, negative) changes nothing: it goes
//!   to the client's lane, and Redis's error comes back;
//! - the database the client uses already: answered `+OK` here, as Redis would;
//! - another database: once every reply the client is owed on its lane has arrived (so
//!   Redis runs its commands in the order sent), the client is attached to a lane of the
//!   new identity (created on first use, up to `upstream.shared_identities`) and the SELECT
//!   is sent there, so the reply is Redis's own (`+OK`, or `-ERR DB index is out of range`).
//!   The client's next commands wait for that reply: on success it stays on the new lanes
//!   ([`Effect::Select`](crate::reply_queue::Effect::Select)) and leaves the old; otherwise
//!   (an error, the connection lost, a guard's refusal) it goes back to the old lane.
//!   A lane checks the replies to its own SELECT before carrying any command; when Redis
//!   refuses it (a database past `databases`), the commands submitted get Redis's own
//!   error, so the client's SELECT still gets Redis's bytes and the client stays put.
//! - past `upstream.shared_identities`, the client takes a connection of its own for good,
//!   as without identities.
//!
//! `HELLO 2` or `HELLO 3` (no other argument) on a lane works the same way for the
//! protocol: HELLO for the protocol in use, with no argument, or with a version Redis
//! refuses goes to the client's lane; another protocol's goes to a lane of that identity
//! (a RESP3 lane's handshake is `HELLO 3`), and its reply is Redis's, `id` included: the
//! shared connection's. HELLO's SETNAME clause is the session's (`hello`).
//!
//! [`Session::lane_identity`] is the one record of which identity's lanes the client uses;
//! a connection of its own taken from the pool (which opens them with the URL's identity)
//! is given the client's identity first, with hidden commands, and is closed rather than
//! kept for reuse when handed back.

use bytes::Bytes;

use super::upstream::{LaneSwitch, Upstream};
use super::Session;
use crate::mux::lane::LaneLink;
use crate::mux::{LaneIdentity, LaneUser, SharedConnections};
use crate::pipeline::{CommandFacts, Span};
use crate::reply_queue::Effect;

/// The database `SELECT` names when Redis would accept its spelling and sign: digits only,
/// no leading zero, at most `i32::MAX` (Redis's `string2ll`, then its range check for an
/// `int`). Anything else Redis refuses without changing the connection.
pub(super) fn database_index(arg: &[u8]) -> Option<u32> {
    let canonical = match arg {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.len() < 10 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    let n = std::str::from_utf8(arg).ok()?.parse::<u64>().ok()?;
    u32::try_from(n).ok().filter(|&n| n <= i32::MAX as u32)
}

impl Session {
    /// `SELECT` with one argument, on a lane: answered, sent, or held as the module doc
    /// says. True when the command was answered or held here; false when it goes on to
    /// Redis (on the client's lane, or on the new identity's).
    pub(super) fn select_on_lane(&mut self, info: CommandFacts, span: Span, arg: &[u8]) -> bool {
        let Some(db) = database_index(arg) else {
            // Redis refuses it and keeps the connection as it is.
            return false;
        };
        let target = LaneIdentity {
            db,
            ..self.lane_identity.clone()
        };
        if target == self.lane_identity {
            // Nothing to change: Redis would answer +OK and keep the connection as it is.
            self.commands_in_batch += 1;
            self.answer_locally(info.id, Bytes::from_static(b"+OK\r\n"), span);
            return true;
        }
        self.switch_lanes(target, span)
    }

    /// `HELLO` with at most a protocol version and an AUTH clause, on a lane (`protocol`:
    /// the version when it is one Redis accepts; `user`: the clause's credentials): sent on
    /// the client's lane, on the new identity's, or held, as the module doc says. True when
    /// held here.
    pub(super) fn hello_on_lane(
        &mut self,
        span: Span,
        protocol: Option<u8>,
        user: Option<LaneUser>,
    ) -> bool {
        let Some(protocol) = protocol else {
            // No version, or one Redis refuses: nothing changes.
            return false;
        };
        let mut target = LaneIdentity {
            protocol,
            ..self.lane_identity.clone()
        };
        if let (Some(user), Some(lanes)) = (user, &self.lanes) {
            target.user = lanes.user_of(user);
        }
        self.switch_lanes(target, span)
    }

    /// `AUTH` on a lane: with one or two arguments, the client moves to the lanes of the
    /// user it names (opened with its credentials, so Redis itself checks them: a wrong
    /// password gets Redis's `-WRONGPASS` and the client stays where it was); with the
    /// user and password it has already, or with any other argument count, it goes to the
    /// client's lane, which Redis's reply leaves as it was. True when held here.
    pub(super) fn auth_on_lane(&mut self, span: Span) -> bool {
        let (Some(user), Some(lanes)) = (self.auth_arguments(span), &self.lanes) else {
            return false;
        };
        let target = LaneIdentity {
            user: lanes.user_of(user),
            ..self.lane_identity.clone()
        };
        self.switch_lanes(target, span)
    }

    /// The command at `span` moves the client to the lanes of `target`: held until the
    /// client's lane owes nothing (Redis runs its commands in order), then sent on a lane of
    /// `target`; past `upstream.shared_identities`, held for a connection of its own, for
    /// good; for the identity in use, nothing. True when held here.
    fn switch_lanes(&mut self, target: LaneIdentity, span: Span) -> bool {
        if target == self.lane_identity {
            // The identity in use: the command goes to the client's lane, where Redis
            // answers it (an AUTH's password checked again, changing nothing either way).
            return false;
        }
        if !self.state.queue().is_empty() {
            // Redis runs the client's commands in order: the old lane answers first.
            self.requests.scanner_mut().unscan(span.start);
            self.state.wait_for_replies();
            return true;
        }
        let Some(lanes) = self.lanes.clone() else {
            return false;
        };
        match lanes.attach_to(&target) {
            Some(link) => {
                self.begin_switch(link, target);
                false
            }
            // Past `upstream.shared_identities`: a connection of its own, for good.
            None => self.hold_until_pinned(span.start),
        }
    }

    /// Attach to `link`, of the identity `target`, keeping the old lane until the SELECT or
    /// HELLO about to be sent there is answered.
    fn begin_switch(&mut self, link: LaneLink, target: LaneIdentity) {
        self.submit_to_lane();
        let Upstream::Shared(previous) =
            std::mem::replace(&mut self.upstream, Upstream::Shared(link))
        else {
            unreachable!("a switch starts on a lane");
        };
        self.submitted = self.state.queue().pushed_to_upstream();
        self.switch = Some(LaneSwitch {
            previous,
            previous_identity: self.lane_identity.clone(),
            target,
            sent: false,
        });
        // The commands after the SELECT wait for its reply: they belong to whichever
        // identity it leaves the client with.
        self.state.wait_for_replies();
    }

    /// The SELECT or HELLO of a switch was just recorded: its reply, if a success,
    /// completes the switch (a SELECT's through [`Effect::LaneSwitch`], a HELLO's through
    /// its own effect). True when it was the one (it then pins nothing).
    pub(super) fn note_switch_sent(&mut self) -> bool {
        let Some(switch) = self.switch.as_mut().filter(|s| !s.sent) else {
            return false;
        };
        switch.sent = true;
        if switch.target.db != switch.previous_identity.db {
            self.state.queue_mut().set_last_effect(Effect::LaneSwitch);
        }
        true
    }

    /// Redis accepted the SELECT or HELLO of the switch in flight, if any: the client uses
    /// the new identity's lanes from now on.
    pub(super) fn confirm_switch(&mut self) {
        if let Some(switch) = self.switch.take() {
            tracing::debug!(
                client = %self.identity,
                db = switch.target.db,
                protocol = switch.target.protocol,
                "client moved to the shared connections of its identity"
            );
            self.lane_identity = switch.target;
        }
    }

    /// Once nothing is owed, a switch whose SELECT did not succeed (Redis's error, the
    /// connection lost, a local answer) returns the client to its old lane.
    #[inline]
    pub(super) fn settle_switch(&mut self) {
        if self.switch.is_some() && self.state.queue().is_empty() {
            self.undo_switch();
        }
    }

    #[cold]
    fn undo_switch(&mut self) {
        let Some(switch) = self.switch.take() else {
            return;
        };
        self.upstream = Upstream::Shared(switch.previous);
        self.lane_identity = switch.previous_identity;
        self.submitted = self.state.queue().pushed_to_upstream();
    }

    /// What a connection of its own taken from the pool (opened with the URL's identity) is
    /// sent first, every reply checked: the client's identity, then its name (kept by the
    /// session while it shares), so Redis's `CLIENT LIST` shows the client as it is.
    pub(super) fn own_connection_handshake(&self, lanes: &SharedConnections) -> (Bytes, u32) {
        let (commands, replies) = self.lane_identity.handshake_from(lanes.home());
        let Some(name) = &self.identity.name else {
            return (commands, replies);
        };
        let mut out = bytes::BytesMut::from(&commands[..]);
        crate::resp::command(&mut out, &[b"CLIENT", b"SETNAME", name]);
        (out.freeze(), replies + 1)
    }

    /// Whether a connection of its own may go back to the pool for another client: only
    /// with the URL's identity, as the pool opens them, and no name.
    pub(super) fn own_connection_reusable(&self) -> bool {
        self.identity.name.is_none()
            && self
                .lanes
                .as_ref()
                .is_some_and(|lanes| *lanes.home() == self.lane_identity)
    }

    /// Under `[auth]`, the client the proxy just authenticated joins the shared connections
    /// of the Redis user it is mapped to (opened with that user's credentials, checked),
    /// where the rewritten AUTH (or HELLO ... AUTH) goes, rather than a connection of its
    /// own. False when it cannot (no mapped user, or `upstream.shared_identities` reached).
    pub(super) fn join_lanes_of_mapped_user(&mut self) -> bool {
        let (Some(lanes), Some((user, protocol))) = (self.lanes.clone(), self.mapped_user.take())
        else {
            return false;
        };
        let identity = LaneIdentity {
            user: lanes.user_of(user),
            protocol: protocol.unwrap_or(self.lane_identity.protocol),
            db: self.lane_identity.db,
        };
        let Some(link) = lanes.attach_to(&identity) else {
            return false;
        };
        tracing::debug!(client = %self.identity, "authenticated client on the shared connections of its Redis user");
        self.lane_identity = identity;
        self.upstream = Upstream::Shared(link);
        // Every command before the AUTH was answered by the proxy: the AUTH is the first
        // the lane carries for this client.
        self.submitted = self.state.queue().pushed_to_upstream() - 1;
        // The AUTH's state lives on its user's lanes, not on a connection of the client's.
        self.lasting_state = false;
        self.probe_access();
        true
    }

    /// A place on a lane of the client's identity (which has lanes: the client used them).
    pub(super) fn attach_to_identity(&self) -> Option<LaneLink> {
        self.lanes.as_ref()?.attach_to(&self.lane_identity)
    }
}

#[cfg(test)]
mod tests {
    use super::database_index;

    /// Only the spellings Redis's `string2ll` accepts, non-negative and within an `int`,
    /// name a database; every other one is refused by Redis without a change.
    #[test]
    fn database_index_accepts_what_redis_accepts() {
        assert_eq!(database_index(b"0"), Some(0));
        assert_eq!(database_index(b"5"), Some(5));
        assert_eq!(database_index(b"2147483647"), Some(i32::MAX as u32));
        for refused in [
            &b""[..],
            b"09",
            b"00",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"abc",
            b"1.0",
            b"2147483648",
            b"99999999999",
        ] {
            assert_eq!(database_index(refused), None, "{refused:?}");
        }
    }
}
