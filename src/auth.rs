//! Client authentication to the proxy itself (`[auth]`): in the central deployment,
//! applications authenticate to respguard with their own credentials, and each is mapped
//! to the Redis credentials its commands run with, so no application holds the Redis
//! password.
//!
//! Passwords are kept only as SHA-256 digests and compared in constant time. The session
//! answers what Redis would (`-NOAUTH`, `-WRONGPASS`), and turns an accepted `AUTH`/`HELLO
//! … AUTH` into the mapped user's own `AUTH` so that Redis applies that user's ACL.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::RawAuth;

/// Redis's reply to a command sent before authenticating.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis's reply to a wrong user or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// One user clients may authenticate as.
#[derive(Clone)]
pub struct ProxyUser {
    /// The name clients give.
    pub name: Bytes,
    digest: [u8; 32],
    /// The Redis user and password this client's commands run as; `None`: Redis's
    /// `default` user (configuration allows it only when `upstream.url` has no password).
    pub upstream: Option<(Bytes, Bytes)>,
}

impl std::fmt::Debug for ProxyUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUser")
            .field("name", &String::from_utf8_lossy(&self.name))
            .finish_non_exhaustive()
    }
}

/// The users of `[auth]`; empty when clients need not authenticate to the proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyAuth {
    users: Vec<ProxyUser>,
}

impl ProxyAuth {
    /// The users of a validated `[auth]` section.
    pub fn build(raw: &RawAuth) -> Self {
        let users = raw
            .users
            .iter()
            .map(|u| ProxyUser {
                name: Bytes::copy_from_slice(u.name.as_bytes()),
                digest: if u.password.is_empty() {
                    let mut d = [0u8; 32];
                    for (i, byte) in d.iter_mut().enumerate() {
                        *byte = u8::from_str_radix(&u.password_sha256[2 * i..2 * i + 2], 16)
                            .expect("validated hex");
                    }
                    d
                } else {
                    Sha256::digest(u.password.as_bytes()).into()
                },
                upstream: (!u.upstream_user.is_empty()).then(|| {
                    (
                        Bytes::copy_from_slice(u.upstream_user.as_bytes()),
                        Bytes::copy_from_slice(u.upstream_password.as_bytes()),
                    )
                }),
            })
            .collect();
        ProxyAuth { users }
    }

    /// True when clients must authenticate to the proxy.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user `name` (`default` for `AUTH password`) if `password` is theirs.
    pub fn check(&self, name: &[u8], password: &[u8]) -> Option<&ProxyUser> {
        let digest: [u8; 32] = Sha256::digest(password).into();
        let user = self.users.iter().find(|u| u.name == name)?;
        // Compare every byte whatever the first difference, so timing tells nothing.
        let diff = user
            .digest
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawProxyUser;

    #[test]
    fn clear_and_hashed_passwords_are_checked() {
        let auth = ProxyAuth::build(&RawAuth {
            users: vec![
                RawProxyUser {
                    name: "app".into(),
                    password: "s3cret".into(),
                    ..Default::default()
                },
                RawProxyUser {
                    name: "default".into(),
                    // sha256("hunter2")
                    password_sha256:
                        "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7".into(),
                    upstream_user: "ro".into(),
                    upstream_password: "ro-pass".into(),
                    ..Default::default()
                },
            ],
        });
        assert!(auth.required());
        assert!(auth.check(b"app", b"s3cret").is_some());
        assert!(auth.check(b"app", b"s3cret!").is_none());
        assert!(auth.check(b"nobody", b"s3cret").is_none());
        let d = auth.check(b"default", b"hunter2").expect("hashed password");
        assert_eq!(
            d.upstream.as_ref().map(|(u, _)| u.as_ref()),
            Some(&b"ro"[..])
        );
        assert!(!ProxyAuth::default().required());
    }
}
