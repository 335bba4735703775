//! The ground of the cluster upstream against a real Redis Cluster
//! (`cluster_harness.rs`): key slots against `CLUSTER KEYSLOT`, the slot map against the
//! nodes that answer for each key, routes against the cluster's `-CROSSSLOT` and `-MOVED`
//! answers, and a topology read again after slots moved.

use std::collections::{BTreeSet, HashMap};

use respguard::cluster::reader::{read_topology, read_topology_from, ReadError, Source};
use respguard::cluster::route::{route_args, Route};
use respguard::cluster::slot::{key_slot, SLOTS};
use respguard::cluster::topology::SlotMap;
use respguard::command::CommandTable;

use crate::cluster_harness::{cluster_node, gate_for, Cluster, NODES};
use crate::harness::{encode_bytes, eventually, Conn, RedisServer, WAIT};

/// A random key: binary bytes (empty sometimes), with `{` and `}` put at random places.
fn random_key(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut key: Vec<u8> = (0..rng.usize(0..20)).map(|_| rng.u8(..)).collect();
    for _ in 0..rng.usize(0..4) {
        let at = rng.usize(0..=key.len());
        key.insert(at, if rng.bool() { b'{' } else { b'}' });
    }
    key
}

/// A key with a hash tag: text, the tag (itself random, possibly empty or holding braces),
/// more text.
fn tagged_key(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut key: Vec<u8> = (0..rng.usize(0..4))
        .map(|_| rng.alphanumeric() as u8)
        .collect();
    key.push(b'{');
    key.extend(random_key(rng));
    key.push(b'}');
    key.extend((0..rng.usize(0..4)).map(|_| rng.u8(..)));
    key
}

/// Send `commands` pipelined on `conn` and read their replies.
async fn pipeline(conn: &mut Conn, commands: &[Vec<Vec<u8>>]) -> Vec<String> {
    let mut bytes = Vec::new();
    for command in commands {
        bytes.extend(encode_bytes(command));
    }
    conn.send(&bytes).await;
    let mut replies = Vec::with_capacity(commands.len());
    for _ in commands {
        replies.push(String::from_utf8_lossy(&conn.reply().await).into_owned());
    }
    replies
}

fn args(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// `key_slot` gives the slot `CLUSTER KEYSLOT` gives, for 4,000 keys: random binary ones
/// (empty, braces anywhere), tagged ones, and the hash-tag edge cases. A cluster-enabled
/// node answers KEYSLOT before it joins a cluster, so one node suffices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_slot_equals_cluster_keyslot_for_random_and_tagged_keys() {
    let node = cluster_node();
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut keys: Vec<Vec<u8>> = [
        "",
        "{}",
        "{{a}}",
        "a{b}c{d}",
        "{",
        "}",
        "}{a}",
        "{}{a}",
        "123456789",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    for i in 0..4_000 {
        keys.push(if i % 2 == 0 {
            random_key(&mut rng)
        } else {
            tagged_key(&mut rng)
        });
    }
    let commands: Vec<_> = keys
        .iter()
        .map(|k| vec![b"CLUSTER".to_vec(), b"KEYSLOT".to_vec(), k.clone()])
        .collect();
    let mut conn = Conn::open(node.addr()).await;
    let replies = pipeline(&mut conn, &commands).await;
    for (key, reply) in keys.iter().zip(replies) {
        assert_eq!(
            format!(":{}\r\n", key_slot(key)),
            reply,
            "key {key:?} (seed {seed})"
        );
    }
}

/// The map read from `CLUSTER SHARDS` equals the one from `CLUSTER SLOTS`, every node gives
/// the same, it names all six nodes, and for 300 random keys the primary it names answers
/// a GET without `-MOVED` while each other primary answers `-MOVED <slot> <that primary>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_map_names_the_node_that_answers_for_each_key() {
    let cluster = Cluster::start().await;
    eprintln!("cluster of {NODES} nodes ready in {:?}", cluster.started_in);
    let addresses = cluster.addresses();
    let gate = gate_for(&addresses[0]);
    let (map, source) = read_topology(&gate, &addresses[0]).await.unwrap();
    assert_eq!(source, Source::Shards, "Redis 7 knows CLUSTER SHARDS");
    let from_slots = read_topology_from(&gate, &addresses[0], Source::Slots)
        .await
        .unwrap();
    assert_eq!(map, from_slots);
    for address in &addresses {
        let (seen, _) = read_topology(&gate, address).await.unwrap();
        assert_eq!(seen, map, "the map {address} gives");
    }
    assert_eq!(map.covered(), SLOTS);
    assert_eq!(map.shards().len(), NODES / 2);
    let named: BTreeSet<&str> = map
        .shards()
        .iter()
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .map(String::as_str)
        .collect();
    assert_eq!(named, addresses.iter().map(String::as_str).collect());

    let primaries: Vec<&str> = map.shards().iter().map(|s| s.primary.as_str()).collect();
    let mut conns = HashMap::new();
    for primary in &primaries {
        conns.insert(*primary, cluster.conn(primary).await);
    }
    let mut rng = fastrand::Rng::new();
    for _ in 0..300 {
        let key = random_key(&mut rng);
        let slot = key_slot(&key);
        let owner = map
            .shard_of(slot)
            .expect("every slot covered")
            .primary
            .as_str();
        let get = encode_bytes(&[&b"GET"[..], &key]);
        for primary in &primaries {
            let conn = conns.get_mut(primary).unwrap();
            conn.send(&get).await;
            let reply = String::from_utf8_lossy(&conn.reply().await).into_owned();
            if *primary == owner {
                assert_eq!(reply, "$-1\r\n", "GET {key:?} on its owner {owner}");
            } else {
                assert_eq!(
                    reply,
                    format!("-MOVED {slot} {owner}\r\n"),
                    "GET {key:?} on {primary}"
                );
            }
        }
    }
}

/// The first key of a command (none for a keyless one).
fn first_key(table: &CommandTable, command: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut positions = Vec::new();
    table.lookup(command).key_positions(command, &mut positions);
    positions.iter().min().map(|&i| command[i].clone())
}

/// For real commands (SET, MGET over one tag and across slots, DEL of several keys, MSET,
/// EVAL with numkeys, XREADGROUP … STREAMS, SPUBLISH, PING, INFO) and 200 random MGETs and DELs,
/// `route` says `CrossSlot` exactly when the node owning the first key answers
/// `-CROSSSLOT`, and a command routed to a slot (or keyless) is never answered `-MOVED` by
/// the node the map names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_agree_with_the_cluster_s_crossslot_and_moved_answers() {
    let cluster = Cluster::start().await;
    let addresses = cluster.addresses();
    let gate = gate_for(&addresses[0]);
    let (map, _) = read_topology(&gate, &addresses[0]).await.unwrap();
    let table = CommandTable::builtin();
    let mut conns = HashMap::new();
    for shard in map.shards() {
        conns.insert(shard.primary.clone(), cluster.conn(&shard.primary).await);
    }
    // The consumer groups XREADGROUP reads, on the nodes owning their streams.
    for stream in ["{s}1", "{s}2", "a", "b"] {
        let owner = &map.shard_of(key_slot(stream.as_bytes())).unwrap().primary;
        let reply = conns
            .get_mut(owner)
            .unwrap()
            .call(&["XGROUP", "CREATE", stream, "g", "$", "MKSTREAM"])
            .await;
        assert_eq!(reply, "+OK\r\n");
    }
    let mut commands: Vec<Vec<Vec<u8>>> = [
        &["SET", "{t}a", "v"][..],
        &["MGET", "{t}a", "{t}b", "{t}c"],
        &["MGET", "a", "b"],
        &["DEL", "a", "b", "c"],
        &["DEL", "{t}a", "{t}b"],
        &["MSET", "a", "1", "b", "2"],
        &["MSET", "{t}a", "1", "{t}b", "2"],
        &["EVAL", "return 1", "2", "a", "b"],
        &["EVAL", "return #KEYS", "2", "{t}a", "{t}b", "a"],
        &["EVAL", "return 1", "0", "a", "b"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "STREAMS",
            "{s}1",
            "{s}2",
            ">",
            ">",
        ],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "STREAMS",
            "a",
            "b",
            ">",
            ">",
        ],
        &["SPUBLISH", "{t}channel", "message"],
        &["PING"],
        &["INFO", "server"],
    ]
    .iter()
    .map(|c| args(c))
    .collect();
    let mut rng = fastrand::Rng::new();
    for i in 0..200 {
        let mut command = vec![if i % 2 == 0 {
            b"MGET".to_vec()
        } else {
            b"DEL".to_vec()
        }];
        for _ in 0..rng.usize(1..4) {
            command.push(if rng.bool() {
                random_key(&mut rng)
            } else {
                tagged_key(&mut rng)
            });
        }
        commands.push(command);
    }
    let (mut cross, mut single, mut keyless) = (0, 0, 0);
    for command in &commands {
        let route = route_args(&table, command, &mut Vec::new());
        let node = match first_key(&table, command) {
            Some(key) => map.shard_of(key_slot(&key)).unwrap().primary.clone(),
            None => map.shards()[0].primary.clone(),
        };
        let conn = conns.get_mut(&node).unwrap();
        conn.send(&encode_bytes(command)).await;
        let reply = String::from_utf8_lossy(&conn.reply().await).into_owned();
        let shown = String::from_utf8_lossy(&command.join(&b' ')).into_owned();
        assert_eq!(
            route == Route::CrossSlot,
            reply.starts_with("-CROSSSLOT"),
            "{shown}: {route:?}, the cluster answered {reply:?}"
        );
        assert!(!reply.starts_with("-MOVED"), "{shown}: {reply:?}");
        match route {
            Route::CrossSlot => cross += 1,
            Route::Slot(slot) => {
                assert_eq!(map.shard_of(slot).unwrap().primary, node, "{shown}");
                single += 1;
            }
            Route::Keyless => keyless += 1,
        }
    }
    assert!(
        cross > 10 && single > 10 && keyless >= 3,
        "{cross} {single} {keyless}"
    );
}

/// A node's id (`CLUSTER MYID`).
async fn node_id(cluster: &Cluster, address: &str) -> String {
    let reply = cluster.conn(address).await.call(&["CLUSTER", "MYID"]).await;
    reply.lines().nth(1).expect("a bulk string").to_string()
}

/// The slots whose shard's primary differs between two maps, with the primary before and
/// after.
fn moved_slots(before: &SlotMap, after: &SlotMap) -> Vec<(u16, String, String)> {
    let primary = |map: &SlotMap, slot| map.shard_of(slot).map(|s| s.primary.clone());
    (0..SLOTS as u16)
        .filter_map(|slot| match (primary(before, slot), primary(after, slot)) {
            (Some(b), Some(a)) if a != b => Some((slot, b, a)),
            _ => None,
        })
        .collect()
}

/// After `redis-cli --cluster reshard` moves 3 slots (and a key in one of them) from one
/// primary to another, a new read of the topology, from every node, shows exactly those 3
/// slots served by the new primary, which answers the key, while the old one answers
/// `-MOVED` to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_read_of_the_topology_shows_resharded_slots() {
    let cluster = Cluster::start().await;
    let addresses = cluster.addresses();
    let gate = gate_for(&addresses[0]);
    let (before, _) = read_topology(&gate, &addresses[0]).await.unwrap();
    let from = before.shards()[0].primary.clone();
    let to = before.shards()[1].primary.clone();
    // redis-cli moves the source's first slots: put a key in its very first slot.
    let first_slot = *before.ranges_of(0)[0].start();
    let key = (0..)
        .map(|n| format!("key:{n}"))
        .find(|k| key_slot(k.as_bytes()) == first_slot)
        .unwrap();
    assert_eq!(
        cluster
            .conn(&from)
            .await
            .call(&["SET", &key, "moved"])
            .await,
        "+OK\r\n"
    );
    let out = tokio::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &from])
        .args(["--cluster-from", &node_id(&cluster, &from).await])
        .args(["--cluster-to", &node_id(&cluster, &to).await])
        .args(["--cluster-slots", "3", "--cluster-yes"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "reshard: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Replicas learn the move by gossip: every node's view is awaited.
    for address in &addresses {
        let moved = eventually!(WAIT, format!("{address} sees the 3 slots moved"), {
            match read_topology(&gate, address).await {
                Ok((after, _)) => {
                    let moved = moved_slots(&before, &after);
                    if moved.len() == 3 {
                        Ok(moved)
                    } else {
                        Err(moved)
                    }
                }
                Err(e) => Err(vec![(0, e.to_string(), String::new())]),
            }
        });
        for (slot, was, now) in &moved {
            assert_eq!((was, now), (&from, &to), "slot {slot} seen from {address}");
        }
        assert!(moved.iter().any(|(slot, _, _)| *slot == first_slot));
    }
    let mut old = cluster.conn(&from).await;
    assert_eq!(
        old.call(&["GET", &key]).await,
        format!("-MOVED {first_slot} {to}\r\n")
    );
    let mut new = cluster.conn(&to).await;
    assert_eq!(new.call(&["GET", &key]).await, "$5\r\nmoved\r\n");
}

/// The reader authenticates as the gate does (the URL's password), and says what a node
/// refuses: a node asked without the password answers `-NOAUTH`, a Redis not in cluster
/// mode says cluster support is disabled, and a cluster node with no slots yet gives a
/// map covering nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_authenticates_and_reports_what_a_node_refuses() {
    let node = crate::cluster_harness::cluster_node_with(&["--requirepass", "s3cret"]);
    let address = node.addr().to_string();
    let with_password = crate::cluster_harness::gate_for_url(&format!("redis://:s3cret@{address}"));
    let (map, source) = read_topology(&with_password, &address).await.unwrap();
    assert_eq!(
        (map.covered(), map.shards().len(), source),
        (0, 0, Source::Shards)
    );
    let without = gate_for(&address);
    match read_topology(&without, &address).await {
        Err(ReadError::Refused { message, .. }) => {
            assert!(message.starts_with("NOAUTH"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let plain = RedisServer::start();
    let address = plain.addr().to_string();
    match read_topology(&gate_for(&address), &address).await {
        Err(ReadError::Refused { message, .. }) => {
            assert!(message.contains("cluster support disabled"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
