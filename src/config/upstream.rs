//! Where Redis is: the upstream URL parsed into an [`UpstreamTarget`] (address, TLS,
//! credentials, database), and the TLS connector and acceptor built from the files named.

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
    /// `rediss://`: connect with TLS.
    pub tls: bool,
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
            .finish()
    }
}

impl UpstreamTarget {
    /// Parse `redis://[user:password@]host[:port][/db]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let key = "upstream.url";
        let url = url::Url::parse(s).map_err(|e| invalid(key, format!("`{s}`: {e}")))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(
                    key,
                    format!("scheme `{other}`: expected redis://host:port or rediss://host:port"),
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
        })
    }
}

/// What a `rediss://` connection needs: the connector (trusted CAs, client certificate) and
/// the name to verify.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The TLS client.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must carry.
    pub server_name: rustls_pki_types::ServerName<'static>,
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
