//! Multiplexing (`upstream.connections = "multiplexed"`): clients share a few Redis
//! connections instead of one each.
//!
//! A session starts on one of the [`SharedConnections`]' lanes (chosen in turn) and sends
//! its stateless commands there; a command that needs state on the connection
//! ([`crate::command::Pinning`]) moves it to a connection of its own from the
//! [`pinned`] pool, once its commands on the lane have been answered (so Redis runs them in
//! the order the client sent them). State that ends (a transaction, a blocking command, a
//! subscription) gives the connection back when it does, and the client returns to a
//! lane; state kept for the connection's life (CLIENT NO-EVICT, MONITOR, RESET ...)
//! keeps it. A client's name (CLIENT SETNAME, HELLO ... SETNAME) is kept by the session
//! and given to each connection of its own it takes.
//!
//! State the proxy can keep per client instead picks which lanes the client shares: lanes
//! are grouped by [`LaneIdentity`] (ACL user, database, protocol version; see
//! [`identity`]). The URL's identity has its lanes from the start; another gets
//! `shared_connections` lanes of its own, whose handshake authenticates, selects the
//! database and the protocol, the first time a client needs it (`AUTH`, `SELECT n` or
//! `HELLO` on a lane), up to `upstream.shared_identities` identities in all. At that bound
//! the identities no client uses (or that Redis refused) close to make room; past it a
//! client needing one more takes a connection of its own for good, as before.
//! Redis therefore sees `shared_connections` connections per identity in use plus one per
//! client holding connection state (at most `pinned_connections`), plus the few kept for
//! reuse.
//!
//! [`router`] is the pure part (which reply bytes belong to which client), [`lane`] the
//! connection and its task, [`pinned`] the connections of their own. The session's side is
//! `session::shared`.

pub(crate) mod identity;
pub(crate) mod lane;
pub(crate) mod pinned;
pub(crate) mod router;
pub(crate) mod threads;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::upstream::ConnectGate;
use lane::{Lane, LaneLink, LaneSettings};
use pinned::PinnedConnections;

use identity::{count_identities_exhausted, identities_gauge};
pub use identity::{LaneIdentity, LaneUser};
pub use lane::{SlowReader, UnreadLimit, LANE_NAME};

/// How multiplexing is set up, from `[upstream]` and `[proxy]`.
#[derive(Debug, Clone, Copy)]
pub struct MuxSettings {
    /// `upstream.shared_connections`: how many lanes per identity.
    pub shared: usize,
    /// `upstream.shared_identities`: most identities with lanes, the URL's included.
    pub identities: usize,
    /// `upstream.pinned_connections`: most connections of their own in use at once.
    pub pinned: usize,
    /// `upstream.pinned_idle`: most connections of their own kept open for reuse.
    pub pinned_idle: usize,
    /// How long a client waits for a connection of its own (`upstream.connect_timeout`).
    pub pinned_wait: Duration,
    /// How many bytes of replies a client may leave unread on a lane (`proxy.output_buffer`
    /// and its hard limit and soft time).
    pub unread: UnreadLimit,
    /// `upstream.reply_timeout`: longest silence of a lane that owes replies.
    pub reply_timeout: Option<Duration>,
}

/// The lanes of one identity, attached to in turn.
#[derive(Debug)]
struct LaneGroup {
    identity: LaneIdentity,
    lanes: Vec<Arc<Lane>>,
    next: AtomicUsize,
}

impl LaneGroup {
    /// Redis refused this identity (a database past `databases`) on one of its lanes.
    fn is_refused(&self) -> bool {
        self.lanes.iter().any(|lane| lane.is_refused())
    }

    /// No session attaches any more; each lane closes once its sessions have left.
    fn retire(&self) {
        for lane in &self.lanes {
            lane.retire();
        }
    }

    /// How many sessions are attached to its lanes.
    fn links(&self) -> usize {
        self.lanes.iter().map(|lane| lane.links()).sum()
    }

    /// A place on the next lane in turn.
    fn attach(&self) -> LaneLink {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].attach()
    }
}

/// The lanes clients share, by identity, and the connections of their own, proxy-wide.
#[derive(Debug)]
pub struct SharedConnections {
    /// The URL's identity's lanes, where every session starts.
    home: LaneGroup,
    /// The other identities' lanes, created when first needed; never more than
    /// `max_identities - 1`.
    others: Mutex<Vec<Arc<LaneGroup>>>,
    max_identities: usize,
    settings: MuxSettings,
    gate: Arc<ConnectGate>,
    shutdown: watch::Receiver<bool>,
    pinned: Arc<PinnedConnections>,
}

impl SharedConnections {
    /// The lanes as `settings` say, through `gate`, none connected until used, and
    /// `pinned`, the pool of connections of their own (one proxy-wide: see [`threads`]).
    pub fn new(
        settings: MuxSettings,
        gate: Arc<ConnectGate>,
        shutdown: watch::Receiver<bool>,
        pinned: Arc<PinnedConnections>,
    ) -> Self {
        let home = LaneIdentity {
            user: None,
            db: gate.target().db,
            protocol: 2,
        };
        let mut connections = SharedConnections {
            home: LaneGroup {
                identity: home.clone(),
                lanes: Vec::new(),
                next: AtomicUsize::new(0),
            },
            others: Mutex::new(Vec::new()),
            max_identities: settings.identities.max(1),
            settings,
            gate,
            shutdown,
            pinned,
        };
        connections.home = connections.group(home);
        identities_gauge().increment(1.0);
        connections
    }

    /// `shared_connections` lanes for `identity`, none connected until used.
    fn group(&self, identity: LaneIdentity) -> LaneGroup {
        let lane_settings = LaneSettings {
            reply_timeout: self.settings.reply_timeout,
            unread: self.settings.unread,
            handshake: identity.handshake_from(&self.home.identity),
            handshake_timeout: self.settings.pinned_wait,
        };
        let lanes = (0..self.settings.shared.max(1))
            .map(|_| {
                Arc::new(Lane::new(
                    Arc::clone(&self.gate),
                    lane_settings.clone(),
                    self.shutdown.clone(),
                ))
            })
            .collect();
        LaneGroup {
            identity,
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// Longest time a new connection's identity commands (AUTH, SELECT, HELLO) may take.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.settings.pinned_wait
    }

    /// Where Redis is now (the gate's address: a Sentinel upstream's current primary).
    pub(crate) fn address(&self) -> String {
        self.gate.address()
    }

    /// The connections of their own, for clients using connection state.
    pub(crate) fn pinned(&self) -> &Arc<PinnedConnections> {
        &self.pinned
    }

    /// The identity of the URL's handshake: every session starts there, and connections of
    /// their own are opened with it.
    pub(crate) fn home(&self) -> &LaneIdentity {
        &self.home.identity
    }

    /// The identity user of `AUTH`'s credentials: `None` (the URL's) when they are the
    /// URL's own.
    pub(crate) fn user_of(&self, user: LaneUser) -> Option<Arc<LaneUser>> {
        (!user.is_the_urls(self.gate.target())).then(|| Arc::new(user))
    }

    /// A place for a new session on the next of the URL's identity's lanes in turn.
    pub(crate) fn attach(&self) -> LaneLink {
        self.home.attach()
    }

    /// A place on the next lane of `identity` in turn, its lanes created if this is the
    /// first time it is needed; `None` when `upstream.shared_identities` identities have
    /// lanes already (the client then needs a connection of its own).
    pub(crate) fn attach_to(&self, identity: &LaneIdentity) -> Option<LaneLink> {
        if *identity == self.home.identity {
            return Some(self.home.attach());
        }
        let mut others = self.others.lock().expect("identities lock");
        if let Some(i) = others.iter().position(|g| g.identity == *identity) {
            if !others[i].is_refused() {
                return Some(others[i].attach());
            }
            // Redis refused it last time: new lanes ask again (a refusal may pass, as a
            // busy script's does), and the old ones close once their clients leave.
            others.swap_remove(i).retire();
            identities_gauge().decrement(1.0);
        }
        if others.len() + 1 >= self.max_identities {
            Self::close_unused(&mut others);
        }
        if others.len() + 1 >= self.max_identities {
            count_identities_exhausted();
            return None;
        }
        tracing::debug!(
            user = identity.user_name(),
            db = identity.db,
            protocol = identity.protocol,
            "shared connections for a new identity"
        );
        let group = Arc::new(self.group(identity.clone()));
        let link = group.attach();
        others.push(group);
        identities_gauge().increment(1.0);
        Some(link)
    }

    /// At the bound, make room: the identities Redis refused (a wrong password) and those
    /// no client is attached to give their places up, their lanes closing. A client of a
    /// closed identity that comes back from a connection of its own opens it again.
    fn close_unused(others: &mut Vec<Arc<LaneGroup>>) {
        others.retain(|group| {
            let keep = !group.is_refused() && group.links() > 0;
            if !keep {
                group.retire();
                identities_gauge().decrement(1.0);
            }
            keep
        });
    }
}
