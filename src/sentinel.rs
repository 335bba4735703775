//! Finding the primary through Redis Sentinel, and following it across failovers.
//!
//! With a `redis-sentinel://` URL the upstream's address is not configured but found: the
//! [`SentinelWatcher`] asks every sentinel at once (`SENTINEL MASTER`), takes the address
//! named with the newest configuration epoch, checks that node with `ROLE` (it must say
//! `master`), and sets it on the [`ConnectGate`], which every connection of the proxy goes
//! through (sessions, shared connections, the monitor, the command table). From then on it
//! asks again:
//! - when a sentinel announces `+switch-master` for the master (a subscription kept on one
//!   sentinel, the next when that one is lost);
//! - every [`CHECK_INTERVAL`], for a missed announcement;
//! - at once when a connection finds the node it reached is not a master (the gate's ROLE
//!   check, a `-READONLY` reply seen by a session).
//!
//! A sentinel that has not heard of the last failover yet names the old primary with an
//! older epoch: it is not followed back while the primary in use still says `master`. A
//! new primary is checked with ROLE before the switch; the switch
//! ([`ConnectGate::switch_to`]) shuts down every connection to the old one, so commands in
//! flight there get the proxy's connection-lost error and the next command goes to the new
//! primary. Each switch is logged and counted (`respguard_upstream_failovers_total`).
//!
//! With `[[upstream.read_from]]` rules reading from replicas, each check also asks for the
//! master's replicas (`SENTINEL REPLICAS`) and publishes the primary and the replicas
//! that serve (no `s_down`, `o_down` or `disconnected` flag, a replication link `ok`) to
//! a [`ClusterView`] of one shard, which the routers read by ([`crate::cluster`]).
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
use tokio::sync::{mpsc, watch};

use crate::cluster::topology::Shard;
use crate::cluster::view::ClusterView;
use crate::config::SentinelTarget;
use crate::scanner::tree::{self, Bounds};
use crate::transport::Stream;
use crate::upstream::{join_host_port, ConnectGate, UpstreamError};

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
    /// The configuration epoch of the primary in use, as the sentinels gave it: a sentinel
    /// naming another node with an older one has not heard of the last failover.
    epoch: u64,
    /// The last reason no primary could be found, logged once until it changes.
    last_failure: Option<String>,
    /// Reading from replicas: the view the primary and its replicas are published to.
    replicas: Option<Arc<ClusterView>>,
}

/// What the sentinels said of the master: its primary's address and configuration epoch,
/// and (when asked) the replicas that serve.
#[derive(Debug)]
struct Named {
    address: String,
    epoch: u64,
    replicas: Vec<String>,
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
            epoch: 0,
            last_failure: None,
            replicas: None,
        }
    }

    /// The same watcher, also publishing the primary and its serving replicas to `view`
    /// at every check (reads from replicas behind Sentinel).
    pub fn with_replica_view(mut self, view: Arc<ClusterView>) -> Self {
        self.replicas = Some(view);
        self
    }

    /// Find the primary now (at start): the sentinels are asked and the node checked, each
    /// within the timeout. On failure the gate refuses connections with the reason (clients
    /// get it as their error, `/readyz` says not ready) and [`Self::run`] keeps asking.
    pub async fn discover(&mut self) -> Result<String, String> {
        self.check().await;
        match self.gate.generation() {
            0 => Err(self.last_failure.clone().unwrap_or_default()),
            _ => Ok(self.gate.address()),
        }
    }

    /// Follow the primary until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (announced_tx, mut announced) = mpsc::channel(16);
        tokio::spawn(subscribe(
            self.gate.clone(),
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
            let view = self.replicas.clone();
            tokio::select! {
                _ = announced.recv() => {}
                _ = ticker.tick() => {}
                _ = gate.suspected() => {}
                _ = async { view.as_ref().expect("armed").refresh_wanted().await }, if view.is_some() => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            };
            self.check().await;
        }
    }

    /// Ask the sentinels where the primary is, and switch to the node they name if it
    /// changed, is named with a newer configuration epoch than the one in use (or the one
    /// in use is no longer a master), and says `master` to ROLE.
    async fn check(&mut self) {
        let named = match self.ask().await {
            Ok(found) => found,
            Err(reason) => return self.failed(reason),
        };
        self.follow(&named.address, named.epoch).await;
        self.publish_replicas(named.replicas);
    }

    /// Switch to the primary at `address`, named with configuration `epoch`, unless it is
    /// the one in use or not to be believed (see [`Self::check`]).
    async fn follow(&mut self, address: &str, epoch: u64) {
        let current = self.gate.address();
        let first = self.gate.generation() == 0;
        if address == current {
            // The epoch is taken only with a switch: while a failover is under way its
            // leader names the old primary with the new epoch, until it announces the switch.
            self.last_failure = None;
            return;
        }
        // A sentinel that has not heard of the last failover yet names the old primary
        // with the old epoch: believed only once the primary in use is no longer a master.
        if !first && epoch <= self.epoch && self.gate.verify_primary(&current).await.is_ok() {
            return;
        }
        // A node named anew is checked with ROLE before anything goes there.
        if let Err(e) = self.gate.verify_primary(address).await {
            return self.failed(e.to_string());
        }
        let closed = self.gate.switch_to(address);
        self.epoch = epoch;
        self.last_failure = None;
        let master = &self.target.master;
        if first {
            tracing::info!(%master, primary = %address, epoch, "primary found through the sentinels");
        } else {
            metrics::counter!("respguard_upstream_failovers_total").increment(1);
            tracing::warn!(%master, from = %current, to = %address, epoch, closed, "the primary changed; connections to the old one closed");
        }
    }

    /// Reading from replicas: publish the primary in use and `replicas` (those of them
    /// that are not the primary) to the view, once a primary is known.
    fn publish_replicas(&self, mut replicas: Vec<String>) {
        let (Some(view), primary) = (&self.replicas, self.gate.address()) else {
            return;
        };
        if self.gate.generation() == 0 {
            return;
        }
        replicas.retain(|r| *r != primary);
        replicas.sort();
        replicas.dedup();
        view.publish_shard(Shard { primary, replicas });
    }

    /// No primary could be confirmed, for `reason`: logged when the reason changes; while
    /// none was ever found, the gate refuses connections with it.
    fn failed(&mut self, reason: String) {
        let first = self.gate.generation() == 0;
        if first {
            self.gate.no_primary_known(reason.clone());
            if let Some(view) = &self.replicas {
                view.failed(reason.clone());
            }
        }
        if self.last_failure.as_ref() != Some(&reason) {
            let master = &self.target.master;
            if first {
                tracing::error!(%master, %reason, "no primary found through the sentinels; asking again every second");
            } else {
                tracing::warn!(%master, %reason, "cannot confirm the primary through the sentinels");
            }
            self.last_failure = Some(reason);
        }
    }

    /// Ask every sentinel at once (`SENTINEL MASTER`, and `SENTINEL REPLICAS` when reading
    /// from replicas) and take the primary named with the newest configuration epoch (the
    /// first in the URL's order among equals), with the replicas that sentinel lists.
    async fn ask(&self) -> Result<Named, String> {
        let mut asked = tokio::task::JoinSet::new();
        let with_replicas = self.replicas.is_some();
        for (at, sentinel) in self.target.sentinels.iter().enumerate() {
            let (sentinel, master) = (sentinel.clone(), self.target.master.clone());
            let (password, timeout) = (self.password.clone(), self.timeout);
            let gate = self.gate.clone();
            asked.spawn(async move {
                let answer = async {
                    let mut conn =
                        SentinelConn::open(&gate, &sentinel, password.as_deref()).await?;
                    let frame = conn
                        .request(&[b"SENTINEL", b"MASTER", master.as_bytes()])
                        .await?;
                    let replicas = match with_replicas {
                        true => serving_replicas(
                            &conn
                                .request(&[b"SENTINEL", b"REPLICAS", master.as_bytes()])
                                .await?,
                        ),
                        false => Vec::new(),
                    };
                    Ok::<_, String>((frame, replicas))
                };
                let answer = match tokio::time::timeout(timeout, answer).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                (at, sentinel, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = asked.join_next().await {
            answers.push(joined.map_err(|e| e.to_string())?);
        }
        answers.sort_by_key(|(at, _, _)| *at);
        let mut best: Option<Named> = None;
        let mut failures = Vec::new();
        let mut unknown = 0;
        for (_, sentinel, answer) in answers {
            let named = answer.map(|(frame, replicas)| {
                named_primary(&frame).map(|(address, epoch)| Named {
                    address,
                    epoch,
                    replicas,
                })
            });
            match named {
                Ok(Some(named)) => {
                    if best.as_ref().is_none_or(|b| named.epoch > b.epoch) {
                        best = Some(named);
                    }
                }
                Ok(None) => failures.push(format!("{sentinel}: no address in its reply")),
                Err(e) if e.contains("No such master") => {
                    unknown += 1;
                    failures.push(format!("{sentinel}: unknown master"));
                }
                Err(e) => failures.push(format!("{sentinel}: {e}")),
            }
        }
        let master = &self.target.master;
        best.ok_or_else(|| {
            if unknown == self.target.sentinels.len() {
                format!(
                    "no sentinel knows master `{master}` ({})",
                    failures.join("; ")
                )
            } else {
                format!(
                    "no sentinel named the primary of master `{master}` ({})",
                    failures.join("; ")
                )
            }
        })
    }
}

/// The address and configuration epoch in a `SENTINEL MASTER` reply (a flat array of
/// field names and values).
fn named_primary(frame: &OwnedFrame) -> Option<(String, u64)> {
    let OwnedFrame::Array(items) = frame else {
        return None;
    };
    let epoch = field(items, "config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Some((address_in(items)?, epoch))
}

/// The value of field `name` in a flat array of field names and values.
fn field(items: &[OwnedFrame], name: &str) -> Option<String> {
    items
        .chunks(2)
        .find(|kv| kv.len() == 2 && text(&kv[0]).as_deref() == Some(name))
        .and_then(|kv| text(&kv[1]))
}

/// The `host:port` of the `ip` and `port` fields of a flat array of fields.
fn address_in(items: &[OwnedFrame]) -> Option<String> {
    Some(join_host_port(&field(items, "ip")?, &field(items, "port")?))
}

/// The replicas in a `SENTINEL REPLICAS` reply (an array of flat field maps) that serve
/// reads: not flagged `s_down`, `o_down` or `disconnected`, their link to the primary
/// `ok`; as `host:port` each.
fn serving_replicas(frame: &OwnedFrame) -> Vec<String> {
    let OwnedFrame::Array(replicas) = frame else {
        return Vec::new();
    };
    let serves = |items: &[OwnedFrame]| {
        let flags = field(items, "flags").unwrap_or_default();
        let down = flags
            .split(',')
            .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
        !down && field(items, "master-link-status").as_deref() == Some("ok")
    };
    replicas
        .iter()
        .filter_map(|replica| match replica {
            OwnedFrame::Array(items) if serves(items) => address_in(items),
            _ => None,
        })
        .collect()
}

/// Keep a subscription to `+switch-master` on one sentinel (the next when it is lost, a
/// second apart), and send each new address announced for `target`'s master.
async fn subscribe(
    gate: Arc<ConnectGate>,
    target: SentinelTarget,
    password: Option<String>,
    timeout: Duration,
    announced: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut at = 0;
    loop {
        let sentinel = &target.sentinels[at % target.sentinels.len()];
        at += 1;
        let subscribed = async {
            let mut conn = SentinelConn::open(&gate, sentinel, password.as_deref()).await?;
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
                                if announced.send(()).await.is_err() {
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

/// The text of a bulk or simple string.
fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// A connection to one sentinel (TCP, or TLS with `rediss-sentinel://`), reading whole
/// frames.
struct SentinelConn {
    stream: Stream,
    buf: BytesMut,
}

impl SentinelConn {
    /// Connect to `address` as `gate` connects (TLS or not), authenticating with
    /// `password` if given.
    async fn open(
        gate: &ConnectGate,
        address: &str,
        password: Option<&str>,
    ) -> Result<Self, String> {
        let stream = gate.open_sentinel(address).await.map_err(|e| match e {
            // The caller names the sentinel.
            UpstreamError::Unreachable { reason, .. } => reason,
            other => other.to_string(),
        })?;
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
            match tree::decode(&self.buf, &Bounds::SERVER_REPLY) {
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

    /// A replica is read from only while no sentinel flag says it is down or disconnected
    /// and its replication link is `ok`.
    #[test]
    fn sentinel_replicas_gives_the_replicas_that_serve() {
        let replica = |ip: &str, flags: &str, link: &str| {
            OwnedFrame::Array(
                [
                    "name",
                    "x",
                    "ip",
                    ip,
                    "port",
                    "6380",
                    "flags",
                    flags,
                    "master-link-status",
                    link,
                ]
                .into_iter()
                .map(bulk)
                .collect(),
            )
        };
        let reply = OwnedFrame::Array(vec![
            replica("10.0.0.1", "slave", "ok"),
            replica("10.0.0.2", "s_down,slave", "ok"),
            replica("10.0.0.3", "slave,disconnected", "ok"),
            replica("10.0.0.4", "slave", "err"),
            replica("::5", "slave", "ok"),
            replica("10.0.0.6", "o_down,slave", "ok"),
            bulk("not a replica"),
        ]);
        assert_eq!(
            serving_replicas(&reply),
            ["10.0.0.1:6380".to_string(), "[::5]:6380".to_string()]
        );
        assert!(serving_replicas(&bulk("no array")).is_empty());
    }

    #[test]
    fn sentinel_master_gives_the_address_and_the_epoch() {
        let reply = OwnedFrame::Array(
            [
                "name",
                "m",
                "ip",
                "10.0.0.2",
                "port",
                "6380",
                "config-epoch",
                "7",
            ]
            .into_iter()
            .map(bulk)
            .collect(),
        );
        assert_eq!(
            named_primary(&reply),
            Some(("10.0.0.2:6380".to_string(), 7))
        );
        let no_port = OwnedFrame::Array(["ip", "10.0.0.2"].into_iter().map(bulk).collect());
        assert_eq!(named_primary(&no_port), None);
    }
}
