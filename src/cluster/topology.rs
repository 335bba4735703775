//! Which node serves which slot: the [`SlotMap`], read from a node's `CLUSTER SHARDS`
//! reply (Redis 7 and later) or `CLUSTER SLOTS` reply (older servers).
//!
//! The map holds, for each of the 16,384 slots, the index of its shard in a list of
//! [`Shard`]s (a primary's address and its replicas'), two bytes a slot in one boxed array;
//! a slot no shard covers stays uncovered (a router answers `CLUSTERDOWN` for it). Two
//! maps of the same cluster are equal whichever reply they were read from: shards are
//! listed by their lowest slot, replicas in address order.
//!
//! Which address a node is reached at: its `endpoint` (the one the server prefers,
//! `cluster-preferred-endpoint-type`), unless it is `?` (unknown) or empty, then its `ip`;
//! with TLS its `tls-port` when given. A node that is not `online` is left out, and a shard
//! with no online primary covers nothing.
//!
//! Off the hot path: read when the topology is asked for, never per command. Never does I/O
//! (the reader in [`super::reader`] does).

use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;

use super::frame::{self, Frame, FrameError};
use super::slot::SLOTS;
use crate::upstream::join_host_port;

/// A slot no shard covers.
const UNCOVERED: u16 = u16::MAX;

/// One shard: a primary and its replicas, as `host:port` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The primary's address.
    pub primary: String,
    /// The replicas' addresses, in address order.
    pub replicas: Vec<String>,
}

/// For each slot, the shard serving it.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Each slot's index into `shards`, or [`UNCOVERED`].
    owner: Box<[u16; SLOTS]>,
    /// The shards covering at least one slot, by their lowest slot.
    shards: Vec<Shard>,
}

/// A topology reply that cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{reply} reply: {what} is not what it should be")]
    Shape {
        reply: &'static str,
        what: &'static str,
    },
    #[error("{reply} reply: slot {slot} is out of range 0-16383")]
    SlotOutOfRange { reply: &'static str, slot: i64 },
    #[error("{reply} reply: slot {slot} is served by both {first} and {second}")]
    SlotTwice {
        reply: &'static str,
        slot: u16,
        first: String,
        second: String,
    },
}

/// A shard as a reply describes it, before the map is built.
struct Described {
    shard: Shard,
    ranges: Vec<RangeInclusive<u16>>,
}

impl SlotMap {
    /// A map of one shard serving every slot: a primary and its replicas found otherwise
    /// than from a cluster (behind Sentinel, `crate::sentinel`), routed by the same router.
    pub fn one_shard(shard: Shard) -> SlotMap {
        SlotMap {
            owner: Box::new([0; SLOTS]),
            shards: vec![shard],
        }
    }

    /// The index of the shard serving `slot` (into [`Self::shards`]), if covered.
    pub fn shard_index(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&UNCOVERED) | None => None,
            Some(&i) => Some(usize::from(i)),
        }
    }

    /// The shard serving `slot`, if covered.
    pub fn shard_of(&self, slot: u16) -> Option<&Shard> {
        self.shard_index(slot).map(|i| &self.shards[i])
    }

    /// The shards covering at least one slot, by their lowest slot.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// How many slots some shard covers (16,384 in a healthy cluster).
    pub fn covered(&self) -> usize {
        self.owner.iter().filter(|&&i| i != UNCOVERED).count()
    }

    /// The slot ranges shard `index` serves, ascending.
    pub fn ranges_of(&self, index: usize) -> Vec<RangeInclusive<u16>> {
        let mut ranges: Vec<RangeInclusive<u16>> = Vec::new();
        for slot in 0..SLOTS as u16 {
            if self.shard_index(slot) != Some(index) {
                continue;
            }
            match ranges.last_mut() {
                Some(r) if *r.end() + 1 == slot => *r = *r.start()..=slot,
                _ => ranges.push(slot..=slot),
            }
        }
        ranges
    }

    /// This map with `slot` served by the primary at `address`, as a `-MOVED` reply says:
    /// the shard whose primary that is, or a new shard (no replicas known) when none is.
    pub fn with_slot_moved(&self, slot: u16, address: &str) -> SlotMap {
        let mut map = self.clone();
        let index = match map.shards.iter().position(|s| s.primary == address) {
            Some(i) => i,
            None => {
                map.shards.push(Shard {
                    primary: address.to_string(),
                    replicas: Vec::new(),
                });
                map.shards.len() - 1
            }
        };
        if let Some(owner) = map.owner.get_mut(usize::from(slot)) {
            // At most 16,384 shards: each covers a slot when read, one more per MOVED.
            *owner = u16::try_from(index).unwrap_or(UNCOVERED);
        }
        map
    }

    /// The map a `CLUSTER SHARDS` reply describes (RESP2: each shard a flat map of
    /// `slots`, a flat list of start/end pairs, and `nodes`, each a flat map of `ip`,
    /// `endpoint`, `port`, `tls-port`, `role`, `health` …). With `tls`, nodes are reached at
    /// their `tls-port` when they give one.
    pub fn from_shards_reply(reply: &[u8], tls: bool) -> Result<SlotMap, TopologyError> {
        const REPLY: &str = "CLUSTER SHARDS";
        let shape = |what| TopologyError::Shape { reply: REPLY, what };
        let frame = frame::parse(reply)?;
        let mut described = Vec::new();
        for shard in frame.items().ok_or(shape("the reply"))? {
            let slots = shard.field("slots").and_then(Frame::items);
            let nodes = shard.field("nodes").and_then(Frame::items);
            let (Some(slots), Some(nodes)) = (slots, nodes) else {
                return Err(shape("a shard"));
            };
            if slots.len() % 2 != 0 {
                return Err(shape("a shard's slot list"));
            }
            let mut ranges = Vec::with_capacity(slots.len() / 2);
            for pair in slots.chunks_exact(2) {
                ranges.push(slot_range(REPLY, &pair[0], &pair[1])?);
            }
            let mut primary = None;
            let mut replicas = Vec::new();
            for node in nodes {
                let field = |name| node.field(name).and_then(Frame::text);
                if field("health") != Some(b"online") {
                    continue;
                }
                let Some(address) = shards_node_address(node, tls) else {
                    continue;
                };
                match field("role") {
                    Some(b"master") if primary.is_none() => primary = Some(address),
                    Some(b"replica") => replicas.push(address),
                    _ => {}
                }
            }
            // A shard without an online primary serves nothing until one is elected.
            if let Some(primary) = primary {
                described.push(Described {
                    shard: Shard { primary, replicas },
                    ranges,
                });
            }
        }
        build(REPLY, described)
    }

    /// The map a `CLUSTER SLOTS` reply describes (each entry: start, end, the primary, then
    /// replicas, each node `[endpoint, port, id, {metadata}]`). A node whose endpoint is `?`
    /// or empty is reached at the `ip` of its metadata, or else at `asked_host`, the host
    /// the reply came from (Redis's rule for an unknown endpoint).
    pub fn from_slots_reply(reply: &[u8], asked_host: &str) -> Result<SlotMap, TopologyError> {
        const REPLY: &str = "CLUSTER SLOTS";
        let shape = |what| TopologyError::Shape { reply: REPLY, what };
        let frame = frame::parse(reply)?;
        let mut described: Vec<Described> = Vec::new();
        // Each primary's place in `described`, so a reply of many entries is read in
        // linear time.
        let mut by_primary: HashMap<String, usize> = HashMap::new();
        for entry in frame.items().ok_or(shape("the reply"))? {
            let items = entry.items().ok_or(shape("an entry"))?;
            let [start, end, primary, replicas @ ..] = items else {
                return Err(shape("an entry"));
            };
            let range = slot_range(REPLY, start, end)?;
            let primary = slots_node_address(primary, asked_host).ok_or(shape("a node"))?;
            // A shard with several ranges comes as several entries naming the same primary.
            if let Some(&known) = by_primary.get(&primary) {
                described[known].ranges.push(range);
                continue;
            }
            by_primary.insert(primary.clone(), described.len());
            let replicas = replicas
                .iter()
                .map(|r| slots_node_address(r, asked_host).ok_or(shape("a node")))
                .collect::<Result<_, _>>()?;
            described.push(Described {
                shard: Shard { primary, replicas },
                ranges: vec![range],
            });
        }
        build(REPLY, described)
    }
}

/// The slots `start` to `end`, both within 0-16383, start first.
fn slot_range(
    reply: &'static str,
    start: &Frame<'_>,
    end: &Frame<'_>,
) -> Result<RangeInclusive<u16>, TopologyError> {
    let slot = |f: &Frame<'_>| {
        let n = f.integer().ok_or(TopologyError::Shape {
            reply,
            what: "a slot number",
        })?;
        u16::try_from(n)
            .ok()
            .filter(|&s| usize::from(s) < SLOTS)
            .ok_or(TopologyError::SlotOutOfRange { reply, slot: n })
    };
    let (start, end) = (slot(start)?, slot(end)?);
    if start > end {
        return Err(TopologyError::Shape {
            reply,
            what: "a slot range",
        });
    }
    Ok(start..=end)
}

/// Where a node of a `CLUSTER SHARDS` reply is reached.
fn shards_node_address(node: &Frame<'_>, tls: bool) -> Option<String> {
    let text = |name| node.field(name).and_then(Frame::text);
    let host = text("endpoint")
        .filter(|e| !e.is_empty() && *e != b"?")
        .or_else(|| text("ip").filter(|ip| !ip.is_empty()))?;
    let port = match (tls, node.field("tls-port")) {
        (true, Some(p)) => p.integer(),
        _ => node.field("port").and_then(Frame::integer),
    }?;
    let port = u16::try_from(port).ok().filter(|&p| p != 0)?;
    Some(join_host_port(
        std::str::from_utf8(host).ok()?,
        &port.to_string(),
    ))
}

/// Where a node of a `CLUSTER SLOTS` reply is reached.
fn slots_node_address(node: &Frame<'_>, asked_host: &str) -> Option<String> {
    let items = node.items()?;
    let [endpoint, port, rest @ ..] = items else {
        return None;
    };
    let metadata_ip = || {
        rest.get(1)
            .and_then(|m| m.field("ip"))
            .and_then(Frame::text)
            .filter(|ip| !ip.is_empty())
    };
    let host = match endpoint.text() {
        Some(e) if !e.is_empty() && e != b"?" => std::str::from_utf8(e).ok()?,
        _ => match metadata_ip() {
            Some(ip) => std::str::from_utf8(ip).ok()?,
            None => asked_host,
        },
    };
    let port = u16::try_from(port.integer()?).ok().filter(|&p| p != 0)?;
    Some(join_host_port(host, &port.to_string()))
}

/// The map of the shards described: each shard's slots marked, shards listed by their
/// lowest slot, a slot claimed twice refused.
fn build(reply: &'static str, mut described: Vec<Described>) -> Result<SlotMap, TopologyError> {
    described.retain(|d| !d.ranges.is_empty());
    described.sort_by_key(|d| d.ranges.iter().map(|r| *r.start()).min());
    let mut owner = Box::new([UNCOVERED; SLOTS]);
    let mut shards = Vec::with_capacity(described.len());
    for (index, Described { mut shard, ranges }) in described.into_iter().enumerate() {
        for slot in ranges.into_iter().flatten() {
            let at = &mut owner[usize::from(slot)];
            if *at != UNCOVERED {
                let first = shards
                    .get(usize::from(*at))
                    .map_or(&shard.primary, |s: &Shard| &s.primary);
                return Err(TopologyError::SlotTwice {
                    reply,
                    slot,
                    first: first.clone(),
                    second: shard.primary.clone(),
                });
            }
            // Fewer shards than slots, each covering one at least: the index fits.
            *at = index as u16;
        }
        shard.replicas.sort();
        shards.push(shard);
    }
    Ok(SlotMap { owner, shards })
}

impl fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (i, shard) in self.shards.iter().enumerate() {
            list.entry(&(shard, self.ranges_of(i)));
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RESP2 reply written compactly: `[` … `]` arrays, `#n` integers, other words bulk
    /// strings (`~` for an empty one).
    fn resp(text: &str) -> Vec<u8> {
        fn value(
            words: &mut std::iter::Peekable<std::str::SplitWhitespace<'_>>,
            out: &mut Vec<u8>,
        ) {
            let word = words.next().expect("a value");
            if word == "[" {
                let mut items = Vec::new();
                let mut n = 0;
                while words.peek() != Some(&"]") {
                    value(words, &mut items);
                    n += 1;
                }
                words.next();
                out.extend_from_slice(format!("*{n}\r\n").as_bytes());
                out.extend_from_slice(&items);
            } else if let Some(n) = word.strip_prefix('#') {
                out.extend_from_slice(format!(":{n}\r\n").as_bytes());
            } else {
                let word = if word == "~" { "" } else { word };
                out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
            }
        }
        let mut out = Vec::new();
        value(&mut text.split_whitespace().peekable(), &mut out);
        out
    }

    fn node(
        ip: &str,
        endpoint: &str,
        port: u16,
        tls_port: Option<u16>,
        role: &str,
        health: &str,
    ) -> String {
        let tls = tls_port.map_or(String::new(), |p| format!("tls-port #{p}"));
        format!("[ id x{port} port #{port} {tls} ip {ip} endpoint {endpoint} role {role} replication-offset #1 health {health} ]")
    }

    #[test]
    fn shards_reply_names_online_primaries_and_replicas_by_endpoint() {
        let reply = resp(&format!(
            "[ [ slots [ #0 #99 #200 #299 ] nodes [ {} {} {} ] ] [ slots [ #100 #199 ] nodes [ {} {} ] ] [ slots [ ] nodes [ {} ] ] ]",
            node("10.0.0.1", "a.example", 7000, None, "master", "online"),
            node("10.0.0.2", "?", 7001, None, "replica", "online"),
            node("10.0.0.3", "~", 7002, None, "replica", "loading"),
            node("10.0.0.4", "10.0.0.4", 7003, None, "master", "fail"),
            node("10.0.0.5", "10.0.0.5", 7004, None, "master", "online"),
            node("10.0.0.6", "10.0.0.6", 7005, None, "master", "online"),
        ));
        let map = SlotMap::from_shards_reply(&reply, false).unwrap();
        assert_eq!(
            map.shards(),
            &[
                Shard {
                    primary: "a.example:7000".into(),
                    replicas: vec!["10.0.0.2:7001".into()],
                },
                Shard {
                    primary: "10.0.0.5:7004".into(),
                    replicas: vec![],
                },
            ]
        );
        assert_eq!(map.ranges_of(0), vec![0..=99, 200..=299]);
        assert_eq!(map.ranges_of(1), vec![100..=199]);
        assert_eq!(map.shard_index(150), Some(1));
        assert_eq!(map.shard_of(300), None);
        assert_eq!(map.covered(), 300);
    }

    #[test]
    fn with_tls_a_node_is_reached_at_its_tls_port() {
        let reply = resp(&format!(
            "[ [ slots [ #0 #16383 ] nodes [ {} ] ] ]",
            node("::1", "::1", 7000, Some(8000), "master", "online")
        ));
        let tls = SlotMap::from_shards_reply(&reply, true).unwrap();
        assert_eq!(tls.shards()[0].primary, "[::1]:8000");
        let plain = SlotMap::from_shards_reply(&reply, false).unwrap();
        assert_eq!(plain.shards()[0].primary, "[::1]:7000");
        assert_eq!(plain.covered(), SLOTS);
    }

    #[test]
    fn a_shard_without_an_online_primary_leaves_its_slots_uncovered() {
        let reply = resp(&format!(
            "[ [ slots [ #0 #10 ] nodes [ {} {} ] ] ]",
            node("10.0.0.1", "10.0.0.1", 7000, None, "master", "fail"),
            node("10.0.0.2", "10.0.0.2", 7001, None, "replica", "online"),
        ));
        let map = SlotMap::from_shards_reply(&reply, false).unwrap();
        assert_eq!(map.covered(), 0);
        assert!(map.shards().is_empty());
    }

    #[test]
    fn slots_reply_merges_a_primary_s_ranges_and_reads_unknown_endpoints() {
        let reply = resp(
            "[ [ #0 #5 [ 10.0.0.1 #7000 id1 ] [ 10.0.0.2 #7001 id2 ] ] \
               [ #6 #9 [ ? #7002 id3 [ ip 10.0.0.3 ] ] ] \
               [ #10 #12 [ 10.0.0.1 #7000 id1 ] [ 10.0.0.2 #7001 id2 ] ] \
               [ #13 #13 [ ~ #7003 id4 ] ] ]",
        );
        let map = SlotMap::from_slots_reply(&reply, "seed.example").unwrap();
        let primaries: Vec<_> = map.shards().iter().map(|s| s.primary.as_str()).collect();
        assert_eq!(
            primaries,
            ["10.0.0.1:7000", "10.0.0.3:7002", "seed.example:7003"]
        );
        assert_eq!(map.ranges_of(0), vec![0..=5, 10..=12]);
        assert_eq!(map.shards()[0].replicas, vec!["10.0.0.2:7001".to_string()]);
    }

    #[test]
    fn the_same_cluster_read_from_either_reply_gives_equal_maps() {
        let shards = resp(&format!(
            "[ [ slots [ #8000 #16383 ] nodes [ {} {} ] ] [ slots [ #0 #7999 ] nodes [ {} ] ] ]",
            node("10.0.0.2", "10.0.0.2", 7001, None, "master", "online"),
            node("10.0.0.4", "10.0.0.4", 7004, None, "replica", "online"),
            node("10.0.0.1", "10.0.0.1", 7000, None, "master", "online"),
        ));
        let slots = resp(
            "[ [ #0 #7999 [ 10.0.0.1 #7000 a ] ] [ #8000 #16383 [ 10.0.0.2 #7001 b ] [ 10.0.0.4 #7004 c ] ] ]",
        );
        assert_eq!(
            SlotMap::from_shards_reply(&shards, false).unwrap(),
            SlotMap::from_slots_reply(&slots, "h").unwrap()
        );
    }

    #[test]
    fn impossible_replies_are_typed_errors() {
        let out_of_range = resp("[ [ #0 #16384 [ h #1 a ] ] ]");
        assert!(matches!(
            SlotMap::from_slots_reply(&out_of_range, "h"),
            Err(TopologyError::SlotOutOfRange { slot: 16384, .. })
        ));
        let twice = resp("[ [ #0 #10 [ h #1 a ] ] [ #10 #20 [ h #2 b ] ] ]");
        assert!(matches!(
            SlotMap::from_slots_reply(&twice, "h"),
            Err(TopologyError::SlotTwice { slot: 10, .. })
        ));
        let backwards = resp("[ [ #10 #0 [ h #1 a ] ] ]");
        assert!(matches!(
            SlotMap::from_slots_reply(&backwards, "h"),
            Err(TopologyError::Shape { .. })
        ));
        assert!(matches!(
            SlotMap::from_shards_reply(b"*99999999\r\n", false),
            Err(TopologyError::Frame(FrameError::TooLarge { .. }))
        ));
        assert!(matches!(
            SlotMap::from_shards_reply(b"+OK\r\n", false),
            Err(TopologyError::Shape { .. })
        ));
        let odd = resp("[ [ slots [ #0 ] nodes [ ] ] ]");
        assert!(matches!(
            SlotMap::from_shards_reply(&odd, false),
            Err(TopologyError::Shape { .. })
        ));
    }
}
