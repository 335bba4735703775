//! Differential tests: the same scripted sessions against Redis directly and through the
//! proxy (two fresh servers, one behind the proxy) must give byte-identical replies, in
//! RESP2 and RESP3, with the proxy in each connection mode (a Redis connection per client,
//! and shared connections). Only what legitimately differs between two connections is
//! masked (client ids, MONITOR addresses).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::harness::*;

type Script = fn(SocketAddr, u8) -> Pin<Box<dyn Future<Output = String> + Send>>;

/// Run `script` directly and through a proxy in each connection mode, in RESP2 and RESP3,
/// and compare.
async fn differential(script: Script) {
    differential_with(script, &[]).await
}

async fn differential_with(script: Script, server_args: &[&str]) {
    for (mode, proto) in Mode::BOTH.into_iter().flat_map(|m| [(m, 2u8), (m, 3)]) {
        let direct = RedisServer::start_with(server_args);
        let behind = RedisServer::start_with(server_args);
        let proxy = mode.proxy_for(&behind).await;
        let want = mask(&script(direct.addr(), proto).await);
        let got = mask(&script(proxy.addr, proto).await);
        assert!(!want.is_empty());
        if want != got {
            let at = want
                .bytes()
                .zip(got.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            let lo = at.saturating_sub(80);
            panic!(
                "{mode:?}, RESP{proto}: replies differ at byte {at}\n direct: {:?}\n  proxy: {:?}",
                &want[lo..(at + 80).min(want.len())],
                &got[lo..(at + 80).min(got.len())]
            );
        }
        proxy.shutdown().await;
    }
}

/// Open a connection and switch it to `proto`.
async fn conn(addr: SocketAddr, proto: u8) -> (Conn, String) {
    let mut c = Conn::open(addr).await;
    let hello = c.call(&["HELLO", &proto.to_string()]).await;
    (c, hello)
}

#[tokio::test]
async fn deep_pipeline_of_ten_thousand_commands_in_one_write() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            let mut batch = Vec::new();
            for i in 0..10_000 {
                let k = format!("k{}", i % 100);
                let cmd: Vec<String> = match i % 7 {
                    0 => vec!["SET".into(), k, format!("v{i}")],
                    1 => vec!["GET".into(), k],
                    2 => vec!["INCR".into(), format!("n{}", i % 10)],
                    3 => vec!["LPUSH".into(), format!("l{}", i % 10), i.to_string()],
                    4 => vec!["HSET".into(), "h".into(), k, i.to_string()],
                    5 => vec!["INCR".into(), "h".into()], // WRONGTYPE error
                    _ => vec!["NOSUCHCOMMAND".into(), k],
                };
                let refs: Vec<&str> = cmd.iter().map(|s| s.as_str()).collect();
                batch.extend_from_slice(&encode(&refs));
            }
            c.send(&batch).await;
            out.push_str(&c.replies(10_000).await);
            out
        })
    })
    .await;
}

#[tokio::test]
async fn transactions_with_watch_abort_discard_and_execabort() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            let (mut other, _) = conn(addr, proto).await;
            for cmd in [
                &["MULTI"][..],
                &["SET", "a", "1"],
                &["INCR", "a"],
                &["LPUSH", "a", "x"],
                &["EXEC"],
                &["WATCH", "w"],
                &["MULTI"],
                &["SET", "w", "mine"],
            ] {
                out.push_str(&c.call(cmd).await);
            }
            other.call(&["SET", "w", "theirs"]).await;
            for cmd in [
                &["EXEC"][..],
                &["GET", "w"],
                &["MULTI"],
                &["SET", "d", "1"],
                &["DISCARD"],
                &["EXISTS", "d"],
                &["MULTI"],
                &["SET", "e"],
                &["SET", "e", "1"],
                &["EXEC"],
                &["EXEC"],
                &["DISCARD"],
                &["MULTI"],
                &["MULTI"],
                &["DISCARD"],
            ] {
                out.push_str(&c.call(cmd).await);
            }
            // The same, pipelined in one write.
            let mut batch = Vec::new();
            for cmd in [&["MULTI"][..], &["INCR", "p"], &["GET", "p"], &["EXEC"]] {
                batch.extend_from_slice(&encode(cmd));
            }
            c.send(&batch).await;
            out.push_str(&c.replies(4).await);
            out
        })
    })
    .await;
}

#[tokio::test]
async fn blocking_commands_are_served_when_data_arrives() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            let (mut pusher, _) = conn(addr, proto).await;
            let (mut watcher, _) = conn(addr, proto).await;
            let cases: [(&[&str], &[&str]); 5] = [
                (&["BLPOP", "q1", "q2", "10"], &["RPUSH", "q2", "job"]),
                (&["BRPOP", "q3", "10"], &["LPUSH", "q3", "a", "b"]),
                (
                    &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "10"],
                    &["RPUSH", "src", "m"],
                ),
                (
                    &["BZPOPMIN", "z", "10"],
                    &["ZADD", "z", "1", "one", "2", "two"],
                ),
                (
                    &["XREAD", "BLOCK", "10000", "STREAMS", "s", "$"],
                    &["XADD", "s", "1-1", "f", "v"],
                ),
            ];
            for (block, wake) in cases {
                c.cmd(block).await;
                // The command is blocked once Redis counts a blocked client: an event, not a sleep.
                wait_for_blocked(&mut watcher, 1).await;
                out.push_str(&pusher.call(wake).await);
                out.push_str(&String::from_utf8_lossy(&c.reply().await));
            }
            out.push_str(&c.call(&["BLPOP", "empty", "0.01"]).await);
            out
        })
    })
    .await;
}

/// Poll INFO until `blocked_clients` equals `n` (bounded by the harness wait).
pub async fn wait_for_blocked(watcher: &mut Conn, n: usize) {
    let want = format!("blocked_clients:{n}\r\n");
    let what = format!("{want:?} in INFO");
    eventually!(WAIT, what, {
        let info = watcher.call(&["INFO", "clients"]).await;
        if info.contains(&want) {
            Ok(())
        } else {
            Err(info)
        }
    })
}

#[tokio::test]
async fn pubsub_with_messages_between_replies() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut sub, mut out) = conn(addr, proto).await;
            let (mut publisher, _) = conn(addr, proto).await;
            sub.cmd(&["SUBSCRIBE", "a", "b"]).await;
            out.push_str(&sub.replies(2).await);
            out.push_str(&publisher.call(&["PUBLISH", "a", "one"]).await);
            sub.cmd(&["PSUBSCRIBE", "p.*"]).await;
            out.push_str(&sub.replies(2).await); // the message, then the confirmation
            out.push_str(&publisher.call(&["PUBLISH", "p.x", "two"]).await);
            out.push_str(&sub.replies(1).await);
            sub.cmd(&["SSUBSCRIBE", "s"]).await;
            out.push_str(&sub.replies(1).await);
            out.push_str(&publisher.call(&["SPUBLISH", "s", "three"]).await);
            out.push_str(&sub.replies(1).await);
            sub.cmd(&["PING"]).await;
            out.push_str(&sub.replies(1).await);
            sub.cmd(&["UNSUBSCRIBE"]).await;
            // Redis confirms the channels in its own hash order; compare them as a set.
            let mut confirmations = [sub.replies(1).await, sub.replies(1).await];
            confirmations.sort();
            out.push_str(
                &confirmations
                    .concat()
                    .replace(":2\r\n", ":N\r\n")
                    .replace(":1\r\n", ":N\r\n"),
            );
            sub.cmd(&["PUNSUBSCRIBE"]).await;
            out.push_str(&sub.replies(1).await);
            sub.cmd(&["SUNSUBSCRIBE"]).await;
            out.push_str(&sub.replies(1).await);
            // Out of subscribed mode: ordinary commands work again.
            out.push_str(&sub.call(&["SET", "after", "1"]).await);
            out.push_str(&sub.call(&["GET", "after"]).await);
            out
        })
    })
    .await;
}

#[tokio::test]
async fn hello_auth_acl_users_and_select() {
    differential_with(
        |addr, proto| {
            Box::pin(async move {
                let mut c = Conn::open(addr).await;
                let mut out = String::new();
                let p = proto.to_string();
                out.push_str(&c.call(&["GET", "k"]).await); // NOAUTH
                out.push_str(&c.call(&["HELLO", &p, "AUTH", "default", "wrong"]).await);
                out.push_str(
                    &c.call(&[
                        "HELLO",
                        &p,
                        "AUTH",
                        "default",
                        "topsecret",
                        "SETNAME",
                        "app",
                    ])
                    .await,
                );
                out.push_str(
                    &c.call(&["ACL", "SETUSER", "worker", "on", ">pw", "~jobs:*", "+@all"])
                        .await,
                );
                out.push_str(&c.call(&["AUTH", "worker", "pw"]).await);
                out.push_str(&c.call(&["ACL", "WHOAMI"]).await);
                out.push_str(&c.call(&["SET", "jobs:1", "x"]).await);
                out.push_str(&c.call(&["SET", "other", "x"]).await); // NOPERM
                out.push_str(&c.call(&["AUTH", "default", "topsecret"]).await);
                out.push_str(&c.call(&["SELECT", "3"]).await);
                out.push_str(&c.call(&["SET", "indb3", "1"]).await);
                out.push_str(&c.call(&["SELECT", "0"]).await);
                out.push_str(&c.call(&["EXISTS", "indb3"]).await);
                out.push_str(&c.call(&["SELECT", "99"]).await);
                out.push_str(&c.call(&["CLIENT", "GETNAME"]).await);
                out
            })
        },
        &["--requirepass", "topsecret"],
    )
    .await;
}

#[tokio::test]
async fn client_tracking_invalidation_pushes() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            let (mut writer, _) = conn(addr, proto).await;
            if proto == 3 {
                out.push_str(&c.call(&["CLIENT", "TRACKING", "ON"]).await);
                out.push_str(&c.call(&["GET", "tracked"]).await);
                out.push_str(&writer.call(&["SET", "tracked", "new"]).await);
                out.push_str(&c.replies(1).await); // the invalidate push
                out.push_str(&c.call(&["GET", "tracked"]).await);
            } else {
                // RESP2 tracking redirects invalidations to a subscribed connection.
                let (mut sink, _) = conn(addr, proto).await;
                let id = sink.call(&["CLIENT", "ID"]).await;
                let id = id.trim_start_matches(':').trim();
                sink.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
                out.push_str(&sink.replies(1).await);
                out.push_str(&c.call(&["CLIENT", "TRACKING", "ON", "REDIRECT", id]).await);
                out.push_str(&c.call(&["GET", "tracked"]).await);
                out.push_str(&writer.call(&["SET", "tracked", "new"]).await);
                out.push_str(&sink.replies(1).await);
            }
            out
        })
    })
    .await;
}

#[tokio::test]
async fn client_reply_off_skip_on() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            let mut batch = Vec::new();
            for cmd in [
                &["SET", "a", "1"][..],
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "b", "2"],
                &["INCR", "b"],
                &["NOSUCH"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "b"],
                &["CLIENT", "REPLY", "SKIP"],
                &["GET", "a"],
                &["GET", "b"],
                &["CLIENT", "REPLY", "bogus"],
            ] {
                batch.extend_from_slice(&encode(cmd));
            }
            c.send(&batch).await;
            out.push_str(&c.replies(5).await);
            out.push_str(&c.call(&["PING"]).await);
            out
        })
    })
    .await;
}

#[tokio::test]
async fn monitor_reset_and_quit() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut mon, mut out) = conn(addr, proto).await;
            let (mut c, _) = conn(addr, proto).await;
            out.push_str(&mon.call(&["MONITOR"]).await);
            c.call(&["SET", "seen", "1"]).await;
            // `+<time> [0 <addr>] "set" "seen" "1"`: keep what follows the address. The
            // proxy's monitor polls (PING, INFO) may stream before and after it: skipped.
            let line = loop {
                let line = String::from_utf8_lossy(&mon.reply().await).into_owned();
                if line.contains("\"seen\"") {
                    break line;
                }
            };
            out.push_str(&line[line.find(']').unwrap()..]);
            mon.send(&encode(&["RESET"])).await;
            let reset = loop {
                let reply = String::from_utf8_lossy(&mon.reply().await).into_owned();
                if !reply.contains("] \"") {
                    break reply;
                }
            };
            out.push_str(&reset);
            out.push_str(&mon.call(&["GET", "seen"]).await);
            out.push_str(&c.call(&["SELECT", "2"]).await);
            out.push_str(&c.call(&["RESET"]).await);
            out.push_str(&c.call(&["EXISTS", "seen"]).await);
            // QUIT: +OK, then the connection closes and nothing after it is answered.
            let mut batch = encode(&["PING"]);
            batch.extend_from_slice(&encode(&["QUIT"]));
            batch.extend_from_slice(&encode(&["PING"]));
            c.send(&batch).await;
            out.push_str(&String::from_utf8_lossy(&c.read_to_close().await));
            out
        })
    })
    .await;
}

#[tokio::test]
async fn scripts_and_functions() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            let body = "redis.call('SET', KEYS[1], ARGV[1]); return {KEYS[1], tonumber(ARGV[2]) + 1, redis.call('GET', KEYS[1])}";
            out.push_str(&c.call(&["EVAL", body, "1", "sk", "val", "41"]).await);
            let sha = c.call(&["SCRIPT", "LOAD", body]).await;
            out.push_str(&sha);
            let sha = sha.split("\r\n").nth(1).unwrap().to_string();
            out.push_str(&c.call(&["EVALSHA", &sha, "1", "sk", "v2", "1"]).await);
            out.push_str(&c.call(&["EVALSHA", "0000000000000000000000000000000000000000", "0"]).await);
            out.push_str(&c.call(&["EVAL", "return redis.error_reply('custom')", "0"]).await);
            out.push_str(&c.call(&["EVAL", "return {1, 2.5, true, false, 'x'}", "0"]).await);
            let lib = "#!lua name=mylib\nredis.register_function('incrby2', function(keys, args) return redis.call('INCRBY', keys[1], 2) end)";
            out.push_str(&c.call(&["FUNCTION", "LOAD", lib]).await);
            out.push_str(&c.call(&["FCALL", "incrby2", "1", "counter"]).await);
            out.push_str(&c.call(&["FCALL", "incrby2", "1", "counter"]).await);
            out.push_str(&c.call(&["FUNCTION", "DELETE", "mylib"]).await);
            out
        })
    })
    .await;
}

#[tokio::test]
async fn a_100_mib_value_written_and_read_back() {
    differential_with(
        |addr, proto| {
            Box::pin(async move {
                let (mut c, mut out) = conn(addr, proto).await;
                let len = 100 * 1024 * 1024;
                let mut cmd = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${len}\r\n").into_bytes();
                cmd.extend((0..len).map(|i| b'a' + (i % 26) as u8));
                cmd.extend_from_slice(b"\r\n");
                c.send(&cmd).await;
                out.push_str(&c.replies(1).await);
                c.cmd(&["GET", "big"]).await;
                let reply = c.reply().await;
                assert_eq!(reply.len(), len + format!("${len}\r\n\r\n").len());
                // Compare a digest rather than 100 MiB of text.
                out.push_str(&format!(
                    "len={} sum={}",
                    reply.len(),
                    reply.iter().map(|&b| b as u64).sum::<u64>()
                ));
                out.push_str(&c.call(&["STRLEN", "big"]).await);
                out
            })
        },
        &["--proto-max-bulk-len", "200mb"],
    )
    .await;
}

#[tokio::test]
async fn error_replies_and_inline_commands() {
    differential(|addr, proto| {
        Box::pin(async move {
            let (mut c, mut out) = conn(addr, proto).await;
            for cmd in [
                &["GET"][..],
                &["SET", "k", "v", "EX", "notanumber"],
                &["LPUSH", "k", "x"],
                &["OBJECT", "NOSUCHSUB"],
                &["CONFIG", "GET", "maxmemory"],
            ] {
                out.push_str(&c.call(cmd).await);
            }
            c.send(b"SET inline \"quoted value\"\r\nGET inline\r\n\r\nPING\n")
                .await;
            out.push_str(&c.replies(3).await);
            out
        })
    })
    .await;
}

/// Malformed input after a PING gets Redis's own protocol error, byte for byte, and the
/// connection closes, directly and through the proxy in each connection mode.
#[tokio::test]
async fn malformed_input_gets_the_protocol_error_and_the_connection_closes() {
    for garbage in [
        &b"*1\r\n+PING\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$9999999999999\r\n",
        b"SET \"unbalanced\r\n",
    ] {
        for mode in Mode::BOTH {
            let direct = RedisServer::start();
            let behind = RedisServer::start();
            let proxy = mode.proxy_for(&behind).await;
            let mut outs = Vec::new();
            for addr in [direct.addr(), proxy.addr] {
                let mut c = Conn::open(addr).await;
                let mut bytes = encode(&["PING"]);
                bytes.extend_from_slice(garbage);
                c.send(&bytes).await;
                outs.push(String::from_utf8_lossy(&c.read_to_close().await).into_owned());
            }
            assert_eq!(
                outs[0],
                outs[1],
                "{mode:?}, for {:?}",
                String::from_utf8_lossy(garbage)
            );
            assert!(outs[0].contains("Protocol error"), "{}", outs[0]);
            proxy.shutdown().await;
        }
    }
}
