//! A real Redis Cluster for the tests: six `redis-server` processes with `cluster-enabled
//! yes` (each its own temporary directory, `nodes.conf` in it, data port and cluster bus
//! port free ports), joined by `redis-cli --cluster create … --cluster-replicas 1`: three
//! primaries, each with one replica. Ready once every node says `cluster_state:ok` and
//! every node's `CLUSTER SHARDS` lists all six nodes `online` (replicas synchronised),
//! awaited by polling, never a fixed sleep. Every process is killed on drop.

use std::time::{Duration, Instant};

use respguard::config::UpstreamTarget;
use respguard::upstream::{ConnectGate, GateSettings};

use crate::harness::{eventually, free_port, Conn, RedisServer, WAIT};

/// Nodes of a test cluster: three primaries and a replica each.
pub const NODES: usize = 6;

/// A running cluster of [`NODES`] nodes.
pub struct Cluster {
    /// The nodes, in the order given to `redis-cli --cluster create`.
    pub nodes: Vec<RedisServer>,
    /// How long the start took, processes to readiness.
    pub started_in: Duration,
}

/// A `redis-server` started for a cluster (not joined to one yet).
pub fn cluster_node() -> RedisServer {
    cluster_node_with(&[])
}

/// [`cluster_node`] with `extra` `--name value` arguments.
pub fn cluster_node_with(extra: &[&str]) -> RedisServer {
    RedisServer::start_with_ports(|| cluster_node_args(extra))
}

/// A cluster node's arguments, with a free port for its cluster bus.
fn cluster_node_args(extra: &[&str]) -> Vec<String> {
    let bus = free_port().to_string();
    let mut args = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-node-timeout",
        "2000",
        // A replica's offset moves at least every second, so CLUSTER SHARDS soon calls it
        // online (one still at offset 0 is `loading`).
        "--repl-ping-replica-period",
        "1",
        // A primary starts a replica's full synchronisation at once, not 5 s later.
        "--repl-diskless-sync-delay",
        "0",
    ];
    args.extend_from_slice(extra);
    args.iter().map(|a| a.to_string()).collect()
}

impl Cluster {
    /// Start the nodes, create the cluster and wait until it is ready (see the module doc).
    pub async fn start() -> Self {
        let began = Instant::now();
        let nodes: Vec<RedisServer> = std::thread::scope(|s| {
            let started: Vec<_> = (0..NODES).map(|_| s.spawn(cluster_node)).collect();
            started.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli (is it installed?)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            nodes,
            started_in: Duration::ZERO,
        };
        cluster.wait_until_settled().await;
        Cluster {
            started_in: began.elapsed(),
            ..cluster
        }
    }

    /// Wait until every node says `cluster_state:ok` with all 16,384 slots assigned, and
    /// its `CLUSTER SHARDS` lists three primaries and three replicas, all online (a node
    /// not yet made a replica shows as a primary without slots; a replica not yet
    /// synchronised as `loading`).
    pub async fn wait_until_settled(&self) {
        for node in &self.nodes {
            let mut conn = Conn::open(node.addr()).await;
            eventually!(WAIT, format!("cluster_state:ok on {}", node.port), {
                let info = conn.call(&["CLUSTER", "INFO"]).await;
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            });
            eventually!(
                WAIT,
                format!("every node online seen from {}", node.port),
                {
                    let shards = conn.call(&["CLUSTER", "SHARDS"]).await;
                    let count = |word: &str| shards.matches(&format!("\r\n{word}\r\n")).count();
                    let seen = (count("master"), count("replica"), count("online"));
                    if seen == (NODES / 2, NODES / 2, NODES) {
                        Ok(())
                    } else {
                        Err(format!("(primaries, replicas, online): {seen:?}"))
                    }
                }
            );
        }
    }

    /// Every node's `127.0.0.1:port`.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    /// The node at `address`.
    pub fn node(&self, address: &str) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.addr().to_string() == address)
            .unwrap_or_else(|| panic!("{address} is not a node of this cluster"))
    }

    /// A connection to the node at `address`.
    pub async fn conn(&self, address: &str) -> Conn {
        Conn::open(self.node(address).addr()).await
    }
}

/// A gate as the proxy would build for `address` (no TLS, no password), for the topology
/// reader.
pub fn gate_for(address: &str) -> ConnectGate {
    gate_for_url(&format!("redis://{address}"))
}

/// A gate as the proxy would build for the upstream URL `url`.
pub fn gate_for_url(url: &str) -> ConnectGate {
    ConnectGate::new(
        UpstreamTarget::parse(url).unwrap(),
        GateSettings {
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_connects_per_second: 100,
            max_connections: 0,
            tls: None,
        },
    )
}
