//! What the proxy does itself, before the guards: its `RESPGUARD` command, client
//! authentication when `[auth]` lists users (AUTH and HELLO … AUTH checked and rewritten to
//! the mapped Redis credentials, `-NOAUTH` for the rest, the upstream connection opened
//! once the client has authenticated), policy reloads, and the access probe that tells the
//! guards what the client's Redis user may run.
//!
//! For any other command this is two comparisons. Never judges a command for the guards.

use bytes::Bytes;

use super::hello::accepted_version;
use super::Session;
use crate::command::Special;
use crate::guard::ScriptAccess;
use crate::mux::LaneUser;
use crate::pipeline::{CommandFacts, Span};
use crate::reply_queue::Pending;
use crate::resp;
use crate::scanner::reply::{ReplyInfo, ReplyKind};

/// What the proxy does with a command before the guards (see [`Session::intercept`]).
pub(super) enum Intercept {
    /// Not the proxy's own business: the guards decide.
    Pass,
    /// Answer with this reply; Redis never sees the command.
    Answer(Bytes),
    /// Send the scratch buffer's command instead.
    Replace,
}

impl Session {
    /// What the proxy itself does with a command before the guards: its `RESPGUARD`
    /// command, client authentication when `[auth]` lists users, and a HELLO naming a
    /// multiplexed client (`hello`). Three comparisons for any other command.
    pub(super) fn intercept(&mut self, info: &CommandFacts, span: Span) -> Intercept {
        if info.special == Special::Hello && self.hello_without_name(span) {
            return Intercept::Replace;
        }
        let unknown = info.id == self.shared.table.unknown().id;
        let auth = self.policy.auth.required();
        let auth_command = matches!(
            info.special,
            Special::Auth | Special::Hello | Special::Reset
        );
        if !unknown && (!auth || self.authenticated && !auth_command) {
            return Intercept::Pass;
        }
        let argv = self.current(span).to_vecs();
        let is_respguard = unknown
            && argv
                .first()
                .is_some_and(|a| a.eq_ignore_ascii_case(b"respguard"));
        if auth && !self.authenticated {
            if let Some(answer) = self.before_authentication(info, &argv, is_respguard) {
                return answer;
            }
        }
        if is_respguard {
            if self.state.in_multi() {
                return Intercept::Answer(resp::error(
                    "ERR respguard: RESPGUARD commands cannot be queued in MULTI",
                ));
            }
            let args: Vec<&[u8]> = argv[1..].iter().map(|a| a.as_slice()).collect();
            return Intercept::Answer(self.shared.control.command(&args, &self.identity));
        }
        if !auth {
            return Intercept::Pass;
        }
        match info.special {
            Special::Auth => self.authenticate(&argv, None),
            Special::Hello => {
                // HELLO [protover [AUTH user password] [SETNAME name]]
                let at = (2..argv.len().saturating_sub(2))
                    .find(|&i| argv[i].eq_ignore_ascii_case(b"auth"));
                match at {
                    Some(i) => self.authenticate(&argv[i..i + 3], Some((&argv, i))),
                    None if self.authenticated => Intercept::Pass,
                    None => Intercept::Answer(resp::error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                    )),
                }
            }
            Special::Reset => {
                // Redis forgets who the connection was; so does the proxy.
                self.set_authenticated(false);
                Intercept::Pass
            }
            _ => Intercept::Pass,
        }
    }

    /// The answer for a client that has not authenticated yet, unless its command goes on
    /// to be checked (AUTH, HELLO, QUIT, RESET with a connection, `RESPGUARD`).
    fn before_authentication(
        &mut self,
        info: &CommandFacts,
        argv: &[Vec<u8>],
        is_respguard: bool,
    ) -> Option<Intercept> {
        if !is_respguard {
            // Redis refuses an unknown command or a wrong argument count before it asks
            // for authentication.
            if let Some(error) = self.shared.table.rejection(argv) {
                return Some(Intercept::Answer(resp::error(&error)));
            }
        }
        if !matches!(
            info.special,
            Special::Auth | Special::Hello | Special::Quit | Special::Reset
        ) {
            return Some(Intercept::Answer(resp::error(crate::auth::NOAUTH)));
        }
        if !self.upstream.is_connected() {
            // No upstream connection before authentication: answer as Redis would.
            match info.special {
                Special::Quit => {
                    self.ignore_input = true;
                    self.close_when_flushed = true;
                    return Some(Intercept::Answer(Bytes::from_static(b"+OK\r\n")));
                }
                Special::Reset => {
                    return Some(Intercept::Answer(Bytes::from_static(b"+RESET\r\n")))
                }
                _ => {}
            }
        }
        None
    }

    /// Check `AUTH [user] password` (`auth`, the command's arguments or HELLO's AUTH
    /// clause) against `[auth]`. Accepted: the command is rewritten to carry the Redis
    /// credentials the user is mapped to (`upstream_user`, or for a user without one the
    /// `upstream.url` user, which configuration allows only when the URL holds no
    /// password), and the client counts as authenticated once Redis answers it. The
    /// upstream connection is opened then if the client had none. `hello` is the whole
    /// HELLO command and the AUTH clause's position.
    fn authenticate(&mut self, auth: &[Vec<u8>], hello: Option<(&[Vec<u8>], usize)>) -> Intercept {
        let (name, password): (&[u8], &[u8]) = match auth.len() {
            2 => (b"default", &auth[1]),
            3 => (&auth[1], &auth[2]),
            _ => {
                return Intercept::Answer(resp::error(
                    "ERR wrong number of arguments for 'auth' command",
                ))
            }
        };
        if self.state.in_multi() {
            return Intercept::Answer(resp::error(
                "ERR respguard: AUTH cannot be queued in MULTI when respguard authenticates clients",
            ));
        }
        let Some(user) = self.policy.auth.check(name, password).cloned() else {
            tracing::info!(client = %self.identity, user = %String::from_utf8_lossy(name), "proxy authentication failed");
            return Intercept::Answer(resp::error(crate::auth::WRONGPASS));
        };
        let target = self.shared.gate.target();
        // The Redis credentials this user's commands run with. Without a password in the
        // URL the proxy runs as Redis's `default` user, which then has none (`nopass`) and
        // accepts any.
        let (u, p): (&[u8], &[u8]) = match (&user.upstream, &target.password) {
            (Some((u, p)), _) => (u, p),
            (None, Some(p)) => (
                target.username.as_deref().unwrap_or("default").as_bytes(),
                p.as_bytes(),
            ),
            (None, None) => (b"default", b""),
        };
        self.scratch.clear();
        match hello {
            None => resp::command(&mut self.scratch, &[b"AUTH", u, p]),
            Some((argv, at)) => {
                let mut out: Vec<&[u8]> = Vec::with_capacity(argv.len());
                out.extend(argv[..at].iter().map(|a| a.as_slice()));
                out.extend([&b"AUTH"[..], u, p]);
                out.extend(argv[at + 3..].iter().map(|a| a.as_slice()));
                resp::command(&mut self.scratch, &out);
            }
        }
        self.connect_for_auth = !self.upstream.is_connected();
        if self.connect_for_auth && self.lanes.is_some() {
            self.mapped_user = mapped_lane_user(u, p, hello);
        }
        Intercept::Replace
    }

    /// Open the upstream connection for the AUTH just accepted, the first time the client
    /// authenticates. If Redis cannot be reached, the AUTH gets the reason instead and the
    /// client stays unauthenticated.
    pub(super) async fn connect_after_auth(&mut self) {
        self.connect_for_auth = false;
        if !self.join_lanes_of_mapped_user() {
            // The AUTH sets the connection's user: under multiplexing, when its user's
            // shared connections cannot be had, the client gets a connection of its own.
            self.pinned = true;
            self.connect_upstream().await;
        }
        if !self.upstream.is_connected() {
            // Every command before it was answered by the proxy: only the AUTH is queued.
            self.requests.drop_output();
            self.submitted = self.state.queue().pushed_to_upstream();
            if let Some(auth) = self.state.queue_mut().pop_front() {
                let reply = self.unavailable_reply();
                self.state
                    .queue_mut()
                    .push(Pending::local(auth.command, reply));
                self.emit_local_replies();
            }
        }
    }

    /// Pick up the policy of a reload: commands read from now on are judged by it.
    pub(super) fn follow_reloads(&mut self) {
        let generation = self.shared.control.generation();
        if generation != self.policy_generation {
            self.policy = self.shared.control.policy();
            self.policy_generation = generation;
            if !self.policy.auth.required() {
                self.set_authenticated(true);
            }
        }
    }

    /// Whether the client has authenticated to the proxy; until it has, the request
    /// scanner applies Redis's bounds for unauthenticated clients.
    pub(super) fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
        self.requests
            .scanner_mut()
            .set_unauthenticated(!authenticated);
    }

    /// After RESET, Redis has forgotten the proxy's AUTH and SELECT: send them again, hidden.
    pub(super) fn send_handshake(&mut self) {
        let (bytes, replies) = self.shared.gate.handshake();
        if replies == 0 {
            return;
        }
        self.requests.send(bytes);
        // RESET has just ended any MULTI and turned replies back on.
        self.state.expect_hidden(replies as u32);
    }

    /// Send the access probe ([`crate::guard::PROBE`]), its reply hidden, when a guard may
    /// act as the user and the probe's reply will come back on its own (not inside MULTI,
    /// under CLIENT REPLY OFF/SKIP, or where Redis refuses EVAL: subscribed, MONITOR).
    pub(super) fn probe_access(&mut self) {
        let can_probe = self.upstream.is_connected()
            && self.policy.guards.probes_access()
            && self.state.can_probe();
        if !can_probe {
            return;
        }
        self.requests.send(crate::guard::PROBE);
        self.state.expect_probe();
        self.probing = true;
    }

    /// Hold the command starting at `start` back while a probe is in flight and the guards
    /// need its answer to judge it: it is scanned again once the probe has answered.
    #[inline]
    pub(super) fn hold_for_probe(&mut self, command: u16, start: usize) -> bool {
        if !self.probing || !self.policy.guards.needs_access(command) {
            return false;
        }
        self.requests.scanner_mut().unscan(start);
        self.waiting_for_probe = true;
        true
    }

    /// The probe answered: guarded writes may go on.
    pub(super) fn on_access_probe(&mut self, reply: &ReplyInfo) {
        let is_error = reply.kind == ReplyKind::Error;
        self.access = ScriptAccess::from_probe_reply(is_error, reply.last_int);
        self.probing = false;
        self.waiting_for_probe = false;
        if self.access != ScriptAccess::Allowed {
            tracing::debug!(client = %self.identity, access = ?self.access, "the Redis user may not run what the TTL guard sends");
        }
    }
}

/// The shared connections' user for an AUTH the proxy accepted and rewrote to the Redis
/// credentials `user`/`password`: with `AUTH`, or `HELLO 2|3 AUTH ...` alone (`hello`: the
/// whole HELLO and the clause's position), those credentials and HELLO's protocol; `None`
/// for a HELLO with more (SETNAME lasts for the connection's life) or a version Redis
/// refuses, which keep a connection of their own.
fn mapped_lane_user(
    user: &[u8],
    password: &[u8],
    hello: Option<(&[Vec<u8>], usize)>,
) -> Option<(LaneUser, Option<u8>)> {
    let protocol = match hello {
        None => None,
        Some((argv, 2)) if argv.len() == 5 => Some(accepted_version(Some(&argv[1]))?),
        Some(_) => return None,
    };
    Some((LaneUser::from_auth_args(&[user, password])?, protocol))
}
