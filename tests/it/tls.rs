//! TLS on both sides, with certificates made in the test (rcgen): a `rediss://` upstream
//! (redis-server's own TLS port, requiring a client certificate) and the TLS client
//! listener; clients with the wrong CA, without a certificate, or in plain text are turned
//! away cleanly while others carry on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::harness::eventually;
use crate::harness::{
    encode, frame_len, free_port, http_get, proxy_config, python_ok, start_proxy, RedisServer,
    SentinelServer, WAIT,
};

/// A CA and the files of certificates it signed.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "respguard test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issue `name.pem` and `name.key` for `names` (DNS names or IP addresses).
    fn issue(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A redis-server answering only TLS, requiring client certificates from `pki`.
fn tls_redis(pki: &Pki) -> (RedisServer, u16) {
    let (cert, key) = pki.issue("redis", &["localhost", "127.0.0.1"]);
    let tls_port = free_port();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        s(&cert),
        "--tls-key-file",
        s(&key),
        "--tls-ca-cert-file",
        s(&pki.path("ca.pem")),
        "--tls-auth-clients",
        "yes",
    ]);
    (server, tls_port)
}

/// A TLS client trusting `ca`, with a client certificate if given.
fn client_config(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Send `request` and read `n` replies, concatenated.
async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    request: &[u8],
    n: usize,
) -> Vec<u8> {
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut have = 0;
    let mut done = 0;
    while have < n {
        match frame_len(&buf[done..]) {
            Some(len) => {
                done += len;
                have += 1;
            }
            None => {
                let mut chunk = vec![0u8; 64 * 1024];
                let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                    .await
                    .expect("replies in time")
                    .unwrap();
                assert!(read > 0, "closed after {have} of {n} replies");
                buf.extend_from_slice(&chunk[..read]);
            }
        }
    }
    buf
}

#[tokio::test]
async fn tls_on_both_sides_carries_pipelines_and_large_values() {
    let pki = Pki::new();
    let (_server, tls_port) = tls_redis(&pki);
    let (proxy_cert, proxy_key) = pki.issue("proxy", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.issue("client", &["respguard-client"]);
    let mut raw = proxy_config(&format!("rediss://127.0.0.1:{tls_port}"));
    raw.upstream.tls.ca_file = s(&pki.path("ca.pem")).into();
    raw.upstream.tls.cert_file = s(&client_cert).into();
    raw.upstream.tls.key_file = s(&client_key).into();
    raw.proxy.tls.cert_file = s(&proxy_cert).into();
    raw.proxy.tls.key_file = s(&proxy_key).into();
    let proxy = start_proxy(raw).await;

    let mut c = tls_connect(proxy.addr, client_config(&pki.path("ca.pem"), None))
        .await
        .expect("TLS to the proxy");
    assert_eq!(exchange(&mut c, &encode(&["PING"]), 1).await, b"+PONG\r\n");
    // A pipeline of 2,000 commands and a 4 MiB value, both ways through TLS.
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1000 {
        pipeline.extend(encode(&["SET", &format!("tls:{i}"), &i.to_string()]));
        pipeline.extend(encode(&["GET", &format!("tls:{i}")]));
        expected.extend_from_slice(b"+OK\r\n");
        expected.extend(format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
    }
    assert_eq!(exchange(&mut c, &pipeline, 2000).await, expected);
    let big = "x".repeat(4 << 20);
    assert_eq!(
        exchange(&mut c, &encode(&["SET", "tls:big", &big]), 1).await,
        b"+OK\r\n"
    );
    let got = exchange(&mut c, &encode(&["GET", "tls:big"]), 1).await;
    assert_eq!(got.len(), "$4194304\r\n".len() + big.len() + 2);
    assert!(got.starts_with(b"$4194304\r\nxxx"));

    // A plain-text client is told, in RESP, and the connection closes.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain.write_all(&encode(&["PING"])).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, plain.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        answer,
        b"-ERR respguard: this port requires TLS (proxy.tls)\r\n"
    );

    // A client that trusts another CA refuses the proxy's certificate.
    let other = Pki::new();
    let refused = tls_connect(proxy.addr, client_config(&other.path("ca.pem"), None)).await;
    assert!(
        refused.is_err(),
        "a client with the wrong CA must not connect"
    );

    // The first client carries on.
    assert_eq!(
        exchange(&mut c, &encode(&["GET", "tls:7"]), 1).await,
        b"$1\r\n7\r\n"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let pki = Pki::new();
    let server = RedisServer::start();
    let (proxy_cert, proxy_key) = pki.issue("proxy", &["localhost"]);
    let (client_cert, client_key) = pki.issue("client", &["app"]);
    let mut raw = proxy_config(&server.url());
    raw.proxy.tls.cert_file = s(&proxy_cert).into();
    raw.proxy.tls.key_file = s(&proxy_key).into();
    raw.proxy.tls.client_ca_file = s(&pki.path("ca.pem")).into();
    let proxy = start_proxy(raw).await;

    let with_cert = client_config(&pki.path("ca.pem"), Some((&client_cert, &client_key)));
    let mut c = tls_connect(proxy.addr, with_cert).await.unwrap();
    assert_eq!(exchange(&mut c, &encode(&["PING"]), 1).await, b"+PONG\r\n");

    // Without a certificate, TLS 1.3 completes the client's side of the handshake; the
    // proxy's refusal arrives as the connection closing before any reply.
    let without = client_config(&pki.path("ca.pem"), None);
    if let Ok(mut c) = tls_connect(proxy.addr, without).await {
        let _ = c.write_all(&encode(&["PING"])).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(
            read.is_err() || rest.is_empty(),
            "no reply without a certificate: {rest:?}"
        );
    }
    let body = http_get(proxy.admin_addr.unwrap(), "/status").await.body;
    assert!(
        body.contains("\"connected\": 1"),
        "only the certified client stays: {body}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_with_an_untrusted_certificate_is_reported_to_clients() {
    let pki = Pki::new();
    let (_server, tls_port) = tls_redis(&pki);
    let other = Pki::new();
    let mut raw = proxy_config(&format!("rediss://127.0.0.1:{tls_port}"));
    raw.upstream.tls.ca_file = s(&other.path("ca.pem")).into();
    raw.upstream.command_table = "builtin".into();
    let proxy = start_proxy(raw).await;
    let mut c = crate::harness::Conn::open(proxy.addr).await;
    let reply = c.call(&["GET", "k"]).await;
    assert!(
        reply.starts_with(&format!("-ERR respguard: upstream 127.0.0.1:{tls_port} unreachable: TLS handshake failed: invalid peer certificate")),
        "{reply}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_talks_tls_to_the_proxy() {
    let pki = Pki::new();
    let server = RedisServer::start();
    let (proxy_cert, proxy_key) = pki.issue("proxy", &["localhost"]);
    let mut raw = proxy_config(&server.url());
    raw.proxy.tls.cert_file = s(&proxy_cert).into();
    raw.proxy.tls.key_file = s(&proxy_key).into();
    let proxy = start_proxy(raw).await;
    let script = format!(
        r#"
import redis
r = redis.Redis(host="localhost", port={port}, ssl=True, ssl_ca_certs="{ca}")
r.set("py:tls", "v")
assert r.get("py:tls") == b"v"
p = r.pipeline(transaction=True)
for i in range(100):
    p.incr("py:tls:n")
assert p.execute()[-1] == 100
print("ok")
"#,
        port = proxy.addr.port(),
        ca = s(&pki.path("ca.pem")),
    );
    python_ok(&script).await;
    proxy.shutdown().await;
}

/// `respguard audit` reads a `rediss://` Redis that requires a client certificate.
#[tokio::test]
async fn the_audit_reads_a_tls_redis() {
    let pki = Pki::new();
    let (server, tls_port) = tls_redis(&pki);
    let (client_cert, client_key) = pki.issue("auditor", &["respguard-audit"]);
    let mut plain = TcpStream::connect(server.addr()).await.unwrap();
    let mut pipeline = Vec::new();
    for i in 0..300 {
        pipeline.extend(encode(&["SET", &format!("tls:{i}"), "v"]));
    }
    exchange(&mut plain, &pipeline, 300).await;
    let ca = pki.path("ca.pem");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_respguard"))
            .args(["audit", "--json", "--upstream"])
            .arg(format!("rediss://127.0.0.1:{tls_port}"))
            .args(["--tls-ca-file", s(&ca)])
            .args(["--tls-cert-file", s(&client_cert)])
            .args(["--tls-key-file", s(&client_key)])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scanned_keys"], 300);
    assert_eq!(report["prefixes"][0]["prefix"], "tls:*");
}

/// `rediss-sentinel://`: the sentinel answers only TLS (no plain port) and requires a
/// client certificate, as does the primary; the proxy finds the primary through the
/// sentinel over TLS, with the upstream's certificates, and serves clients through it.
#[tokio::test]
async fn rediss_sentinel_reaches_sentinels_and_the_primary_over_tls() {
    const MASTER: &str = "tls-primary";
    let pki = Pki::new();
    let (primary, tls_port) = tls_redis(&pki);
    let (cert, key) = pki.issue("sentinel", &["localhost", "127.0.0.1"]);
    let sentinel_port = free_port();
    let tls = format!(
        "port 0\ntls-port {sentinel_port}\ntls-cert-file {}\ntls-key-file {}\n\
         tls-ca-cert-file {}\ntls-auth-clients yes\ntls-replication yes\n",
        s(&cert),
        s(&key),
        s(&pki.path("ca.pem"))
    );
    let _sentinel = SentinelServer::start_configured(sentinel_port, MASTER, tls_port, 1, &tls);
    let (client_cert, client_key) = pki.issue("client", &["respguard-client"]);
    let mut raw = proxy_config(&format!(
        "rediss-sentinel://127.0.0.1:{sentinel_port}#{MASTER}"
    ));
    raw.upstream.tls.ca_file = s(&pki.path("ca.pem")).into();
    raw.upstream.tls.cert_file = s(&client_cert).into();
    raw.upstream.tls.key_file = s(&client_key).into();
    let proxy = start_proxy(raw).await;

    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let set = encode(&["SET", "over-tls", "yes"]);
    eventually!(WAIT, "the proxy serving through the TLS sentinel", {
        let answer = String::from_utf8_lossy(&exchange(&mut c, &set, 1).await).into_owned();
        if answer == "+OK\r\n" {
            Ok(())
        } else {
            Err(answer)
        }
    });
    let mut direct = TcpStream::connect(primary.addr()).await.unwrap();
    assert_eq!(
        exchange(&mut direct, &encode(&["GET", "over-tls"]), 1).await,
        b"$3\r\nyes\r\n"
    );
    proxy.shutdown().await;
}
