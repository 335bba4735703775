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
    /// `redis-cluster://`: a Redis Cluster, whose topology these seed nodes describe;
    /// `address` and `host` are the first seed's.
    pub cluster: Option<ClusterTarget>,
}

/// The Redis Cluster a `redis-cluster://` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    /// The seed nodes, `host:port` each (port 6379 when not given), in the URL's order: any
    /// of them can describe the whole cluster.
    pub seeds: Vec<String>,
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
            .field("cluster", &self.cluster)
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
        if s.starts_with("redis-cluster://") || s.starts_with("rediss-cluster://") {
            return Self::parse_cluster(s);
        }
        let url = url::Url::parse(s).map_err(|e| invalid(key, format!("`{s}`: {e}")))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(
                    key,
                    format!("scheme `{other}`: expected redis://host:port, rediss://host:port, redis-sentinel://host:port,host:port#master or redis-cluster://host:port,host:port"),
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
            cluster: None,
        })
    }

    /// Parse a Sentinel URL, the Lettuce form:
    /// `redis-sentinel://[user:password@]host[:port][,host[:port]…][/db]#master`. The
    /// credentials and the database are the data nodes' (AUTH and SELECT on every
    /// connection to the primary); the sentinels are asked without AUTH unless
    /// `upstream.sentinel_password` is set. `rediss-sentinel://` uses TLS to the sentinels
    /// and the data nodes. The `url` crate cannot read a list of hosts, hence this small parser.
    pub fn parse_sentinel(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| invalid("upstream.url", format!("`{}`: {why}", redact(s)));
        let (tls, rest) = if let Some(rest) = s.strip_prefix("rediss-sentinel://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("redis-sentinel://") {
            (false, rest)
        } else {
            return Err(bad(
                "expected redis-sentinel:// or rediss-sentinel://".into()
            ));
        };
        let (rest, master) = rest
            .split_once('#')
            .ok_or_else(|| bad("no master name: end the URL with #mastername".into()))?;
        let master = percent_decoded(master).map_err(&bad)?;
        if master.is_empty() {
            return Err(bad("empty master name after `#`".into()));
        }
        let list = HostList::parse(rest, 26379).map_err(&bad)?;
        Ok(UpstreamTarget {
            address: String::new(),
            username: list.username,
            password: list.password,
            db: list.db,
            host: String::new(),
            tls,
            sentinel: Some(SentinelTarget {
                master,
                sentinels: list.hosts,
            }),
            cluster: None,
        })
    }

    /// Parse a Redis Cluster URL: `redis-cluster://[user:password@]host[:port][,host[:port]…]`
    /// (`rediss-cluster://` for TLS to every node). The hosts are seeds: any one that
    /// answers describes the cluster. The credentials are every node's. Redis Cluster has
    /// database 0 only, so a database other than 0 is refused.
    pub fn parse_cluster(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| invalid("upstream.url", format!("`{}`: {why}", redact(s)));
        let (tls, rest) = if let Some(rest) = s.strip_prefix("rediss-cluster://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("redis-cluster://") {
            (false, rest)
        } else {
            return Err(bad("expected redis-cluster:// or rediss-cluster://".into()));
        };
        if rest.contains('#') {
            return Err(bad("a cluster URL names no master (`#`)".into()));
        }
        let list = HostList::parse(rest, 6379).map_err(&bad)?;
        if list.db != 0 {
            return Err(bad(format!(
                "database {}: Redis Cluster has database 0 only",
                list.db
            )));
        }
        let address = list.hosts[0].clone();
        let host = address[..address.rfind(':').unwrap_or(address.len())]
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(UpstreamTarget {
            address,
            username: list.username,
            password: list.password,
            db: 0,
            host,
            tls,
            sentinel: None,
            cluster: Some(ClusterTarget { seeds: list.hosts }),
        })
    }
}

/// What follows the scheme of a URL naming several hosts:
/// `[user:password@]host[:port][,host[:port]…][/db]`. The `url` crate cannot read a list
/// of hosts, hence this small parser.
struct HostList {
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<String>,
    db: u32,
}

impl HostList {
    /// Read `rest`, giving a host without a port `default_port`; the error says why.
    fn parse(rest: &str, default_port: u16) -> Result<Self, String> {
        if rest.contains('?') {
            return Err("query parameters are not supported".into());
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
                    (!u.is_empty()).then(|| percent_decoded(u)).transpose()?,
                    Some(percent_decoded(p)?),
                ),
                None => (
                    (!info.is_empty())
                        .then(|| percent_decoded(info))
                        .transpose()?,
                    None,
                ),
            },
        };
        let hosts = hosts
            .split(',')
            .map(|part| host_address(part, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| format!("database `{path}` is not a number"))?
        };
        Ok(HostList {
            username,
            password,
            hosts,
            db,
        })
    }
}

/// `part` percent-decoded, or why it cannot be.
fn percent_decoded(part: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "not UTF-8 once percent-decoded".into())
}

/// One host of a URL's list: `host`, `host:port`, `[v6]` or `[v6]:port` (`default_port`
/// when not given), as `host:port`.
fn host_address(part: &str, default_port: u16) -> Result<String, String> {
    if part.is_empty() {
        return Err("an empty address (two commas, or none before `/` or `#`)".into());
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
        None => default_port,
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
            ("redis-sentinel://h1,,h2#m", "empty address"),
            ("redis-sentinel://#m", "empty address"),
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
    fn a_cluster_url_names_its_seeds_and_credentials() {
        let t = UpstreamTarget::parse("redis-cluster://u:p%40ss@h1:7000,h2,[::1]:7002").unwrap();
        let cluster = t.cluster.as_ref().unwrap();
        assert_eq!(cluster.seeds, ["h1:7000", "h2:6379", "[::1]:7002"]);
        assert_eq!((t.address.as_str(), t.host.as_str()), ("h1:7000", "h1"));
        assert_eq!(t.username.as_deref(), Some("u"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert!(!t.tls && t.sentinel.is_none());
        let tls = UpstreamTarget::parse("rediss-cluster://h1:7000/0").unwrap();
        assert!(tls.tls && tls.cluster.is_some());
    }

    #[test]
    fn a_cluster_url_with_a_database_or_a_master_is_refused() {
        for (url, fault) in [
            ("redis-cluster://h1:7000/3", "database 0 only"),
            ("redis-cluster://h1:7000#m", "no master"),
            ("redis-cluster://h1,,h2", "empty address"),
            ("redis-cluster://h1:0", "port"),
        ] {
            let e = error(url);
            assert!(e.contains(fault), "{url}: {e}");
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
