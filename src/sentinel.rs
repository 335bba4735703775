//! Finding the primary through Redis Sentinel, and following it across failovers.
//!
//! With a `redis-sentinel://` URL the upstream's address is not configured but found: the
//! [`SentinelWatcher`] asks the sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`, the first that
//! answers, in the URL's order), checks the node it names with `ROLE` (it must say
//! `master`), and sets it on the [`ConnectGate`], which every connection of the proxy goes
//! through (sessions, shared connections, the monitor, the command table). From then on it
//! follows the primary three ways:
//! - a subscription to `+switch-master` on one sentinel (another when that one is lost):
//!   Sentinel's own announcement of a failover, acted on at once;
//! - a periodic question to the sentinels (every [`CHECK_INTERVAL`]), for a missed
//!   announcement;
//! - at once when a connection finds the node it reached is not a master (the gate's ROLE
//!   check), e.g. a demoted primary the sentinels still name.
//!
//! A new primary is checked with ROLE before the switch; the switch
//! ([`ConnectGate::switch_to`]) shuts down every connection to the old one, so commands in
//! flight there get the proxy's connection-lost error and the next command goes to the new
//! primary. Each switch is logged and counted (`respguard_upstream_failovers_total`).
//!
//! The sentinels are asked without AUTH unless `upstream.sentinel_password` is set: the
//! URL's credentials are the data nodes'. Connections to the sentinels are plain TCP.
//!
//! Never touches a session: what sessions see of a failover is their connection lost.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::config::SentinelTarget;
use crate::upstream::ConnectGate;

/// How often the sentinels are asked where the primary is, besides the announcements.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Follows the primary of one Sentinel master name for a proxy.
#[derive(Debug)]
pub struct SentinelWatcher {
    gate: Arc<ConnectGate>,
    target: SentinelTarget,
    /// `upstream.sentinel_password`, if set.
    password: Option<String>,
    /// Longest wait for one sentinel (connect and answer).
    timeout: Duration,
    /// The sentinel that answered last: asked first next time.
    preferred: usize,
    /// The last reason no primary could be found, logged once until it changes.
    last_failure: Option<String>,
}

impl SentinelWatcher {
    /// A watcher setting the primary of `target` on `gate`.
    pub fn new(
        gate: Arc<ConnectGate>,
        target: SentinelTarget,
        password: Option<String>,
        timeout: Duration,
    ) -> Self {
        SentinelWatcher {
            gate,
            target,
            password,
            timeout,
            preferred: 0,
            last_failure: None,
        }
    }

    /// Find the primary now (at start): the sentinels are asked and the node checked, each
    /// within the timeout. On failure the gate refuses connections with the reason (clients
    /// get it as their error, `/readyz` says not ready) and [`Self::run`] keeps asking.
    pub async fn discover(&mut self) -> Result<String, String> {
        match self.find().await {
            Ok(address) => {
                self.gate.switch_to(&address);
                tracing::info!(master = %self.target.master, primary = %address, "primary found through the sentinels");
                Ok(address)
            }
            Err(reason) => {
                tracing::error!(master = %self.target.master, %reason, "no primary found through the sentinels; retrying every second");
                self.gate.no_primary_known(reason.clone());
                self.last_failure = Some(reason.clone());
                Err(reason)
            }
        }
    }

    /// Follow the primary until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (announced_tx, mut announced) = mpsc::channel(16);
        tokio::spawn(subscribe(
            self.target.clone(),
            self.password.clone(),
            self.timeout,
            announced_tx,
            shutdown.clone(),
        ));
        let mut ticker = tokio::time::interval(CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let gate = Arc::clone(&self.gate);
            let hint = tokio::select! {
                address = announced.recv() => address,
                _ = ticker.tick() => None,
                _ = gate.suspected() => None,
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            };
            self.check(hint).await;
        }
    }

    /// Ask where the primary is (or take the address a `+switch-master` announced), and
    /// switch to it if it changed and says `master`.
    async fn check(&mut self, announced: Option<String>) {
        let found = match announced {
            Some(address) => self.verified(address).await,
            None => self.find().await,
        };
        let current = self.gate.address();
        match found {
            Ok(address) if address == current => {}
            Ok(address) => {
                let first = self.gate.generation() == 0;
                let closed = self.gate.switch_to(&address);
                self.last_failure = None;
                if first {
                    tracing::info!(master = %self.target.master, primary = %address, "primary found through the sentinels");
                } else {
                    metrics::counter!("respguard_upstream_failovers_total").increment(1);
                    tracing::warn!(master = %self.target.master, from = %current, to = %address, closed, "the primary changed; connections to the old one closed");
                }
            }
            Err(reason) => {
                if self.gate.generation() == 0 {
                    self.gate.no_primary_known(reason.clone());
                }
                if self.last_failure.as_ref() != Some(&reason) {
                    tracing::warn!(master = %self.target.master, %reason, "cannot confirm the primary through the sentinels");
                    self.last_failure = Some(reason);
                }
            }
        }
    }

    /// The primary the sentinels name, checked with ROLE.
    async fn find(&mut self) -> Result<String, String> {
        let address = self.ask().await?;
        self.verified(address).await
    }

    /// `address` if it is a primary the proxy can use.
    async fn verified(&self, address: String) -> Result<String, String> {
        match self.gate.verify_primary(&address).await {
            Ok(()) => Ok(address),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Ask the sentinels, the one that answered last first, where the master is.
    async fn ask(&mut self) -> Result<String, String> {
        let n = self.target.sentinels.len();
        let mut failures = Vec::new();
        let mut unknown = 0;
        for i in 0..n {
            let at = (self.preferred + i) % n;
            let sentinel = &self.target.sentinels[at];
            let question: [&[u8]; 3] = [
                b"SENTINEL",
                b"GET-MASTER-ADDR-BY-NAME",
                self.target.master.as_bytes(),
            ];
            let answer = async {
                let mut conn = SentinelConn::open(sentinel, self.password.as_deref()).await?;
                conn.request(&question).await
            };
            match tokio::time::timeout(self.timeout, answer).await {
                Ok(Ok(OwnedFrame::Array(parts))) if parts.len() == 2 => {
                    if let (Some(ip), Some(port)) = (text(&parts[0]), text(&parts[1])) {
                        self.preferred = at;
                        return Ok(join_host_port(&ip, &port));
                    }
                    failures.push(format!("{sentinel}: unexpected reply {parts:?}"));
                }
                Ok(Ok(OwnedFrame::Null)) => {
                    unknown += 1;
                    failures.push(format!("{sentinel}: unknown master"));
                }
                Ok(Ok(other)) => failures.push(format!("{sentinel}: unexpected reply {other:?}")),
                Ok(Err(e)) => failures.push(format!("{sentinel}: {e}")),
                Err(_) => failures.push(format!("{sentinel}: no answer within {:?}", self.timeout)),
            }
        }
        let master = &self.target.master;
        Err(if unknown == n {
            format!(
                "no sentinel knows master `{master}` ({})",
                failures.join("; ")
            )
        } else {
            format!(
                "no sentinel named the primary of master `{master}` ({})",
                failures.join("; ")
            )
        })
    }
}

/// Keep a subscription to `+switch-master` on one sentinel (the next when it is lost, a
/// second apart), and send each new address announced for `target`'s master.
async fn subscribe(
    target: SentinelTarget,
    password: Option<String>,
    timeout: Duration,
    announced: mpsc::Sender<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut at = 0;
    loop {
        let sentinel = &target.sentinels[at % target.sentinels.len()];
        at += 1;
        let subscribed = async {
            let mut conn = SentinelConn::open(sentinel, password.as_deref()).await?;
            conn.request(&[b"SUBSCRIBE", b"+switch-master"]).await?;
            Ok::<_, String>(conn)
        };
        let lost = match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(mut conn)) => {
                tracing::debug!(%sentinel, "subscribed to +switch-master");
                loop {
                    let message = tokio::select! {
                        m = conn.next() => m,
                        _ = shutdown.changed() => return,
                    };
                    match message {
                        Ok(frame) => {
                            if let Some(address) = switched_to(&frame, &target.master) {
                                tracing::info!(%sentinel, to = %address, "+switch-master announced");
                                if announced.send(address).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => break e,
                    }
                }
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {timeout:?}"),
        };
        tracing::debug!(%sentinel, reason = %lost, "no +switch-master subscription");
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// The new address in a `+switch-master` message for `master`:
/// `<master> <old ip> <old port> <new ip> <new port>`.
fn switched_to(frame: &OwnedFrame, master: &str) -> Option<String> {
    let OwnedFrame::Array(parts) = frame else {
        return None;
    };
    let [kind, _channel, payload] = parts.as_slice() else {
        return None;
    };
    if text(kind)? != "message" {
        return None;
    }
    let payload = text(payload)?;
    let words: Vec<&str> = payload.split(' ').collect();
    match words.as_slice() {
        [name, _, _, ip, port] if *name == master => Some(join_host_port(ip, port)),
        _ => None,
    }
}

/// `host:port`, an IPv6 address in brackets.
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The text of a bulk or simple string.
fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// The role in a `ROLE` reply (`master`, `slave`, `sentinel`), or what came instead.
pub fn role_of(reply: &[u8]) -> String {
    match redis_protocol::resp2::decode::decode(reply) {
        Ok(Some((OwnedFrame::Array(parts), _))) => parts
            .first()
            .and_then(text)
            .unwrap_or_else(|| "nothing readable".into()),
        _ => "nothing readable".into(),
    }
}

/// A connection to one sentinel, reading whole frames.
struct SentinelConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl SentinelConn {
    /// Connect to `address`, authenticating with `password` if given.
    async fn open(address: &str, password: Option<&str>) -> Result<Self, String> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut conn = SentinelConn {
            stream,
            buf: BytesMut::with_capacity(1024),
        };
        if let Some(password) = password {
            if let OwnedFrame::Error(e) = conn.request(&[b"AUTH", password.as_bytes()]).await? {
                return Err(format!("AUTH refused: {e}"));
            }
        }
        Ok(conn)
    }

    /// Send one command and read its reply (an error reply is an `Err`).
    async fn request(&mut self, args: &[&[u8]]) -> Result<OwnedFrame, String> {
        let mut out = BytesMut::new();
        crate::resp::command(&mut out, args);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| e.to_string())?;
        match self.next().await? {
            OwnedFrame::Error(e) => Err(e),
            frame => Ok(frame),
        }
    }

    /// The next whole frame (cancel-safe: bytes read stay in the buffer).
    async fn next(&mut self) -> Result<OwnedFrame, String> {
        loop {
            match redis_protocol::resp2::decode::decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.advance(used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if self.buf.len() > 1 << 20 {
                return Err("a reply over 1 MiB".into());
            }
            self.buf.reserve(4096);
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_switch_master_message_gives_the_new_address_of_our_master_only() {
        let message = |payload: &str| {
            OwnedFrame::Array(vec![bulk("message"), bulk("+switch-master"), bulk(payload)])
        };
        assert_eq!(
            switched_to(&message("mymaster 10.0.0.1 6379 10.0.0.2 6380"), "mymaster").as_deref(),
            Some("10.0.0.2:6380")
        );
        assert_eq!(
            switched_to(&message("mymaster ::1 6379 ::2 6380"), "mymaster").as_deref(),
            Some("[::2]:6380")
        );
        assert_eq!(
            switched_to(&message("other 10.0.0.1 6379 10.0.0.2 6380"), "mymaster"),
            None
        );
        let confirmation = OwnedFrame::Array(vec![
            bulk("subscribe"),
            bulk("+switch-master"),
            OwnedFrame::Integer(1),
        ]);
        assert_eq!(switched_to(&confirmation, "mymaster"), None);
    }

    #[test]
    fn role_reads_the_first_element() {
        assert_eq!(role_of(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"), "master");
        assert_eq!(
            role_of(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n"),
            "slave"
        );
        assert_eq!(role_of(b"+OK\r\n"), "nothing readable");
    }
}
