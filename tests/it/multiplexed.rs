//! The multiplexed connection mode (`upstream.connections = "multiplexed"`): clients share
//! `upstream.shared_connections` Redis connections, each named `respguard-shared`, and a
//! client moves to a Redis connection of its own (it is pinned) while it uses connection
//! state, for good after state that lasts (`tests/it/pinning.rs` covers the pool of those
//! connections). These tests look at Redis from a direct connection (`CLIENT LIST`,
//! `INFO clients`) to see which connections carry what, and check every reply against its
//! own request, so a reply delivered to another client or another request fails the test.
//!
//! Most tests run in both modes, each with the connections that mode must show: what holds
//! for a client does not depend on the mode, only how many Redis connections serve it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use respguard::app::ProxyHandle;
use respguard::config::{HumanDuration, RawConfig};

use crate::differential::wait_for_blocked;
use crate::harness::*;
use crate::memory::ProxyProcess;
use crate::shim::{Fault, Shim};

/// The name of every shared Redis connection (`CLIENT SETNAME`).
pub(crate) const SHARED_NAME: &str = "respguard-shared";

/// One line of `CLIENT LIST`.
#[derive(Debug, Clone)]
pub(crate) struct ClientLine {
    pub id: u64,
    pub name: String,
    pub flags: String,
    pub cmd: String,
    /// The database the connection uses.
    pub db: u32,
    /// The ACL user it is authenticated as.
    pub user: String,
    qbuf: usize,
}

/// A direct connection to Redis that tells the proxy's connections apart: its own (the
/// monitor's, found with no client connected), the shared ones (by name), and the rest,
/// each serving one client (dedicated).
pub(crate) struct Watcher {
    pub conn: Conn,
    /// The watcher's and the proxy's own connections, by id.
    own: HashSet<u64>,
}

impl Watcher {
    /// Open the watcher once the proxy has started and before any client connects: wait
    /// for the proxy's monitor (it polls `PING` and `INFO` at once), then remember every
    /// connection there is, but shared ones, as the baseline.
    pub(crate) async fn open(server: &RedisServer) -> Watcher {
        let mut conn = Conn::open(server.addr()).await;
        let me: u64 = id_of(&conn.call(&["CLIENT", "ID"]).await);
        let mut w = Watcher {
            conn,
            own: HashSet::from([me]),
        };
        let own = eventually!(WAIT, "the proxy's monitor connected", {
            let list = w.list().await;
            let monitor = list
                .iter()
                .any(|c| c.id != me && (c.cmd == "info" || c.cmd == "ping"));
            if monitor {
                Ok(list
                    .into_iter()
                    .filter(|c| c.name != SHARED_NAME)
                    .map(|c| c.id)
                    .collect::<HashSet<u64>>())
            } else {
                Err(list)
            }
        });
        w.own = own;
        w
    }

    /// A direct connection to Redis, counted with the baseline (not as a client's).
    pub(crate) async fn direct(&mut self, server: &RedisServer) -> Conn {
        let mut c = Conn::open(server.addr()).await;
        self.own.insert(id_of(&c.call(&["CLIENT", "ID"]).await));
        c
    }

    /// Redis's connections now.
    pub(crate) async fn list(&mut self) -> Vec<ClientLine> {
        let reply = self.conn.call(&["CLIENT", "LIST"]).await;
        let body = reply.split_once("\r\n").map_or("", |(_, rest)| rest);
        body.lines()
            .filter(|l| l.starts_with("id="))
            .map(|line| {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                        .unwrap_or("")
                        .to_owned()
                };
                ClientLine {
                    id: field("id").parse().unwrap(),
                    name: field("name"),
                    flags: field("flags"),
                    cmd: field("cmd"),
                    db: field("db").parse().unwrap_or(0),
                    user: field("user"),
                    qbuf: field("qbuf").parse().unwrap_or(0),
                }
            })
            .collect()
    }

    /// The connections serving clients, as (shared, dedicated).
    pub(crate) async fn serving(&mut self) -> (Vec<ClientLine>, Vec<ClientLine>) {
        let list = self.list().await;
        let (shared, rest): (Vec<_>, Vec<_>) =
            list.into_iter().partition(|c| c.name == SHARED_NAME);
        let dedicated = rest
            .into_iter()
            .filter(|c| !self.own.contains(&c.id))
            .collect();
        (shared, dedicated)
    }

    /// `connected_clients` from `INFO clients`.
    pub(crate) async fn connected(&mut self) -> usize {
        let info = self.conn.call(&["INFO", "clients"]).await;
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no connected_clients in {info}"))
    }

    /// Wait until the connections serving clients are `want` for `mode` (see [`Want`]).
    pub(crate) async fn expect(&mut self, mode: Mode, want: Want, what: &str) {
        eventually!(WAIT, format!("{mode:?}: {what}: {want:?}"), {
            let (shared, dedicated) = self.serving().await;
            if want.holds(mode, shared.len(), dedicated.len()) {
                Ok(())
            } else {
                Err(format!("{} shared, dedicated {dedicated:?}", shared.len()))
            }
        })
    }

    /// Kill the connection `id` (it may be gone already).
    pub(crate) async fn kill(&mut self, id: u64) {
        let reply = self
            .conn
            .call(&["CLIENT", "KILL", "ID", &id.to_string()])
            .await;
        assert!(reply == ":1\r\n" || reply == ":0\r\n", "{reply}");
    }
}

/// The clients being served, and what connections each mode must show for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    /// Clients that sent only stateless commands so far.
    pub plain: usize,
    /// Clients that used connection state.
    pub pinned: usize,
    /// `upstream.shared_connections`.
    pub shared_max: usize,
}

impl Want {
    /// Per client: one connection per client, none shared. Multiplexed: one per pinned
    /// client, and between one and `shared_max` shared ones while plain clients are served.
    fn holds(self, mode: Mode, shared: usize, dedicated: usize) -> bool {
        match mode {
            Mode::PerClient => shared == 0 && dedicated == self.plain + self.pinned,
            Mode::Multiplexed => {
                dedicated == self.pinned
                    && shared <= self.shared_max
                    && (self.plain == 0 || shared >= 1)
            }
        }
    }
}

/// The integer of a `:N` reply.
fn id_of(reply: &str) -> u64 {
    reply
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an integer reply: {reply:?}"))
}

/// The start of the error each command in flight gets when its Redis connection is lost.
fn lost(upstream: SocketAddr) -> String {
    format!("-ERR respguard: upstream {upstream} connection lost before the reply (")
}

/// A proxy configuration in `mode` that reconnects fast.
fn fast_config(mode: Mode, url: &str) -> RawConfig {
    let mut raw = mode.config(url);
    raw.upstream.backoff_min = HumanDuration(Duration::from_millis(10));
    raw.upstream.backoff_max = HumanDuration(Duration::from_millis(50));
    raw
}

/// Start a proxy in `mode` in front of `server` with the settings of `toml`.
async fn proxy_with_toml_in(mode: Mode, server: &RedisServer, toml: &str) -> ProxyHandle {
    let mut raw = RawConfig::from_toml(toml).expect("test config parses");
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = server.url();
    start_proxy(mode.apply(raw)).await
}

/// One reply, skipping the lines a MONITOR client receives for other connections'
/// commands (`+<time> [<db> <addr>] ...`).
async fn reply_skipping_monitor_lines(c: &mut Conn) -> String {
    loop {
        let reply = String::from_utf8_lossy(&c.reply().await).into_owned();
        let monitor_line = reply.starts_with('+')
            && reply.as_bytes().get(1).is_some_and(u8::is_ascii_digit)
            && reply.contains(" [");
        if !monitor_line {
            return reply;
        }
    }
}

/// Twenty clients at once, each a pipeline of stateless commands (SET, GET, INCR, LPUSH,
/// HSET, EVAL, an error) on its own keys, get exactly the replies a direct connection gets
/// for the same pipeline. Multiplexed, Redis sees no connection for any of them but the
/// shared ones, at most `shared_connections` of them, each named `respguard-shared`; per
/// client, one connection each and none shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_commands_from_many_clients_go_over_the_shared_connections() {
    const CLIENTS: usize = 20;
    let pipeline = |i: usize| -> Vec<u8> {
        let mut batch = Vec::new();
        for r in 0..50 {
            let key = format!("c{i}:k{}", r % 5);
            let cmd: Vec<String> = match r % 7 {
                0 => vec!["SET".into(), key, format!("v{i}-{r}")],
                1 => vec!["GET".into(), key],
                2 => vec!["INCR".into(), format!("c{i}:n")],
                3 => vec!["LPUSH".into(), format!("c{i}:l"), r.to_string()],
                4 => vec!["HSET".into(), format!("c{i}:h"), key, r.to_string()],
                5 => vec![
                    "EVAL".into(),
                    "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}".into(),
                    "1".into(),
                    format!("c{i}:e"),
                    format!("client-{i}"),
                ],
                _ => vec!["LPUSH".into(), format!("c{i}:h"), "x".into()], // WRONGTYPE
            };
            batch.extend_from_slice(&encode_bytes(&cmd));
        }
        batch
    };
    let reference = RedisServer::start();
    let mut want = Vec::new();
    for i in 0..CLIENTS {
        let mut direct = Conn::open(reference.addr()).await;
        direct.send(&pipeline(i)).await;
        want.push(direct.replies(50).await);
    }
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = mode.proxy_for(&server).await;
        let mut watcher = Watcher::open(&server).await;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, want) in want.iter().cloned().enumerate() {
            let (addr, batch) = (proxy.addr, pipeline(i));
            tasks.spawn(async move {
                let mut c = Conn::open(addr).await;
                c.send(&batch).await;
                assert_eq!(c.replies(50).await, want, "{mode:?}: client {i}");
                c
            });
        }
        let clients = tasks.join_all().await;
        let plain = Want {
            plain: CLIENTS,
            pinned: 0,
            shared_max: 2,
        };
        watcher.expect(mode, plain, "twenty plain clients").await;
        drop(clients);
        proxy.shutdown().await;
    }
}

/// `upstream.shared_connections` is how many connections the clients share: by default (2),
/// with 1 and with 3, twelve clients pipelining at once are carried by at most that many
/// connections, all named `respguard-shared`, and Redis sees the clients' commands on them
/// (a shared connection's last command is SETRANGE, which only the clients send).
/// Multiplexed only: per client, there is no shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_connections_is_how_many_connections_clients_share() {
    for n in [None, Some(1), Some(3)] {
        let server = RedisServer::start();
        let proxy = match n {
            None => mux_proxy_for(&server).await,
            Some(n) => {
                let mut raw = mux_config(&server.url());
                raw.upstream.shared_connections = n;
                start_proxy(raw).await
            }
        };
        let mut watcher = Watcher::open(&server).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..12 {
            let addr = proxy.addr;
            tasks.spawn(async move {
                let mut c = Conn::open(addr).await;
                let key = format!("s:{i}");
                let mut batch: Vec<u8> = (0..100)
                    .flat_map(|_| encode(&["HINCRBY", &key, "f", "1"]))
                    .collect();
                batch.extend_from_slice(&encode(&["SETRANGE", &format!("r:{i}"), "0", "x"]));
                c.send(&batch).await;
                let want: String = (1..=100).map(|n| format!(":{n}\r\n")).collect();
                assert_eq!(c.replies(101).await, format!("{want}:1\r\n"), "client {i}");
                c
            });
        }
        let clients = tasks.join_all().await;
        let want = Want {
            plain: 12,
            pinned: 0,
            shared_max: n.unwrap_or(2),
        };
        watcher
            .expect(Mode::Multiplexed, want, "twelve clients")
            .await;
        let (shared, _) = watcher.serving().await;
        assert!(
            shared.iter().any(|c| c.cmd == "setrange"),
            "{n:?}: {shared:?}"
        );
        drop(clients);
        proxy.shutdown().await;
    }
}

/// Commands that only touch keys or the server, not the connection, never pin: a client
/// sending XREAD and XREADGROUP without BLOCK, PUBLISH, EVAL, SCRIPT LOAD, EVALSHA, FCALL
/// (through FUNCTION LOAD), UNWATCH, PING, ECHO, DBSIZE, TYPE, SCAN, UNLINK, SELECT of the
/// database the shared connections use (0 here), CLIENT GETNAME of the unnamed client, and
/// the client library's CLIENT SETINFO, valid and refused (Redis 7.0 does not know it;
/// Redis 7.2 and Valkey do), pipelined in RESP2, gets the replies a direct connection gets
/// and still has no Redis connection of its own (multiplexed: respguard keeps the library).
#[tokio::test]
async fn commands_without_connection_state_never_pin() {
    let lib = "#!lua name=pinlib\nredis.register_function('f', function(keys) return redis.call('INCR', keys[1]) end)";
    let sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"; // SHA1 of "return 1"
    let script: &[&[&str]] = &[
        &["XADD", "s", "1-1", "f", "v"],
        &["XREAD", "COUNT", "5", "STREAMS", "s", "0"],
        &["XGROUP", "CREATE", "s", "g", "0"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "5",
            "STREAMS",
            "s",
            ">",
        ],
        &["PUBLISH", "ch", "nobody"],
        &["EVAL", "return redis.call('INCR', KEYS[1])", "1", "e"],
        &["SCRIPT", "LOAD", "return 1"],
        &["EVALSHA", sha, "0"],
        &["FUNCTION", "LOAD", "REPLACE", lib],
        &["FCALL", "f", "1", "e"],
        &["UNWATCH"],
        &["PING"],
        &["ECHO", "hi"],
        &["DBSIZE"],
        &["TYPE", "s"],
        &["SCAN", "0", "MATCH", "s", "COUNT", "100"],
        &["UNLINK", "s", "e"],
        &["SELECT", "0"],
        &["GET", "s"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETINFO", "lib-name", "mylib"],
        &["CLIENT", "SETINFO", "LIB-VER", "1.0"],
        &["CLIENT", "SETINFO", "lib-name", "bad lib"],
        &["CLIENT", "SETINFO", "lib-colour", "red"],
    ];
    let batch: Vec<u8> = script.iter().flat_map(|c| encode(c)).collect();
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    direct.send(&batch).await;
    let want = direct.replies(script.len()).await;
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = mode.proxy_for(&server).await;
        let mut watcher = Watcher::open(&server).await;
        let mut c = Conn::open(proxy.addr).await;
        c.send(&batch).await;
        assert_eq!(c.replies(script.len()).await, want, "{mode:?}");
        let plain = Want {
            plain: 1,
            pinned: 0,
            shared_max: 2,
        };
        watcher
            .expect(mode, plain, "after stateless commands")
            .await;
        proxy.shutdown().await;
    }
}

/// Each kind of command that uses connection state pins the client that sends it:
/// MULTI, WATCH, the blocking commands, WAIT, the three SUBSCRIBEs, MONITOR,
/// RESET, CLIENT subcommands but SETNAME, READONLY, READWRITE, ASKING. The client gets
/// the replies a direct connection gets; after a GET it has no connection of its own
/// (multiplexed). Once the state ends (EXEC, DISCARD, UNWATCH, the blocking command or
/// WAIT answered, the last subscription gone) it has none again, and its next GET uses
/// none; after a command whose state lasts (CLIENT, MONITOR, RESET,
/// the cluster flags) it keeps exactly one, still after its next GET, freed when the client
/// leaves. Per client, it has one connection throughout. (`pinned_idle = 0`: a connection
/// given back is closed, so Redis shows it gone.) SELECT and HELLO 2|3 move a client to
/// other shared connections instead (`tests/it/identities.rs`), and so does AUTH
/// (`tests/it/user_lanes.rs`).
#[tokio::test]
async fn each_command_using_connection_state_pins_its_client_while_the_state_lasts() {
    // The cases up to `LASTING` end their state; the rest keep it for good.
    const LASTING: usize = 14;
    let cases: &[(&str, &[&[&str]])] = &[
        ("MULTI", &[&["MULTI"], &["SET", "pin", "1"], &["EXEC"]]),
        (
            "MULTI DISCARD",
            &[&["MULTI"], &["SET", "pin", "1"], &["DISCARD"]],
        ),
        ("WATCH EXEC", &[&["WATCH", "pin"], &["MULTI"], &["EXEC"]]),
        ("WATCH", &[&["WATCH", "pin"], &["UNWATCH"]]),
        ("BLPOP", &[&["BLPOP", "pin:l", "0.01"]]),
        ("BRPOP", &[&["BRPOP", "pin:l", "0.01"]]),
        (
            "BLMOVE",
            &[&["BLMOVE", "pin:l", "pin:m", "LEFT", "RIGHT", "0.01"]],
        ),
        ("BZPOPMIN", &[&["BZPOPMIN", "pin:z", "0.01"]]),
        (
            "XREAD BLOCK",
            &[&["XREAD", "BLOCK", "10", "STREAMS", "pin:none", "$"]],
        ),
        (
            "XREADGROUP BLOCK",
            &[&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "10",
                "STREAMS",
                "pin:s",
                ">",
            ]],
        ),
        ("WAIT", &[&["WAIT", "0", "0"]]),
        (
            "SUBSCRIBE",
            &[&["SUBSCRIBE", "pin:ch"], &["UNSUBSCRIBE", "pin:ch"]],
        ),
        (
            "PSUBSCRIBE",
            &[&["PSUBSCRIBE", "pin:*"], &["PUNSUBSCRIBE", "pin:*"]],
        ),
        (
            "SSUBSCRIBE",
            &[&["SSUBSCRIBE", "pin:sh"], &["SUNSUBSCRIBE", "pin:sh"]],
        ),
        ("MONITOR", &[&["MONITOR"], &["RESET"]]),
        ("RESET", &[&["RESET"]]),
        ("CLIENT NO-EVICT", &[&["CLIENT", "NO-EVICT", "off"]]),
        ("CLIENT REPLY", &[&["CLIENT", "REPLY", "ON"]]),
        ("READONLY", &[&["READONLY"]]),
        ("READWRITE", &[&["READWRITE"]]),
        ("ASKING", &[&["ASKING"]]),
    ];
    assert_eq!(cases[LASTING].0, "MONITOR");
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let mut raw = mode.config(&server.url());
        raw.upstream.pinned_idle = 0;
        let proxy = start_proxy(raw).await;
        let mut watcher = Watcher::open(&server).await;
        let setup = ["XGROUP", "CREATE", "pin:s", "g", "$", "MKSTREAM"];
        assert_eq!(watcher.conn.call(&setup).await, "+OK\r\n");
        let (plain, pinned) = (
            Want {
                plain: 1,
                pinned: 0,
                shared_max: 2,
            },
            Want {
                plain: 0,
                pinned: 1,
                shared_max: 2,
            },
        );
        for (i, (name, commands)) in cases.iter().enumerate() {
            let what = format!("{mode:?}, {name}");
            let after = if i < LASTING { plain } else { pinned };
            let mut direct = watcher.direct(&server).await;
            let mut c = Conn::open(proxy.addr).await;
            assert_eq!(c.call(&["GET", "pin:k"]).await, "$-1\r\n", "{what}");
            watcher
                .expect(mode, plain, &format!("{name}: before"))
                .await;
            for cmd in *commands {
                direct.cmd(cmd).await;
                let want = mask(&reply_skipping_monitor_lines(&mut direct).await);
                c.cmd(cmd).await;
                let got = mask(&reply_skipping_monitor_lines(&mut c).await);
                assert_eq!(got, want, "{what}: {cmd:?}");
            }
            watcher.expect(mode, after, &format!("{name}: after")).await;
            let again = c.call(&["EXISTS", "pin:k"]).await;
            assert_eq!(again, ":0\r\n", "{what}");
            watcher.expect(mode, after, &format!("{name}: later")).await;
            drop(c);
            let none = Want {
                plain: 0,
                pinned: 0,
                shared_max: 2,
            };
            watcher.expect(mode, none, &format!("{name}: gone")).await;
        }
        proxy.shutdown().await;
    }
}

/// The commands a client pipelined before the one that pins it are carried out first: a SET
/// right before WATCH of the same key does not make the EXEC fail (it would if the SET
/// reached Redis after the WATCH), and a DEL right before BLPOP of the same list leaves
/// BLPOP nothing to pop (it would pop the old element if it ran first). Twenty times, each
/// a new client, in both modes, with the replies a direct connection gets.
#[tokio::test]
async fn commands_pipelined_before_the_pinning_one_run_before_it() {
    let watch = [
        &["SET", "w", "v1"][..],
        &["WATCH", "w"],
        &["MULTI"],
        &["GET", "w"],
        &["EXEC"],
    ];
    let blpop = [&["DEL", "q"][..], &["BLPOP", "q", "0.05"], &["GET", "w"]];
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let mut want = Vec::new();
    for script in [&watch[..], &blpop] {
        direct.call(&["DEL", "q"]).await;
        assert_eq!(direct.call(&["RPUSH", "q", "stale"]).await, ":1\r\n");
        direct
            .send(&script.iter().flat_map(|c| encode(c)).collect::<Vec<u8>>())
            .await;
        want.push(direct.replies(script.len()).await);
    }
    assert!(want[0].ends_with("*1\r\n$2\r\nv1\r\n"), "{}", want[0]);
    assert!(want[1].starts_with(":1\r\n*-1\r\n"), "{}", want[1]);
    for mode in Mode::BOTH {
        let proxy = mode.proxy_for(&server).await;
        for round in 0..20 {
            for (script, want) in [&watch[..], &blpop].into_iter().zip(&want) {
                direct.call(&["DEL", "q"]).await;
                assert_eq!(direct.call(&["RPUSH", "q", "stale"]).await, ":1\r\n");
                let mut c = Conn::open(proxy.addr).await;
                // A stateless command first, so the client starts on a shared connection.
                assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
                c.send(&script.iter().flat_map(|c| encode(c)).collect::<Vec<u8>>())
                    .await;
                let got = c.replies(script.len()).await;
                assert_eq!(&got, want, "{mode:?}, round {round}: {:?}", script[1]);
            }
        }
        proxy.shutdown().await;
    }
}

/// What a client does to its connection stays on it: after SELECT 3 its writes land
/// in database 3 while a plain client's land in database 0 (multiplexed, each on shared
/// connections of its database); its open MULTI queues only its own commands; its CLIENT
/// SETNAME names only its own connection (multiplexed, kept by the proxy and given to the
/// connection of its own a CLIENT NO-EVICT takes; the shared ones keep their name), and
/// CLIENT GETNAME answers it to that client only. A RESP3 client (HELLO 3,
/// multiplexed on shared RESP3 connections) gets RESP3 replies while a RESP2 client next to
/// it gets RESP2 ones.
#[tokio::test]
async fn a_pinned_clients_state_never_reaches_other_clients() {
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = mode.proxy_for(&server).await;
        let mut watcher = Watcher::open(&server).await;
        let mut plain = Conn::open(proxy.addr).await;
        let mut pinned = Conn::open(proxy.addr).await;
        assert_eq!(plain.call(&["SET", "before", "0"]).await, "+OK\r\n");
        assert_eq!(pinned.call(&["SELECT", "3"]).await, "+OK\r\n");
        assert_eq!(pinned.call(&["SET", "a", "3"]).await, "+OK\r\n");
        assert_eq!(plain.call(&["SET", "b", "0"]).await, "+OK\r\n");
        assert_eq!(plain.call(&["EXISTS", "a"]).await, ":0\r\n", "{mode:?}");
        assert_eq!(pinned.call(&["EXISTS", "b"]).await, ":0\r\n", "{mode:?}");
        assert_eq!(watcher.conn.call(&["SELECT", "3"]).await, "+OK\r\n");
        assert_eq!(watcher.conn.call(&["EXISTS", "a", "b"]).await, ":1\r\n");
        assert_eq!(watcher.conn.call(&["SELECT", "0"]).await, "+OK\r\n");
        assert_eq!(watcher.conn.call(&["EXISTS", "a", "b"]).await, ":1\r\n");

        assert_eq!(pinned.call(&["MULTI"]).await, "+OK\r\n");
        assert_eq!(pinned.call(&["SET", "t", "1"]).await, "+QUEUED\r\n");
        assert_eq!(plain.call(&["SET", "t", "plain"]).await, "+OK\r\n");
        assert_eq!(plain.call(&["GET", "t"]).await, "$5\r\nplain\r\n");
        assert_eq!(pinned.call(&["EXEC"]).await, "*1\r\n+OK\r\n");
        assert_eq!(plain.call(&["GET", "t"]).await, "$5\r\nplain\r\n", "db 0");

        assert_eq!(
            pinned.call(&["CLIENT", "SETNAME", "app-a"]).await,
            "+OK\r\n"
        );
        let name = pinned.call(&["CLIENT", "GETNAME"]).await;
        assert_eq!(name, "$5\r\napp-a\r\n", "{mode:?}, before pinning");
        assert_eq!(pinned.call(&["CLIENT", "NO-EVICT", "off"]).await, "+OK\r\n");
        assert_eq!(plain.call(&["GET", "b"]).await, "$1\r\n0\r\n");
        let want = Want {
            plain: 1,
            pinned: 1,
            shared_max: 6,
        };
        watcher.expect(mode, want, "one plain, one pinned").await;
        let (_, dedicated) = watcher.serving().await;
        let named: Vec<_> = dedicated.iter().filter(|c| c.name == "app-a").collect();
        assert_eq!(named.len(), 1, "{mode:?}: {dedicated:?}");
        let name = pinned.call(&["CLIENT", "GETNAME"]).await;
        assert_eq!(name, "$5\r\napp-a\r\n", "{mode:?}");
        assert_eq!(
            plain.call(&["CLIENT", "GETNAME"]).await,
            "$-1\r\n",
            "{mode:?}"
        );

        let mut resp3 = Conn::open(proxy.addr).await;
        assert!(resp3.call(&["HELLO", "3"]).await.starts_with('%'));
        assert_eq!(resp3.call(&["GET", "nothing"]).await, "_\r\n");
        assert_eq!(plain.call(&["GET", "nothing"]).await, "$-1\r\n");
        assert_eq!(resp3.call(&["HGETALL", "nothing"]).await, "%0\r\n");
        assert_eq!(plain.call(&["HGETALL", "nothing"]).await, "*0\r\n");
        let want = match mode {
            Mode::PerClient => Want {
                plain: 1,
                pinned: 2,
                shared_max: 0,
            },
            Mode::Multiplexed => Want {
                plain: 2,
                pinned: 1,
                shared_max: 6,
            },
        };
        watcher
            .expect(mode, want, "one pinned, the RESP3 one shares")
            .await;
        proxy.shutdown().await;
    }
}

/// A thousand clients connected at once, each writing and reading its own keys in pipelines
/// concurrently, and ten pinned clients (CLIENT NO-EVICT) beside them: Redis's
/// `connected_clients`, sampled throughout, never passes the baseline (the proxy's monitor
/// and this test's own connection) plus `shared_connections` plus the ten pinned clients;
/// every reply is the client's own. Per client, it is exactly the baseline plus 1,010.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_share_two_redis_connections() {
    const CLIENTS: usize = 1000;
    const PINNED: usize = 10;
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let mut raw = mode.config(&server.url());
        raw.proxy.max_connections_per_second = 0;
        raw.proxy.max_connections_per_second_per_address = 0;
        raw.upstream.max_connects_per_second = 100_000;
        let shared_max = raw.upstream.shared_connections;
        let proxy = start_proxy(raw).await;
        let mut watcher = Watcher::open(&server).await;
        let baseline = watcher.own.len();
        assert_eq!(
            watcher.connected().await,
            baseline + watcher.serving().await.0.len()
        );

        // From here to the end, a sampler reads connected_clients every 5 ms.
        let (done_tx, mut done) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(watcher.connected().await);
                if *done.borrow_and_update() {
                    return (peak, watcher);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut pinned = Vec::new();
        for i in 0..PINNED {
            let mut c = Conn::open(proxy.addr).await;
            let named = c.call(&["CLIENT", "NO-EVICT", "off"]).await;
            assert_eq!(named, "+OK\r\n", "pinned {i}");
            pinned.push(c);
        }
        // Connect in waves (the listen backlog is finite), each client writing its key.
        let mut clients = Vec::with_capacity(CLIENTS);
        for wave in 0..CLIENTS / 250 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in wave * 250..(wave + 1) * 250 {
                let addr = proxy.addr;
                tasks.spawn(async move {
                    let mut c = Conn::open(addr).await;
                    let set = c
                        .call(&["SET", &format!("client:{i}"), &format!("v{i}")])
                        .await;
                    assert_eq!(set, "+OK\r\n", "client {i}");
                    (i, c)
                });
            }
            clients.extend(tasks.join_all().await);
        }

        // All at once, five rounds each.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut c) in clients {
            tasks.spawn(async move {
                for round in 0..5 {
                    let (key, value) = (format!("client:{i}"), format!("v{i}-{round}"));
                    let mut batch = encode(&["SET", &key, &value]);
                    batch.extend_from_slice(&encode(&["GET", &key]));
                    batch.extend_from_slice(&encode(&["INCR", &format!("count:{i}")]));
                    c.send(&batch).await;
                    let want = format!("+OK\r\n${}\r\n{value}\r\n:{}\r\n", value.len(), round + 1);
                    assert_eq!(c.replies(3).await, want, "client {i}");
                }
                c
            });
        }
        let clients = tasks.join_all().await;
        done_tx.send(true).unwrap();
        let (peak, mut watcher) = sampler.await.unwrap();
        let now = watcher.connected().await;
        match mode {
            Mode::PerClient => {
                assert_eq!(now, baseline + CLIENTS + PINNED, "{mode:?}");
                assert_eq!(peak, baseline + CLIENTS + PINNED, "{mode:?}");
            }
            Mode::Multiplexed => {
                let bound = baseline + shared_max + PINNED;
                assert!(peak <= bound, "{mode:?}: {peak} connections, bound {bound}");
                assert!(now <= bound, "{mode:?}: {now} connections, bound {bound}");
            }
        }
        let want = Want {
            plain: CLIENTS,
            pinned: PINNED,
            shared_max,
        };
        watcher.expect(mode, want, "a thousand clients").await;
        drop((clients, pinned));
        proxy.shutdown().await;
    }
}

/// The connections Redis has blocked on a SET (`CLIENT PAUSE WRITE` holds it) and the bytes
/// they hold: the SET's and what is queued behind it.
fn held(list: Vec<ClientLine>, set_len: usize) -> (Vec<ClientLine>, usize) {
    let blocked: Vec<ClientLine> = list
        .into_iter()
        .filter(|c| c.flags.contains('b') && c.cmd == "set")
        .collect();
    let bytes = blocked.iter().map(|c| set_len + c.qbuf).sum();
    (blocked, bytes)
}

/// Four clients each have a SET and a GET in flight on the connection carrying them (Redis
/// holds the SETs with CLIENT PAUSE WRITE, so the replies cannot have been sent) when that
/// connection is killed with CLIENT KILL. Each client gets, for both commands, the error
/// `upstream <addr> connection lost before the reply`; the SET never ran. Multiplexed, the
/// clients stay connected and their next commands work over a new shared connection; per
/// client, each connection then closes, as a direct one would.
#[tokio::test]
async fn a_killed_shared_connection_fails_its_commands_in_flight_and_clients_go_on() {
    const CLIENTS: usize = 4;
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = start_proxy(fast_config(mode, &server.url())).await;
        let mut watcher = Watcher::open(&server).await;
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut c = Conn::open(proxy.addr).await;
            assert_eq!(c.call(&["GET", &format!("k:{i}")]).await, "$-1\r\n");
            clients.push(c);
        }
        let pause = ["CLIENT", "PAUSE", "20000", "WRITE"];
        assert_eq!(watcher.conn.call(&pause).await, "+OK\r\n");
        let set_len = encode(&["SET", "k:0", "value-0"]).len();
        let per_client = set_len + encode(&["GET", "k:0"]).len();
        for (i, c) in clients.iter_mut().enumerate() {
            let (key, value) = (format!("k:{i}"), format!("value-{i}"));
            let mut batch = encode(&["SET", &key, &value]);
            batch.extend_from_slice(&encode(&["GET", &key]));
            c.send(&batch).await;
        }
        // Every client's two commands are in Redis, held behind a paused SET.
        let holding = eventually!(WAIT, "every command held in Redis", {
            let (holding, bytes) = held(watcher.list().await, set_len);
            if bytes >= CLIENTS * per_client {
                Ok(holding)
            } else {
                Err(format!("{bytes} bytes held on {holding:?}"))
            }
        });
        // Multiplexed, what is killed is shared connections; per client, the clients' own.
        let shared = holding.iter().filter(|c| c.name == SHARED_NAME).count();
        let want = if mode == Mode::Multiplexed {
            holding.len()
        } else {
            0
        };
        assert_eq!(shared, want, "{mode:?}: {holding:?}");
        let ids: Vec<u64> = holding.iter().map(|c| c.id).collect();
        for &id in &ids {
            watcher.kill(id).await;
        }
        assert_eq!(watcher.conn.call(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
        for (i, c) in clients.iter_mut().enumerate() {
            for _ in 0..2 {
                let got = c.read_reply_or_close().await;
                assert!(
                    got.starts_with(&lost(server.addr())),
                    "{mode:?}, client {i}: {got:?}"
                );
            }
        }
        let mut direct = watcher.direct(&server).await;
        assert_eq!(
            direct.call(&["EXISTS", "k:0", "k:1", "k:2", "k:3"]).await,
            ":0\r\n"
        );
        match mode {
            Mode::PerClient => {
                for c in &mut clients {
                    assert_eq!(c.read_to_close().await, b"");
                }
            }
            Mode::Multiplexed => {
                for (i, c) in clients.iter_mut().enumerate() {
                    let (key, value) = (format!("k:{i}"), format!("again-{i}"));
                    assert_eq!(c.call(&["SET", &key, &value]).await, "+OK\r\n");
                    let want = format!("${}\r\n{value}\r\n", value.len());
                    assert_eq!(c.call(&["GET", &key]).await, want);
                }
                let (shared, dedicated) = watcher.serving().await;
                assert!(dedicated.is_empty(), "{dedicated:?}");
                assert!(!shared.is_empty() && shared.len() <= 2, "{shared:?}");
                assert!(shared.iter().all(|c| !ids.contains(&c.id)), "{shared:?}");
            }
        }
        proxy.shutdown().await;
    }
}

/// The network cuts the connection carrying four clients' GETs (the fault shim holds Redis's
/// replies, then cuts every connection that has one to deliver). Each client gets the
/// connection-lost error for its GET, never another client's value. Multiplexed, each then
/// stays connected and is served again once the network is back (any reply meanwhile is a
/// respguard error, never data); per client, each connection closes.
#[tokio::test]
async fn a_shared_connection_cut_by_the_network_fails_its_commands_in_flight() {
    const CLIENTS: usize = 4;
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let mut direct = Conn::open(server.addr()).await;
        for i in 0..CLIENTS {
            let (key, value) = (format!("cut:{i}"), format!("value-{i}"));
            assert_eq!(direct.call(&["SET", &key, &value]).await, "+OK\r\n");
        }
        let shim = Shim::start(server.addr()).await;
        let proxy = start_proxy(fast_config(mode, &shim.url())).await;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let mut c = Conn::open(proxy.addr).await;
            assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
            clients.push(c);
        }
        shim.set(Fault::Stall);
        for (i, c) in clients.iter_mut().enumerate() {
            c.cmd(&["GET", &format!("cut:{i}")]).await;
        }
        for i in 0..CLIENTS {
            let needle = format!("cut:{i}");
            eventually!(WAIT, format!("{needle} sent to Redis"), {
                shim.carrying(needle.as_bytes()).0 >= 1
            });
        }
        shim.set(Fault::CutAfter(0));
        for i in 0..CLIENTS {
            shim.wait_closed(&format!("cut:{i}")).await;
        }
        shim.set(Fault::Pass);
        for (i, c) in clients.iter_mut().enumerate() {
            let got = c.read_reply_or_close().await;
            assert!(
                got.starts_with(&lost(shim.addr)),
                "{mode:?}, client {i}: {got:?}"
            );
        }
        match mode {
            Mode::PerClient => {
                for c in &mut clients {
                    assert_eq!(c.read_to_close().await, b"");
                }
            }
            Mode::Multiplexed => {
                for (i, c) in clients.iter_mut().enumerate() {
                    let want = format!("$7\r\nvalue-{i}\r\n");
                    eventually!(WAIT, format!("client {i} served again"), {
                        let got = c.call(&["GET", &format!("cut:{i}")]).await;
                        assert!(
                            got == want || got.starts_with("-ERR respguard: "),
                            "client {i}: {got:?}"
                        );
                        if got == want {
                            Ok(())
                        } else {
                            Err(got)
                        }
                    });
                }
            }
        }
        proxy.shutdown().await;
    }
}

/// What one client received for one pipeline of its own SETs and GETs.
#[derive(Debug, Default)]
struct Tally {
    values: usize,
    errors: usize,
    closes: usize,
}

/// Sixteen clients pipeline SETs and GETs of keys and values (up to 64 KiB) carrying their own tag while
/// the connections carrying them are killed ten times (each kill after a share of the
/// rounds is done). Every reply a client receives is its own: OK, or the value of the very
/// key it asked for, or nothing (its SET failed), or the connection-lost error; a connection
/// may close only with part of its own reply. After the kills every client's pipeline is
/// answered in full, and multiplexed, Redis again has at most two connections for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_repeated_connection_kills_no_reply_reaches_another_client() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 30;
    const PAIRS: usize = 20;
    const KILLS: usize = 10;
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = start_proxy(fast_config(mode, &server.url())).await;
        let mut watcher = Watcher::open(&server).await;
        let upstream = server.addr();
        let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
        let killer = tokio::spawn(async move {
            let step = CLIENTS * ROUNDS / (KILLS + 2);
            let mut killed = HashSet::new();
            for k in 1..=KILLS {
                progress.wait_for(|&done| done >= k * step).await.unwrap();
                let (shared, dedicated) = watcher.serving().await;
                for c in shared.iter().chain(&dedicated) {
                    watcher.kill(c.id).await;
                    killed.insert(c.id);
                }
            }
            (watcher, killed)
        });
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            let (addr, progress) = (proxy.addr, progress_tx.clone());
            tasks.spawn(async move {
                let mut c = Conn::open(addr).await;
                let mut tally = Tally::default();
                for round in 0..ROUNDS {
                    if let Err(partial) =
                        tagged_round(&mut c, upstream, client, round, &mut tally).await
                    {
                        // Multiplexed, only a reply cut in its middle may close a client.
                        assert!(
                            mode == Mode::PerClient || partial > 0,
                            "client {client} closed between replies"
                        );
                        tally.closes += 1;
                        c = Conn::open(addr).await;
                    }
                    progress.send_modify(|done| *done += 1);
                }
                (c, tally)
            });
        }
        let mut clients = tasks.join_all().await;
        let (mut watcher, killed) = killer.await.unwrap();
        let (errors, closes) = clients
            .iter()
            .fold((0, 0), |(e, c), (_, t)| (e + t.errors, c + t.closes));
        println!(
            "{mode:?}: {} kills, {errors} lost replies, {closes} closes",
            killed.len()
        );
        assert!(
            errors + closes > 0,
            "{mode:?}: the kills never hit a command"
        );
        // A connection killed while idle may be noticed only by the next commands: they
        // may get the error too (and, per client, the connection closes).
        for (client, (c, _)) in clients.iter_mut().enumerate() {
            eventually!(WAIT, format!("client {client} answered in full"), {
                let mut tally = Tally::default();
                if let Err(partial) = tagged_round(c, upstream, client, ROUNDS, &mut tally).await {
                    assert!(
                        mode == Mode::PerClient || partial > 0,
                        "client {client} closed after the kills"
                    );
                    *c = Conn::open(proxy.addr).await;
                }
                if tally.values == PAIRS {
                    Ok(())
                } else {
                    Err(tally)
                }
            });
        }
        let want = Want {
            plain: CLIENTS,
            pinned: 0,
            shared_max: 2,
        };
        watcher.expect(mode, want, "after the kills").await;
        proxy.shutdown().await;
    }

    /// One round of `PAIRS` SET/GET pairs on keys tagged with `client`, each reply judged;
    /// if the connection closed, `Err` with how many bytes of its next own reply came first.
    async fn tagged_round(
        c: &mut Conn,
        upstream: SocketAddr,
        client: usize,
        round: usize,
        tally: &mut Tally,
    ) -> Result<(), usize> {
        let lost = lost(upstream);
        let tag = format!("<client-{client:02}>");
        let pairs: Vec<(String, String)> = (0..PAIRS)
            .map(|j| {
                let key = format!("{tag}:{round}:{j}");
                // The last value is large, so some kills cut a reply in its middle.
                let len = if j == PAIRS - 1 { 64 * 1024 } else { j * 50 };
                (key.clone(), format!("{key}:{}", "v".repeat(len)))
            })
            .collect();
        let mut batch = Vec::new();
        for (key, value) in &pairs {
            batch.extend_from_slice(&encode(&["SET", key, value]));
            batch.extend_from_slice(&encode(&["GET", key]));
        }
        if tokio::io::AsyncWriteExt::write_all(&mut c.stream, &batch)
            .await
            .is_err()
        {
            return Err(0); // closed before the round began
        }
        for (key, value) in &pairs {
            let own_value = format!("${}\r\n{value}\r\n", value.len());
            let mut set_failed = false;
            for own in ["+OK\r\n", own_value.as_str()] {
                let got = c.read_reply_or_close().await;
                let whole = frame_len(got.as_bytes()) == Some(got.len());
                let foreign = got.contains("<client-") && !got.contains(&tag);
                assert!(!foreign, "client {client} got another's reply: {got:?}");
                if !whole {
                    // Closed, with at most the start of its own reply.
                    assert!(
                        own.starts_with(&got) || lost.starts_with(&got),
                        "client {client}, {key}: {got:?} then closed"
                    );
                    return Err(got.len());
                }
                if got.starts_with(&lost) {
                    tally.errors += 1;
                    set_failed |= own == "+OK\r\n";
                } else if got == own {
                    tally.values += usize::from(own != "+OK\r\n");
                } else {
                    assert!(
                        set_failed && got == "$-1\r\n",
                        "client {client}, {key}: {got:?}, expected {own:?}"
                    );
                }
            }
        }
        Ok(())
    }
}

/// A pinned client's own connection is killed while it waits in BLPOP: it gets the
/// connection-lost error for the BLPOP, then its connection closes, as in per-client mode.
/// A plain client next to it is not disturbed.
#[tokio::test]
async fn a_pinned_clients_lost_connection_closes_only_that_client() {
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = mode.proxy_for(&server).await;
        let mut watcher = Watcher::open(&server).await;
        let mut plain = Conn::open(proxy.addr).await;
        assert_eq!(plain.call(&["SET", "p", "1"]).await, "+OK\r\n");
        let mut pinned = Conn::open(proxy.addr).await;
        let id = id_of(&pinned.call(&["CLIENT", "ID"]).await);
        pinned.cmd(&["BLPOP", "never", "0"]).await;
        wait_for_blocked(&mut watcher.conn, 1).await;
        watcher.kill(id).await;
        let got = String::from_utf8_lossy(&pinned.read_to_close().await).into_owned();
        assert!(got.starts_with(&lost(server.addr())), "{mode:?}: {got:?}");
        assert_eq!(
            got.matches("\r\n").count(),
            1,
            "{mode:?}: one error: {got:?}"
        );
        assert_eq!(plain.call(&["INCR", "p"]).await, ":2\r\n", "{mode:?}");
        let want = Want {
            plain: 1,
            pinned: 0,
            shared_max: 2,
        };
        watcher.expect(mode, want, "the pinned client gone").await;
        proxy.shutdown().await;
    }
}

/// A client pipelines 512 GETs of a 256 KiB value (128 MiB of replies) and never reads,
/// with `proxy.output_buffer` at 64 KiB, `output_buffer_hard` at 8 MiB and one shared
/// connection. Multiplexed, the proxy disconnects it once its unread replies pass the hard
/// limit (it must not hold up the shared connection), having sent it far less than it asked for; per client, it is held back
/// instead and stays connected. Either way three other clients keep being served meanwhile
/// and the proxy's peak RSS stays under 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_without_holding_up_the_others() {
    const GETS: usize = 512;
    let value_len = 256 * 1024;
    let reply_len = value_len + format!("${value_len}\r\n\r\n").len();
    for (mode, word) in [
        (Mode::PerClient, "per-client"),
        (Mode::Multiplexed, "multiplexed"),
    ] {
        let server = RedisServer::start();
        let mut direct = Conn::open(server.addr()).await;
        let value = "x".repeat(value_len);
        assert_eq!(direct.call(&["SET", "big", &value]).await, "+OK\r\n");
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("respguard.toml");
        std::fs::write(
            &conf,
            format!(
                "[proxy]\noutput_buffer = \"64KiB\"\noutput_buffer_hard = \"8MiB\"\n\
                 [upstream]\nconnections = \"{word}\"\nshared_connections = 1\n"
            ),
        )
        .unwrap();
        let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &conf);
        let mut others = Vec::new();
        for i in 0..3 {
            let mut c = Conn::open(proxy.addr).await;
            assert_eq!(c.call(&["SET", &format!("o{i}"), "0"]).await, "+OK\r\n");
            others.push(c);
        }
        let mut slow = Conn::open(proxy.addr).await;
        let gets: Vec<u8> = (0..GETS).flat_map(|_| encode(&["GET", "big"])).collect();
        slow.send(&gets).await;
        for round in 1..=200 {
            for (i, c) in others.iter_mut().enumerate() {
                let want = format!(":{round}\r\n");
                assert_eq!(c.call(&["INCR", &format!("o{i}")]).await, want, "{mode:?}");
            }
        }
        let connected = |mode| async move {
            let status = http_get(admin, "/status").await.json();
            let n = status["clients"]["connected"].as_u64().expect("a count");
            (mode, n)
        };
        match mode {
            Mode::Multiplexed => {
                eventually!(WAIT, "the slow reader dropped", {
                    match connected(mode).await {
                        (_, 3) => Ok(()),
                        seen => Err(seen),
                    }
                });
                let got = slow.read_to_close().await;
                assert!(got.len() < GETS * reply_len / 4, "{} bytes sent", got.len());
            }
            Mode::PerClient => assert_eq!(connected(mode).await.1, 4),
        }
        let (rss, peak) = proxy.rss_kib();
        println!("{mode:?}: slow reader: proxy RSS {rss} KiB (peak {peak} KiB)");
        assert!(peak < 64 * 1024, "{mode:?}: proxy peak RSS {peak} KiB");
        for c in &mut others {
            assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
        }
    }
}

/// A reply far larger than `proxy.output_buffer` (64 KiB here) reaches a multiplexed client
/// that reads it: Redis sends a 16 MiB value faster than any client reads it, and the
/// proxy holds the difference (up to `output_buffer_hard`) instead of taking the client for
/// a slow reader. Three pipelined GETs of 4 and 16 MiB values arrive byte for byte as a
/// direct connection gets them, while another client on the same shared connection is
/// served between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_the_output_buffer_reaches_a_client_that_reads_it() {
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    for (key, len) in [("v4", 4 << 20), ("v16", 16 << 20)] {
        let value: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        assert_eq!(direct.call(&["SET", key, &value]).await, "+OK\r\n");
    }
    let gets: Vec<u8> = ["v4", "v16", "v4"]
        .iter()
        .flat_map(|k| encode(&["GET", k]))
        .collect();
    direct.send(&gets).await;
    let want: Vec<Vec<u8>> = vec![
        direct.reply().await,
        direct.reply().await,
        direct.reply().await,
    ];
    let mut raw = mux_config(&server.url());
    raw.proxy.output_buffer = respguard::config::ByteSize(64 * 1024);
    raw.upstream.shared_connections = 1;
    let proxy = start_proxy(raw).await;
    let mut other = Conn::open(proxy.addr).await;
    let mut reader = Conn::open(proxy.addr).await;
    reader.send(&gets).await;
    for round in 1..=20 {
        assert_eq!(
            other.call(&["INCR", "other"]).await,
            format!(":{round}\r\n")
        );
    }
    for (i, want) in want.iter().enumerate() {
        let got = reader.reply().await;
        assert!(
            got == *want,
            "GET {i}: {} bytes, {} wanted",
            got.len(),
            want.len()
        );
    }
    assert_eq!(reader.call(&["PING"]).await, "+PONG\r\n");
    proxy.shutdown().await;
}

/// A multiplexed client may leave more than `proxy.output_buffer` of replies unread only
/// for `output_buffer_soft_time` (Redis's soft limit): a client pipelines 32 MiB of GETs
/// and reads nothing. Right after, with its replies above the soft limit but below the
/// hard one, it is still connected; once the soft time has passed, the next reply it gets
/// ends it, counted in `respguard_slow_readers_disconnected_total`, and the other client
/// on the same shared connection is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_above_the_soft_limit_past_the_soft_time_is_dropped() {
    const SOFT_TIME: Duration = Duration::from_secs(2);
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let value = "x".repeat(256 * 1024);
    assert_eq!(direct.call(&["SET", "big", &value]).await, "+OK\r\n");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("respguard.toml");
    std::fs::write(
        &conf,
        "[proxy]\noutput_buffer = \"64KiB\"\noutput_buffer_hard = \"64MiB\"\n\
         output_buffer_soft_time = \"2s\"\n\
         [upstream]\nconnections = \"multiplexed\"\nshared_connections = 1\n",
    )
    .unwrap();
    let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &conf);
    let connected = || async {
        let status = http_get(admin, "/status").await.json();
        status["clients"]["connected"].as_u64().expect("a count")
    };
    let mut other = Conn::open(proxy.addr).await;
    let mut slow = Conn::open(proxy.addr).await;
    let gets: Vec<u8> = (0..128).flat_map(|_| encode(&["GET", "big"])).collect();
    slow.send(&gets).await;
    // The lane answers in order: once this INCR is answered, every GET before it was
    // routed to the slow client's inbox.
    assert_eq!(other.call(&["INCR", "n"]).await, ":1\r\n");
    let paused_at = std::time::Instant::now();
    assert_eq!(
        connected().await,
        2,
        "within the soft time, below the hard limit"
    );
    tokio::time::sleep(SOFT_TIME.saturating_sub(paused_at.elapsed()) + SOFT_TIME / 4).await;
    slow.cmd(&["GET", "big"]).await;
    assert_eq!(other.call(&["INCR", "n"]).await, ":2\r\n");
    eventually!(WAIT, "the slow reader dropped", {
        match connected().await {
            1 => Ok(()),
            n => Err(n),
        }
    });
    let dropped = metric(admin, "respguard_slow_readers_disconnected_total").await;
    assert_eq!(dropped, Some(1.0));
    assert_eq!(other.call(&["INCR", "n"]).await, ":3\r\n");
}

/// The guards act alike in both modes, with eight clients pipelining at once (so hidden
/// commands and rewritten replies of several clients share a connection): a TTL rule gives
/// SET, GETSET and LPUSH an expiry and leaves a SET's own EX alone, the size guard refuses
/// an oversized value with its error and Redis never sees it, and every client gets its own
/// replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_act_alike_in_both_modes() {
    const CLIENTS: usize = 8;
    let rules = r#"
[[guards.ttl.rules]]
pattern = "ttl:*"
ttl = "60s"
commands = ["SET", "GETSET", "LPUSH"]
[[guards.size.rules]]
pattern = "blob:*"
max_value = "1KiB"
"#;
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = proxy_with_toml_in(mode, &server, rules).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let addr = proxy.addr;
            tasks.spawn(async move {
                let mut c = Conn::open(addr).await;
                let big = "b".repeat(2048);
                let (plain, with_ex, getset, list, blob) = (
                    format!("ttl:{i}"),
                    format!("ttl:{i}:ex"),
                    format!("ttl:{i}:gs"),
                    format!("ttl:{i}:l"),
                    format!("blob:{i}"),
                );
                let cmds: [&[&str]; 7] = [
                    &["SET", &plain, "v"],
                    &["SET", &with_ex, "v", "EX", "1000"],
                    &["GETSET", &getset, "new"],
                    &["LPUSH", &list, "a", "b"],
                    &["SET", &blob, &big],
                    &["EXISTS", &blob],
                    &["GET", &plain],
                ];
                let batch: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
                for round in 0..5 {
                    c.send(&batch).await;
                    // GETSET answers the value before it: nothing the first time.
                    let old = if round == 0 {
                        "$-1\r\n"
                    } else {
                        "$3\r\nnew\r\n"
                    };
                    let want = format!(
                        "+OK\r\n+OK\r\n{old}:{}\r\n\
                         -ERR respguard: value of 2048 bytes for key '{blob}' exceeds the \
                         1024-byte limit of size rule 'blob:*'\r\n:0\r\n$1\r\nv\r\n",
                        2 * (round + 1)
                    );
                    assert_eq!(c.replies(7).await, want, "{mode:?}, client {i}");
                }
            });
        }
        tasks.join_all().await;
        let mut direct = Conn::open(server.addr()).await;
        for i in 0..CLIENTS {
            let keys = [
                format!("ttl:{i}"),
                format!("ttl:{i}:gs"),
                format!("ttl:{i}:l"),
            ];
            for key in keys {
                let ttl = id_of(&direct.call(&["PTTL", &key]).await);
                assert!(ttl > 0 && ttl <= 60_000, "{mode:?}: {key}: {ttl}");
            }
            let ttl = id_of(&direct.call(&["TTL", &format!("ttl:{i}:ex")]).await);
            assert!(ttl > 60 && ttl <= 1000, "{mode:?}: EX kept: {ttl}");
            assert_eq!(
                direct.call(&["EXISTS", &format!("blob:{i}")]).await,
                ":0\r\n"
            );
        }
        proxy.shutdown().await;
    }
}

/// redis-py through the proxy in both modes, in RESP2 and RESP3: a pipeline, a transaction
/// (`pipeline(transaction=True)`), an optimistic transaction with WATCH (`transaction()`),
/// pub/sub with a message published by another client, and BLPOP, both served at once and
/// woken by another client's push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_pipelines_transactions_pubsub_and_blpop() {
    for mode in Mode::BOTH {
        let server = RedisServer::start();
        let proxy = mode.proxy_for(&server).await;
        for protocol in [2, 3] {
            let script = format!(
                r#"
import threading, time, warnings, redis
warnings.simplefilter("ignore", DeprecationWarning)
port = {port}
r = redis.Redis(host="127.0.0.1", port=port, protocol={protocol})
# A plain client: redis-py's CLIENT SETINFO at connect pins nothing.
plain = redis.Redis(host="127.0.0.1", port=port, protocol=2)
plain.flushall()
p = plain.pipeline(transaction=False)
for i in range(100):
    p.set(f"py:{{i}}", i)
    p.incr(f"py:{{i}}")
    p.get(f"py:{{i}}")
out = p.execute()
assert out == [x for i in range(100) for x in (True, i + 1, str(i + 1).encode())], out[:6]
t = r.pipeline(transaction=True)
t.set("py:t", "x").append("py:t", "y").get("py:t")
assert t.execute() == [True, 2, b"xy"]
def bump(pipe):
    n = int(pipe.get("py:c") or 0)
    pipe.multi()
    pipe.set("py:c", n + 1)
for _ in range(3):
    r.transaction(bump, "py:c")
assert r.get("py:c") == b"3", r.get("py:c")
ps = r.pubsub()
ps.subscribe("py:ch")
m = ps.get_message(timeout=10)
assert m and m["type"] == "subscribe", m
assert plain.publish("py:ch", "hello") == 1
m = ps.get_message(timeout=10)
while m and m["type"] != "message":
    m = ps.get_message(timeout=10)
assert m and m["data"] == b"hello", m
ps.close()
plain.rpush("py:q", "ready")
# RESP2 gives a tuple, RESP3 a list.
assert tuple(r.blpop("py:q", timeout=1)) == (b"py:q", b"ready")
assert r.blpop("py:empty", timeout=0.05) is None
got = []
waiter = threading.Thread(target=lambda: got.append(r.blpop("py:q", timeout=10)))
waiter.start()
direct = redis.Redis(host="127.0.0.1", port={redis_port})
deadline = time.time() + 10
while direct.info("clients")["blocked_clients"] != 1:
    assert time.time() < deadline, "BLPOP never blocked"
    time.sleep(0.01)
assert plain.rpush("py:q", "woken") == 1
waiter.join()
assert [tuple(g) for g in got] == [(b"py:q", b"woken")], got
print("ok")
"#,
                port = proxy.addr.port(),
                redis_port = server.port,
            );
            python_ok(&script).await;
        }
        proxy.shutdown().await;
    }
}
