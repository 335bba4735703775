//! Who a client connection is: what guards match rules against and what logs name.
//!
//! The session fills it in from what the client does, and only once Redis has accepted it:
//! the user after a successful AUTH or HELLO ... AUTH, the name after CLIENT SETNAME (or
//! HELLO ... SETNAME), the library after CLIENT SETINFO LIB-NAME. A RESET forgets them all,
//! as Redis does.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

/// The identity of one client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's address (its port included, though rules never use the port: a pool
    /// spreads one application over many). An IPv4 client of a dual-stack listener has its
    /// IPv4 address here, not the IPv4-mapped IPv6 one.
    pub peer: SocketAddr,
    /// The ACL user Redis accepted, if the client authenticated.
    pub user: Option<Bytes>,
    /// The name set with CLIENT SETNAME.
    pub name: Option<Bytes>,
    /// The client library, from CLIENT SETINFO LIB-NAME.
    pub lib_name: Option<Bytes>,
}

impl ClientIdentity {
    /// A new connection from `peer`: nothing known yet.
    pub fn new(peer: SocketAddr) -> Self {
        ClientIdentity {
            peer,
            user: None,
            name: None,
            lib_name: None,
        }
    }

    /// The name CLIENT SETNAME (or HELLO ... SETNAME) gave; an empty one removes it, as in
    /// Redis.
    pub fn set_name(&mut self, name: Bytes) {
        self.name = (!name.is_empty()).then_some(name);
    }

    /// The library CLIENT SETINFO LIB-NAME gave; an empty one removes it, as in Redis.
    pub fn set_lib_name(&mut self, lib: Bytes) {
        self.lib_name = (!lib.is_empty()).then_some(lib);
    }

    /// Back to a new connection's state (after RESET).
    pub fn reset(&mut self) {
        *self = ClientIdentity::new(self.peer);
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer)?;
        if let Some(u) = &self.user {
            write!(f, " user={}", String::from_utf8_lossy(u))?;
        }
        if let Some(n) = &self.name {
            write!(f, " name={}", String::from_utf8_lossy(n))?;
        }
        if let Some(l) = &self.lib_name {
            write!(f, " lib={}", String::from_utf8_lossy(l))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CLIENT SETNAME and SETINFO LIB-NAME with an empty value remove what was set, as
    /// Redis does; any other value replaces it.
    #[test]
    fn an_empty_name_or_library_removes_it() {
        let mut id = ClientIdentity::new("127.0.0.1:1".parse().unwrap());
        id.set_name(Bytes::from_static(b"app"));
        id.set_lib_name(Bytes::from_static(b"redis-py"));
        assert_eq!(id.name.as_deref(), Some(&b"app"[..]));
        assert_eq!(id.lib_name.as_deref(), Some(&b"redis-py"[..]));
        id.set_name(Bytes::new());
        id.set_lib_name(Bytes::new());
        assert_eq!((id.name, id.lib_name), (None, None));
    }
}
