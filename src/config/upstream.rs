//! Where Redis is: the upstream URL parsed into an [`UpstreamTarget`] (address, TLS,
//! credentials, database, or the Sentinel deployment that names the primary), and the TLS
//! connector and acceptor built from the files named.

use std::fmt;

use super::error::{invalid, ConfigError};

/// The upstream Redis address and credentials, from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `host:port`.
    pub address: String,
    /// ACL user, if given.
    pub username: Option<String>,
    /// Password, if given.
    pub password: Option<String>,
    /// Database to SELECT after connecting.
    pub db: u32,
    /// The host, as the URL gives it (the TLS server name by default).
    pub host: String,
    /// `rediss://` (or `rediss-sentinel://`): connect with TLS (behind Sentinel, to the
    /// sentinels and the data nodes alike).
    pub tls: bool,
    /// `redis-sentinel://`: the primary is found through these sentinels, and `address`
    /// and `host` are empty (the address is the gate's, and changes on failover).
    pub sentinel: Option<SentinelTarget>,
}

/// The Sentinel deployment a `redis-sentinel://` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The master name the sentinels monitor (the URL's fragment).
    pub master: String,
    /// The sentinels, `host:port` each (port 26379 when not given), in the URL's order.
    pub sentinels: Vec<String>,
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("UpstreamTarget")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

impl UpstreamTarget {
    /// Parse `redis://[user:password@]host[:port][/db]` (or `rediss://`), or
    /// `redis-sentinel://[user:password@]host[:port][,host[:port]…][/db]#master` (or
    /// `rediss-sentinel://`, see [`Self::parse_sentinel`]).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let key = "upstream.url";
        if s.starts_with("redis-sentinel://") || s.starts_with("rediss-sentinel://") {
            return Self::parse_sentinel(s);
        }
        let url = url::Url::parse(s).map_err(|e| invalid(key, format!("`{s}`: {e}")))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(
                    key,
                    format!("scheme `{other}`: expected redis://host:port, rediss://host:port or redis-sentinel://host:port,host:port#master"),
                ))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| invalid(key, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = url.port().unwrap_or(6379);
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let decode = |p: &str| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        let path = url.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| invalid(key, format!("database `{path}` is not a number")))?
        };
        Ok(UpstreamTarget {
            address,
            username,
            password,
            db,
            host: host.to_string(),
            tls,
            sentinel: None,
        })
    }

    /// Parse a Sentinel URL, the Lettuce form:
    /// `redis-sentinel://[user:password@]host[:port][,host[:port]…][/db]#master`. The
    /// credentials and the database are the data nodes' (AUTH and SELECT on every
    /// connection to the primary); the sentinels are asked without AUTH unless
    /// `upstream.sentinel_password` is set. `rediss-sentinel://` uses TLS to the sentinels
    /// and the data nodes. The `url` crate cannot read a list of hosts, hence this small parser.
    pub fn parse_sentinel(s: &str) -> Result<Self, ConfigError> {
        let key = "upstream.url";
        let bad = |why: String| invalid(key, format!("`{}`: {why}", redact(s)));
        let (tls, rest) = if let Some(rest) = s.strip_prefix("rediss-sentinel://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("redis-sentinel://") {
            (false, rest)
        } else {
            return Err(bad(
                "expected redis-sentinel:// or rediss-sentinel://".into()
            ));
        };
        let decode = |p: &str| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("not UTF-8 once percent-decoded".into()))
        };
        let (rest, master) = rest
            .split_once('#')
            .ok_or_else(|| bad("no master name: end the URL with #mastername".into()))?;
        let master = decode(master)?;
        if master.is_empty() {
            return Err(bad("empty master name after `#`".into()));
        }
        if rest.contains('?') {
            return Err(bad("query parameters are not supported".into()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| decode(u)).transpose()?,
                    Some(decode(p)?),
                ),
                None => ((!info.is_empty()).then(|| decode(info)).transpose()?, None),
            },
        };
        let mut sentinels = Vec::new();
        for part in hosts.split(',') {
            sentinels.push(sentinel_address(part).map_err(&bad)?);
        }
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| bad(format!("database `{path}` is not a number")))?
        };
        Ok(UpstreamTarget {
            address: String::new(),
            username,
            password,
            db,
            host: String::new(),
            tls,
            sentinel: Some(SentinelTarget { master, sentinels }),
        })
    }
}

/// One sentinel of a Sentinel URL: `host`, `host:port`, `[v6]` or `[v6]:port` (port
/// 26379 when not given), as `host:port`.
fn sentinel_address(part: &str) -> Result<String, String> {
    if part.is_empty() {
        return Err("an empty sentinel address (two commas, or none before `/` or `#`)".into());
    }
    let (host, port) = if let Some(v6) = part.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{part}`: no `]` after an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("`{part}`: expected `:port` after `]`"))?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        match part.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (part.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("`{part}`: no host"));
    }
    if host.contains(['@', ' ', '/']) {
        return Err(format!("`{part}`: not a host"));
    }
    let port: u16 = match port {
        None => 26379,
        Some(p) => p
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{part}`: port `{p}` is not a number from 1 to 65535"))?,
    };
    Ok(format!("{host}:{port}"))
}

/// `url` with its password hidden, for an error message.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// What a `rediss://` connection needs: the connector (trusted CAs, client certificate) and
/// the name to verify.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The TLS client.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must carry; `None` behind Sentinel with no
    /// `upstream.tls.server_name`: the host of the primary found.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The client listener's TLS acceptor.
#[derive(Clone)]
pub struct ListenerTls(pub tokio_rustls::TlsAcceptor);

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListenerTls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        UpstreamTarget::parse(url).unwrap_err().to_string()
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_data_nodes_credentials() {
        let t = UpstreamTarget::parse(
            "redis-sentinel://app:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/2#my%20primary",
        )
        .unwrap();
        let s = t.sentinel.as_ref().unwrap();
        assert_eq!(s.master, "my primary");
        assert_eq!(
            s.sentinels,
            ["10.0.0.1:26380", "sentinel-b:26379", "[::1]:26381"]
        );
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 2);
        assert!(!t.tls);
        assert_eq!(t.address, "");
    }

    #[test]
    fn the_tls_form_and_a_password_without_user() {
        let t = UpstreamTarget::parse("rediss-sentinel://:pw@h1:1,h2:2#m").unwrap();
        assert!(t.tls);
        assert_eq!(t.username, None);
        assert_eq!(t.password.as_deref(), Some("pw"));
        assert_eq!(t.sentinel.unwrap().sentinels, ["h1:1", "h2:2"]);
        let t = UpstreamTarget::parse("redis-sentinel://[::1]#m").unwrap();
        assert_eq!(t.sentinel.unwrap().sentinels, ["[::1]:26379"]);
    }

    #[test]
    fn bad_sentinel_urls_are_refused_naming_the_key_and_the_fault() {
        for (url, fault) in [
            ("redis-sentinel://h1:26379", "no master name"),
            ("redis-sentinel://h1:26379#", "empty master name"),
            ("redis-sentinel://h1,,h2#m", "empty sentinel address"),
            ("redis-sentinel://#m", "empty sentinel address"),
            ("redis-sentinel://h1:0#m", "port `0`"),
            ("redis-sentinel://h1:x#m", "port `x`"),
            ("redis-sentinel://h1:70000#m", "port `70000`"),
            ("redis-sentinel://[::1#m", "no `]`"),
            ("redis-sentinel://[::1]x#m", "expected `:port`"),
            ("redis-sentinel://h1/x#m", "database `x`"),
            ("redis-sentinel://h1?timeout=1#m", "query parameters"),
            ("redis-sentinel://:a@b@:1#m", "no host"),
        ] {
            let e = error(url);
            assert!(
                e.contains("upstream.url") && e.contains(fault),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn a_cluster_url_is_refused_while_no_router_uses_it() {
        // src/cluster holds the slot map and routes, but nothing routes commands by slot
        // yet (docs/cluster.md): a cluster must not be offered as an upstream.
        for url in [
            "redis-cluster://h1:7000,h2:7001",
            "redis-cluster://u:p@h1:7000",
        ] {
            assert!(UpstreamTarget::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn an_error_never_shows_the_password() {
        let e = error("redis-sentinel://u:hunter2@h1,,h2#m");
        assert!(
            !e.contains("hunter2") && e.contains("u:<redacted>@h1"),
            "{e}"
        );
    }

    #[test]
    fn a_plain_url_names_no_sentinel() {
        assert_eq!(UpstreamTarget::parse("redis://h:1").unwrap().sentinel, None);
        assert!(error("sentinel://h#m").contains("redis-sentinel://"));
    }
}
