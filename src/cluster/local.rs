//! The `CLUSTER` questions the proxy answers itself: a cluster-aware client through the
//! proxy sees one node, the proxy, serving every slot, so it sends every command to the
//! proxy, which routes it. `CLUSTER SLOTS`, `SHARDS`, `NODES`, `INFO`, `MYID` and
//! `MYSHARDID` are answered here, in the client's protocol; the other subcommands go to a
//! node.
//!
//! Pure: no I/O.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use crate::resp;

/// The proxy's own answer to `CLUSTER <sub>` (upper case) for a client that reached it at
/// `proxy` and speaks RESP `protocol`, if it answers that subcommand.
pub fn answer(sub: &[u8], proxy: SocketAddr, protocol: u8) -> Option<Bytes> {
    let me = Me::at(proxy);
    let mut out = BytesMut::new();
    match sub {
        b"SLOTS" => me.slots(&mut out, protocol),
        b"SHARDS" => me.shards(&mut out, protocol),
        b"NODES" => resp::bulk(&mut out, me.nodes_line().as_bytes()),
        b"INFO" => verbatim(&mut out, &me.info(), protocol),
        b"MYID" | b"MYSHARDID" => resp::bulk(&mut out, me.id.as_bytes()),
        _ => return None,
    }
    Some(out.freeze())
}

/// The one node a client through the proxy sees.
struct Me {
    ip: String,
    port: u16,
    /// 40 hexadecimal digits, as a node id, the same for the same address.
    id: String,
}

impl Me {
    fn at(proxy: SocketAddr) -> Self {
        let ip = proxy.ip().to_canonical().to_string();
        let mut id = String::with_capacity(40);
        for round in 0u8..3 {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (round, proxy).hash(&mut h);
            id.push_str(&format!("{:016x}", h.finish()));
        }
        id.truncate(40);
        Me {
            ip,
            port: proxy.port(),
            id,
        }
    }

    /// `[[0, 16383, [ip, port, id, {}]]]`.
    fn slots(&self, out: &mut BytesMut, protocol: u8) {
        resp::array_header(out, 1);
        resp::array_header(out, 3);
        resp::integer(out, 0);
        resp::integer(out, 16383);
        resp::array_header(out, 4);
        resp::bulk(out, self.ip.as_bytes());
        resp::integer(out, i64::from(self.port));
        resp::bulk(out, self.id.as_bytes());
        map_header(out, 0, protocol);
    }

    /// One shard of one primary serving every slot.
    fn shards(&self, out: &mut BytesMut, protocol: u8) {
        resp::array_header(out, 1);
        map_header(out, 2, protocol);
        resp::bulk(out, b"slots");
        resp::array_header(out, 2);
        resp::integer(out, 0);
        resp::integer(out, 16383);
        resp::bulk(out, b"nodes");
        resp::array_header(out, 1);
        map_header(out, 7, protocol);
        for (field, value) in [
            ("id", self.id.as_str()),
            ("ip", self.ip.as_str()),
            ("endpoint", self.ip.as_str()),
        ] {
            resp::bulk(out, field.as_bytes());
            resp::bulk(out, value.as_bytes());
        }
        resp::bulk(out, b"port");
        resp::integer(out, i64::from(self.port));
        resp::bulk(out, b"role");
        resp::bulk(out, b"master");
        resp::bulk(out, b"replication-offset");
        resp::integer(out, 0);
        resp::bulk(out, b"health");
        resp::bulk(out, b"online");
    }

    fn nodes_line(&self) -> String {
        let bus = u32::from(self.port) + 10000;
        let host = if self.ip.contains(':') {
            format!("[{}]", self.ip)
        } else {
            self.ip.clone()
        };
        format!(
            "{} {host}:{}@{bus} myself,master - 0 0 1 connected 0-16383\n",
            self.id, self.port
        )
    }

    fn info(&self) -> String {
        [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_slots_ok:16384",
            "cluster_slots_pfail:0",
            "cluster_slots_fail:0",
            "cluster_known_nodes:1",
            "cluster_size:1",
            "cluster_current_epoch:1",
            "cluster_my_epoch:1",
            "",
        ]
        .join("\r\n")
    }
}

/// A map's header: `%n` in RESP3, a flat array of `2n` in RESP2.
fn map_header(out: &mut BytesMut, pairs: usize, protocol: u8) {
    if protocol >= 3 {
        out.extend_from_slice(format!("%{pairs}\r\n").as_bytes());
    } else {
        resp::array_header(out, pairs * 2);
    }
}

/// Text as Redis sends `INFO`-like text: a verbatim string in RESP3, a bulk string in RESP2.
fn verbatim(out: &mut BytesMut, text: &str, protocol: u8) {
    if protocol >= 3 {
        out.extend_from_slice(format!("={}\r\ntxt:{text}\r\n", text.len() + 4).as_bytes());
    } else {
        resp::bulk(out, text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn a_client_sees_one_node_at_the_proxy_s_address_serving_every_slot() {
        let proxy: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        let slots = text(&answer(b"SLOTS", proxy, 2).unwrap());
        assert!(
            slots.starts_with(
                "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:7400\r\n$40\r\n"
            ),
            "{slots}"
        );
        assert!(slots.ends_with("*0\r\n"));
        assert!(text(&answer(b"SLOTS", proxy, 3).unwrap()).ends_with("%0\r\n"));
        let nodes = text(&answer(b"NODES", proxy, 2).unwrap());
        assert!(nodes.contains(" 127.0.0.1:7400@17400 myself,master - 0 0 1 connected 0-16383\n"));
        let id = text(&answer(b"MYID", proxy, 2).unwrap());
        assert!(nodes.contains(&id[5..45]), "the same id everywhere");
        assert!(text(&answer(b"INFO", proxy, 2).unwrap()).contains("cluster_state:ok\r\n"));
        assert!(text(&answer(b"INFO", proxy, 3).unwrap()).starts_with('='));
        let shards = text(&answer(b"SHARDS", proxy, 2).unwrap());
        assert!(shards.starts_with(
            "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n*14\r\n"
        ));
        assert!(answer(b"KEYSLOT", proxy, 2).is_none());
    }
}
