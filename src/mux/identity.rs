//! What a shared Redis connection carries that decides how it answers a client's commands
//! ([`LaneIdentity`]: the ACL user it is authenticated as, the database its commands use,
//! the protocol of its replies), and the checked handshake that gives a new connection an
//! identity ([`give_identity`]).
//!
//! Clients of one identity may share connections; clients of two may not. The URL's
//! identity is the **home** one: its user is the URL's (`user: None`), its database the
//! URL's, RESP2. A client's `AUTH`, `SELECT` or `HELLO` names another, and the lanes of
//! that identity are opened with the commands that bring a connection there from the URL's
//! handshake ([`LaneIdentity::handshake_from`]), every reply checked before any client's
//! command is written: a connection Redis refused (a wrong password, a database past
//! `databases`) never carries one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::config::UpstreamTarget;
use crate::resp;
use crate::transport::Stream;

/// The ACL user a client authenticated as (`AUTH [user] password`, `HELLO v AUTH user
/// password`), with the password that Redis accepted for it, so the lanes of its identity
/// can be opened (and reopened) as that user. Never printed: its `Debug` shows the name
/// only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LaneUser {
    /// The ACL user's name (`default` for `AUTH password`).
    pub name: Bytes,
    /// The password the client gave.
    pub password: Bytes,
}

impl fmt::Debug for LaneUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneUser")
            .field("name", &String::from_utf8_lossy(&self.name))
            .finish_non_exhaustive()
    }
}

impl LaneUser {
    /// The credentials of `AUTH`'s arguments after its name (`[password]` or `[user,
    /// password]`); `None` for any other count, which Redis refuses without a change.
    pub fn from_auth_args(args: &[&[u8]]) -> Option<LaneUser> {
        let (name, password): (&[u8], &[u8]) = match args {
            [password] => (b"default", password),
            [name, password] => (name, password),
            _ => return None,
        };
        Some(LaneUser {
            name: Bytes::copy_from_slice(name),
            password: Bytes::copy_from_slice(password),
        })
    }

    /// Whether these are the URL's own credentials (its user, `default` when it names
    /// none, and its password): a client authenticating with them keeps the URL's
    /// identity. A URL without a password has no credentials to match.
    pub fn is_the_urls(&self, target: &UpstreamTarget) -> bool {
        let Some(password) = &target.password else {
            return false;
        };
        let name = target.username.as_deref().unwrap_or("default");
        self.name.as_ref() == name.as_bytes() && self.password.as_ref() == password.as_bytes()
    }
}

/// The user, database and protocol version of a Redis connection, as far as lanes are
/// concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaneIdentity {
    /// The ACL user, when not the URL's.
    pub user: Option<Arc<LaneUser>>,
    /// The selected database.
    pub db: u32,
    /// The protocol version, 2 or 3.
    pub protocol: u8,
}

impl LaneIdentity {
    /// The ACL user's name as logged (`None`: the URL's user).
    pub fn user_name(&self) -> Option<String> {
        self.user
            .as_ref()
            .map(|u| String::from_utf8_lossy(&u.name).into_owned())
    }

    /// The commands that bring a connection opened with the URL's handshake (user and
    /// database of `home`, RESP2) to this identity, encoded, and how many replies they get:
    /// an `AUTH` when the user differs (first: the rest needs it), a `SELECT` when the
    /// database does, a `HELLO` when the protocol does. Empty for the URL's identity.
    pub fn handshake_from(&self, home: &LaneIdentity) -> (Bytes, u32) {
        let mut out = BytesMut::new();
        let mut replies = 0;
        if self.user != home.user {
            if let Some(user) = &self.user {
                resp::command(&mut out, &[b"AUTH", &user.name, &user.password]);
                replies += 1;
            }
        }
        if self.db != home.db {
            let db = self.db.to_string();
            resp::command(&mut out, &[b"SELECT", db.as_bytes()]);
            replies += 1;
        }
        if self.protocol != home.protocol {
            let protocol = self.protocol.to_string();
            resp::command(&mut out, &[b"HELLO", protocol.as_bytes()]);
            replies += 1;
        }
        (out.freeze(), replies)
    }
}

/// Why a new connection could not be given an identity.
#[derive(Debug)]
pub(crate) enum IdentityFailure {
    /// Redis answered with this error (the whole reply, e.g. `-WRONGPASS ...`).
    Refused(Bytes),
    /// No answer in time, or the connection failed.
    Lost(String),
}

/// Send `handshake` (commands and their number of replies, from
/// [`LaneIdentity::handshake_from`]) on a new connection and check every reply within
/// `timeout`: a connection whose identity Redis refused must carry no client's command, as
/// they would run as the wrong user or in the wrong database.
pub(crate) async fn give_identity(
    stream: &mut Stream,
    handshake: &(Bytes, u32),
    timeout: Duration,
) -> Result<(), IdentityFailure> {
    let (commands, replies) = handshake;
    if *replies == 0 {
        return Ok(());
    }
    let exchange = async {
        stream.write_all(commands).await?;
        crate::upstream::read_replies(stream, *replies as usize).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(IdentityFailure::Lost(format!(
            "no answer to the connection's AUTH, SELECT or HELLO within {timeout:?}"
        ))),
        Ok(Err(e)) => Err(IdentityFailure::Lost(e.to_string())),
        Ok(Ok(answers)) => match answers.into_iter().find_map(|r| r.err()) {
            Some(error) => Err(IdentityFailure::Refused(resp::error(&error))),
            None => Ok(()),
        },
    }
}

/// Identities with shared connections (`respguard_shared_identities`), summed over the
/// serving threads' sets of lanes, or the cluster's node connections.
pub fn identities_gauge() -> metrics::Gauge {
    metrics::gauge!("respguard_shared_identities")
}

/// Count one client refused shared connections because `upstream.shared_identities`
/// identities have them already (it gets connections of its own).
pub fn count_identities_exhausted() {
    metrics::counter!("respguard_shared_identities_exhausted_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str) -> Option<Arc<LaneUser>> {
        Some(Arc::new(LaneUser {
            name: Bytes::copy_from_slice(name.as_bytes()),
            password: Bytes::copy_from_slice(password.as_bytes()),
        }))
    }

    /// A lane of another user authenticates first, then selects and switches protocol;
    /// the URL's identity needs nothing.
    #[test]
    fn handshake_authenticates_before_select_and_hello() {
        let home = LaneIdentity {
            user: None,
            db: 0,
            protocol: 2,
        };
        assert_eq!(home.handshake_from(&home).1, 0);
        let alice = LaneIdentity {
            user: user("alice", "pw"),
            db: 3,
            protocol: 3,
        };
        let (bytes, replies) = alice.handshake_from(&home);
        assert_eq!(replies, 3);
        assert_eq!(
            &bytes[..],
            b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
        );
    }

    /// `AUTH password` is the `default` user's; other argument counts name no user; the
    /// password never shows in a log line.
    #[test]
    fn auth_arguments_name_the_user() {
        let one = LaneUser::from_auth_args(&[b"secret"]).unwrap();
        assert_eq!(&one.name[..], b"default");
        let two = LaneUser::from_auth_args(&[b"alice", b"secret"]).unwrap();
        assert_eq!(&two.name[..], b"alice");
        assert!(LaneUser::from_auth_args(&[]).is_none());
        assert!(LaneUser::from_auth_args(&[b"a", b"b", b"c"]).is_none());
        assert!(!format!("{two:?}").contains("secret"));
    }

    /// The URL's own credentials are recognised (its user defaulting to `default`); a URL
    /// without a password matches nothing.
    #[test]
    fn the_urls_credentials_keep_the_home_identity() {
        let mut target =
            crate::config::UpstreamTarget::parse("redis://:pw@127.0.0.1:6379").expect("url");
        let default_pw = LaneUser::from_auth_args(&[b"pw"]).unwrap();
        assert!(default_pw.is_the_urls(&target));
        assert!(!LaneUser::from_auth_args(&[b"other"])
            .unwrap()
            .is_the_urls(&target));
        target.username = Some("alice".into());
        assert!(!default_pw.is_the_urls(&target));
        assert!(LaneUser::from_auth_args(&[b"alice", b"pw"])
            .unwrap()
            .is_the_urls(&target));
        target.password = None;
        assert!(!default_pw.is_the_urls(&target));
    }
}
