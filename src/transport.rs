//! The byte streams the proxy talks over: plain TCP, or TLS over TCP (a TLS client
//! listener, a `rediss://` upstream), behind one type so the session, the gate and the
//! monitor do not care which.
//!
//! Plain TCP keeps its fast paths: borrowed halves for reading and writing at once, and
//! `try_write` straight from the read handler. A TLS stream is split into owned halves, and
//! remembers that records may sit encrypted in its buffer after a write, so the session
//! keeps polling it for a flush until they are on the wire.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls;

/// A TLS stream over TCP, client or server side.
type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// A TLS connection, split so that it can be read and written at once.
pub struct TlsParts {
    read: ReadHalf<TlsStream>,
    write: WriteHalf<TlsStream>,
    /// A second handle on the socket, to peek at it (see [`Stream::has_unread_bytes`]).
    socket: std::net::TcpStream,
    /// Bytes were written since the last completed flush.
    unflushed: bool,
}

/// A connection to a client or to Redis.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsParts>),
    /// One end of a socket pair inside the process: a session's side of a connection
    /// whose other end a router task holds (a Redis Cluster upstream).
    Local(UnixStream),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Tcp(_) => "Stream::Tcp",
            Stream::Tls(_) => "Stream::Tls",
            Stream::Local(_) => "Stream::Local",
        })
    }
}

impl Stream {
    /// Wrap an established TLS connection over `tcp`'s socket.
    pub fn tls(stream: TlsStream) -> io::Result<Self> {
        let socket = {
            let tcp = stream.get_ref().0;
            socket2::SockRef::from(tcp).try_clone()?.into()
        };
        let (read, write) = tokio::io::split(stream);
        Ok(Stream::Tls(Box::new(TlsParts {
            read,
            write,
            socket,
            unflushed: false,
        })))
    }

    /// The halves, to read and write at once.
    pub fn halves(&mut self) -> (Reader<'_>, Writer<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (Reader::Tcp(r), Writer::Tcp(w))
            }
            Stream::Tls(t) => {
                let TlsParts {
                    read,
                    write,
                    unflushed,
                    ..
                } = &mut **t;
                (Reader::Tls(read), Writer::Tls(write, unflushed))
            }
            Stream::Local(s) => {
                let (r, w) = s.split();
                (Reader::Local(r), Writer::Local(w))
            }
        }
    }

    /// Write what the socket takes now without waiting (plain TCP only; a TLS stream says
    /// `WouldBlock` and is written by the session's event loop).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Local(s) => s.try_write(buf),
            Stream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// The local address of a TCP connection (plain or TLS): for a client, the address it
    /// reached the proxy at. `None` for a socket pair's end.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Tls(t) => t.socket.local_addr().ok(),
            Stream::Local(_) => None,
        }
    }

    /// True while encrypted bytes may wait in the TLS buffer for a flush.
    pub fn wants_flush(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.unflushed)
    }

    /// True when the peer sent bytes not read yet (asked of the kernel, not of tokio's
    /// cached readiness). For TLS these are encrypted, which is all a "has the client sent
    /// more?" question needs.
    pub fn has_unread_bytes(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peeked = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).peek(&mut probe),
            Stream::Tls(t) => socket2::SockRef::from(&t.socket).peek(&mut probe),
            Stream::Local(s) => socket2::SockRef::from(s).peek(&mut probe),
        };
        matches!(peeked, Ok(n) if n > 0)
    }

    /// True when the peer has sent nothing and has not closed: an idle connection that can
    /// be used again (asked of the kernel, like [`Stream::has_unread_bytes`]).
    pub fn is_quiet_and_open(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let socket = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Tls(t) => socket2::SockRef::from(&t.socket),
            Stream::Local(s) => socket2::SockRef::from(s),
        };
        // The socket is non-blocking (tokio's): an empty, open one says "would block".
        let peeked = socket.peek(&mut probe);
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(&mut t.read).poll_read(cx, buf),
            Stream::Local(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(&mut t.write).poll_write(cx, buf),
            Stream::Local(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(&mut t.write).poll_flush(cx),
            Stream::Local(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(&mut t.write).poll_shutdown(cx),
            Stream::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The reading half of a [`Stream`].
pub enum Reader<'a> {
    /// Plain TCP.
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    /// TLS.
    Tls(&'a mut ReadHalf<TlsStream>),
    /// A socket pair's end.
    Local(tokio::net::unix::ReadHalf<'a>),
}

impl AsyncRead for Reader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Tls(r) => Pin::new(&mut **r).poll_read(cx, buf),
            Reader::Local(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The writing half of a [`Stream`].
pub enum Writer<'a> {
    /// Plain TCP.
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    /// TLS, and its "bytes may wait for a flush" flag.
    Tls(&'a mut WriteHalf<TlsStream>, &'a mut bool),
    /// A socket pair's end.
    Local(tokio::net::unix::WriteHalf<'a>),
}

impl Writer<'_> {
    /// Write some of `buf`; with an empty `buf`, flush what TLS holds (returns 0).
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(w) => w.write(buf).await,
            Writer::Local(w) => w.write(buf).await,
            Writer::Tls(w, unflushed) => {
                if buf.is_empty() {
                    w.flush().await?;
                    **unflushed = false;
                    return Ok(0);
                }
                let n = w.write(buf).await?;
                **unflushed = true;
                Ok(n)
            }
        }
    }
}

/// Settings of a TLS client (the `rediss://` upstream).
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    /// PEM CA certificates to trust; `None`: the system's roots.
    pub ca_file: Option<String>,
    /// PEM client certificate chain and key, for servers that require client certificates.
    pub cert_file: Option<String>,
    /// The key of `cert_file`.
    pub key_file: Option<String>,
}

/// Settings of the TLS client listener.
#[derive(Debug, Clone, Default)]
pub struct ServerTlsFiles {
    /// PEM certificate chain.
    pub cert_file: String,
    /// Its PEM private key.
    pub key_file: String,
    /// PEM CA certificates clients must present a certificate from; `None`: no client
    /// certificates.
    pub client_ca_file: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(certs)
}

fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(Path::new(path)).map_err(|e| format!("{path}: {e}"))
}

fn roots(ca_file: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set upstream.tls.ca_file".into());
            }
        }
    }
    Ok(roots)
}

/// A TLS connector for the upstream, from its files (errors name the file and the problem).
pub fn connector(files: &ClientTlsFiles) -> Result<tokio_rustls::TlsConnector, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(files.ca_file.as_deref())?);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| format!("{cert}: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("cert_file and key_file go together".into()),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A TLS acceptor for the client listener, from its files.
pub fn acceptor(files: &ServerTlsFiles) -> Result<tokio_rustls::TlsAcceptor, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(Some(path))?),
                provider(),
            )
            .build()
            .map_err(|e| format!("{path}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            certificates(&files.cert_file)?,
            private_key(&files.key_file)?,
        )
        .map_err(|e| format!("{}: {e}", files.cert_file))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The name to verify an upstream's certificate against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("`{name}`: {e}"))
}
