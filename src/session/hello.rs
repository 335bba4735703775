//! `HELLO` on a shared connection (multiplexing): what it asks for, read from its
//! arguments as Redis reads them, and, when it names the client, the command Redis gets
//! instead (without `SETNAME`: the session keeps the name, as for CLIENT SETNAME).
//!
//! Redis's order: a version it refuses (`HELLO 4`, `HELLO AUTH ...`) is refused before
//! anything else, changing nothing; then the options (`AUTH user password`, `SETNAME
//! name`, in any order) are read, then the password checked, then the name set, then the
//! protocol. A lane carries a HELLO whose effect the proxy can follow per client: a
//! protocol and a user pick the client's lanes (`switch`), a name is kept by the session
//! ([`HelloEffect`](crate::reply_queue::HelloEffect) sets it once Redis answers). A HELLO
//! with anything else (an option Redis refuses, a name it refuses) gives the client a
//! connection of its own, where Redis answers it as usual.

use super::shared::is_printable_attribute;
use super::Session;
use crate::mux::LaneUser;
use crate::pipeline::Span;
use crate::resp;

/// HELLO's version argument, when it is one Redis accepts: 2 or 3, written plainly (Redis
/// reads it with `string2ll`, which refuses `02` and `+3`).
pub(super) fn accepted_version(arg: Option<&[u8]>) -> Option<u8> {
    match arg {
        Some(b"2") => Some(2),
        Some(b"3") => Some(3),
        _ => None,
    }
}

/// What a HELLO a lane may carry asks for.
#[derive(Debug, Default)]
pub(super) struct HelloRequest {
    /// The protocol version, when Redis accepts it (none: HELLO changes nothing).
    pub protocol: Option<u8>,
    /// The AUTH clause's credentials.
    pub user: Option<LaneUser>,
    /// Whether it has a SETNAME clause (with a name Redis accepts).
    pub names: bool,
}

impl Session {
    /// What the `HELLO` at `span` asks for, when a lane may carry it; `None` for one that
    /// needs a connection of its own (see the module doc).
    pub(super) fn hello_arguments(&self, span: Span) -> Option<HelloRequest> {
        let cmd = self.current(span);
        // No version: HELLO reports; one Redis refuses: refused before the options.
        let Some(protocol) = accepted_version(cmd.arg(1)) else {
            return Some(HelloRequest::default());
        };
        let protocol = Some(protocol);
        let mut hello = HelloRequest {
            protocol,
            ..HelloRequest::default()
        };
        let mut i = 2;
        while let Some(option) = cmd.arg(i) {
            if option.eq_ignore_ascii_case(b"auth") && hello.user.is_none() {
                let (Some(user), Some(password)) = (cmd.arg(i + 1), cmd.arg(i + 2)) else {
                    return None;
                };
                hello.user = Some(LaneUser::from_auth_args(&[user, password])?);
                i += 3;
            } else if option.eq_ignore_ascii_case(b"setname") && !hello.names {
                if !cmd.arg(i + 1).is_some_and(is_printable_attribute) {
                    return None;
                }
                hello.names = true;
                i += 2;
            } else {
                return None;
            }
        }
        Some(hello)
    }

    /// A HELLO naming the client, on a lane: the command Redis gets instead, without its
    /// SETNAME clause, written to the scratch buffer (its reply does not depend on it; the
    /// name is kept once Redis answers). False when it is not one.
    pub(super) fn hello_without_name(&mut self, span: Span) -> bool {
        if self.upstream.lane().is_none() {
            return false;
        }
        let Some(HelloRequest {
            protocol: Some(protocol),
            user,
            names: true,
        }) = self.hello_arguments(span)
        else {
            return false;
        };
        if user.is_some() && self.policy.auth.required() {
            // A proxy user's AUTH clause: `[auth]` rewrites it, on a connection of its own.
            return false;
        }
        let version = [b'0' + protocol];
        let mut args: Vec<&[u8]> = vec![b"HELLO", &version];
        if let Some(user) = &user {
            args.extend([&b"AUTH"[..], &user.name, &user.password]);
        }
        self.scratch.clear();
        resp::command(&mut self.scratch, &args);
        true
    }
}
