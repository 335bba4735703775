//! Who a client is and what it may do: client addresses on a dual-stack listener, the
//! identity each pipelined command is judged by, `[auth]` users and the Redis credentials
//! they run with, what an unauthenticated client may send and hold, the `RESPGUARD`
//! command's arity, and the admin listener's bound on request heads. Every reply is
//! compared with what Redis (or the proxy in a setting where the defect cannot occur) gives.

use std::net::SocketAddr;

use respguard::config::{ConfigSource, Overrides, RawConfig};

use crate::harness::{encode, eventually, proxy_config, start_proxy, Conn, RedisServer, WAIT};

/// Send `cmds` pipelined in one write on a new connection to `addr`; all replies.
async fn pipelined(addr: SocketAddr, cmds: &[&[&str]]) -> String {
    let mut c = Conn::open(addr).await;
    let batch: Vec<u8> = cmds.iter().flat_map(|cmd| encode(cmd)).collect();
    c.send(&batch).await;
    c.replies(cmds.len()).await
}

/// `connected_clients` of Redis's INFO clients, read on `admin`.
async fn connected_clients(admin: &mut Conn) -> usize {
    let info = admin.call(&["INFO", "clients"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients in INFO")
}

/// A Redis with a password and an ACL user `app` (everything but admin commands); `admin`
/// is a direct connection authenticated with the password.
async fn redis_with_app_user() -> (RedisServer, Conn) {
    let server = RedisServer::start_with(&["--requirepass", "admin-pass"]);
    let mut admin = Conn::open(server.addr()).await;
    assert_eq!(admin.call(&["AUTH", "admin-pass"]).await, "+OK\r\n");
    let acl = [
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pass",
        "~*",
        "+@all",
        "-@admin",
    ];
    assert_eq!(admin.call(&acl).await, "+OK\r\n");
    (server, admin)
}

/// `[auth]` with one user, `app` (password `proxy-pass`), mapped to Redis's `app`.
const APP_USER: &str = r#"
[[auth.users]]
name = "app"
password = "proxy-pass"
upstream_user = "app"
upstream_password = "app-pass"
"#;

/// A proxy in front of `server` logged in with its password, with `[auth]` `users`.
async fn auth_proxy(server: &RedisServer, users: &str) -> respguard::app::ProxyHandle {
    let mut raw = proxy_config(&format!("redis://:admin-pass@{}", server.addr()));
    raw.auth = RawConfig::from_toml(users).unwrap().auth;
    start_proxy(raw).await
}

/// Guards against IPv4 clients of a `[::]` listener being seen as `::ffff:a.b.c.d`, which
/// matches no IPv4 `client_address` rule and no IPv4 `admin.command_networks`.
#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_rules() {
    let server = RedisServer::start();
    let cmds: &[&[&str]] = &[
        &["SET", "ds:k", "too long"],
        &["RESPGUARD", "HELP"],
        &["GET", "ds:k"],
    ];
    let mut seen = Vec::new();
    for listen in ["127.0.0.1:0", "[::]:0"] {
        let mut raw = RawConfig::from_toml(
            "[[guards.size.rules]]\npattern = \"ds:*\"\nmax_value = \"3B\"\nclient_address = \"127.0.0.1/32\"\n",
        )
        .unwrap();
        raw.proxy.listen = listen.into();
        raw.admin.listen = "127.0.0.1:0".into();
        raw.upstream.url = server.url();
        let proxy = start_proxy(raw).await;
        let v4 = SocketAddr::from(([127, 0, 0, 1], proxy.addr.port()));
        seen.push(pipelined(v4, cmds).await);
        proxy.shutdown().await;
    }
    assert!(seen[0].starts_with("-ERR respguard:"), "{}", seen[0]);
    assert_eq!(seen[1], seen[0], "dual-stack listener vs IPv4 listener");
}

/// Guards against pipelined commands being judged by the user of the last reply received:
/// `AUTH ops …` then `RESPGUARD HELP` in one write was refused, and after `AUTH default …`
/// or `RESET` a pipelined `RESPGUARD` or user-scoped guard rule still saw `ops`.
#[tokio::test]
async fn pipelined_commands_are_judged_by_the_identity_redis_runs_them_with() {
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let acl = ["ACL", "SETUSER", "ops", "on", ">ops-pass", "~*", "+@all"];
    assert_eq!(direct.call(&acl).await, "+OK\r\n");
    let mut raw = RawConfig::from_toml(
        "[[guards.size.rules]]\npattern = \"id:*\"\nmax_value = \"3B\"\nuser = \"ops\"\n",
    )
    .unwrap();
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = server.url();
    raw.admin.command_users = vec!["ops".into()];
    let proxy = start_proxy(raw).await;

    // What each identity gets, one command at a time.
    let mut one = Conn::open(proxy.addr).await;
    let refused = one.call(&["RESPGUARD", "HELP"]).await;
    let as_default_set = one.call(&["SET", "id:k", "too long"]).await;
    assert_eq!(one.call(&["AUTH", "ops", "ops-pass"]).await, "+OK\r\n");
    let allowed = one.call(&["RESPGUARD", "HELP"]).await;
    let as_ops_set = one.call(&["SET", "id:k", "too long"]).await;
    assert_ne!(refused, allowed);
    assert_ne!(as_default_set, as_ops_set);

    let auth_ops: &[&str] = &["AUTH", "ops", "ops-pass"];
    let auth_default: &[&str] = &["AUTH", "default", "any"];
    let want = [
        direct.call(auth_ops).await,
        allowed.clone(),
        as_ops_set,
        direct.call(auth_default).await,
        refused.clone(),
        as_default_set,
        direct.call(auth_ops).await,
        direct.call(&["RESET"]).await,
        refused,
    ]
    .concat();
    let got = pipelined(
        proxy.addr,
        &[
            auth_ops,
            &["RESPGUARD", "HELP"],
            &["SET", "id:k", "too long"],
            auth_default,
            &["RESPGUARD", "HELP"],
            &["SET", "id:k", "too long"],
            auth_ops,
            &["RESET"],
            &["RESPGUARD", "HELP"],
        ],
    )
    .await;
    assert_eq!(got, want);
    proxy.shutdown().await;
}

/// Guards against an `[auth]` user without `upstream_user` running with the `upstream.url`
/// credentials: `AUTH …; CONFIG GET requirepass` returned Redis's password. Such a user is
/// refused at start and on reload; a mapped user gets exactly its Redis user's rights.
#[tokio::test]
async fn auth_users_never_run_with_the_proxy_credentials() {
    let (server, _admin) = redis_with_app_user().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("respguard.toml");
    let file = |users: &str| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"redis://:admin-pass@{}\"\n{users}",
            server.addr()
        )
    };
    let unmapped = "[[auth.users]]\nname = \"app\"\npassword = \"proxy-pass\"\n";
    std::fs::write(&path, file(unmapped)).unwrap();
    let refusal = RawConfig::from_file(&path)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(refusal.contains("`app` has no upstream_user"), "{refusal}");

    std::fs::write(&path, file(APP_USER)).unwrap();
    let mut config = RawConfig::from_file(&path).unwrap().validate().unwrap();
    config.source = Some(ConfigSource {
        path: path.clone(),
        overrides: Overrides::default(),
    });
    let proxy = respguard::app::start(config).await.unwrap();
    std::fs::write(&path, file(unmapped)).unwrap();
    let reload = proxy.control.reload("test").unwrap_err();
    assert!(reload.contains("`app` has no upstream_user"), "{reload}");

    let cmds = |auth: &'static str| -> Vec<Vec<&'static str>> {
        vec![
            vec!["AUTH", "app", auth],
            vec!["CONFIG", "GET", "requirepass"],
            vec!["ACL", "WHOAMI"],
        ]
    };
    let run = |addr, cmds: Vec<Vec<&'static str>>| async move {
        let cmds: Vec<&[&str]> = cmds.iter().map(|c| c.as_slice()).collect();
        pipelined(addr, &cmds).await
    };
    let want = run(server.addr(), cmds("app-pass")).await;
    assert!(want.contains("-NOPERM"), "{want}");
    assert_eq!(run(proxy.addr, cmds("proxy-pass")).await, want);
    proxy.shutdown().await;
}

/// Guards against unauthenticated clients of an `[auth]` proxy getting more than Redis
/// allows them (it read up to 512 MiB of a declared `$100000` and kept the connection) and
/// against each idle one holding a Redis connection logged in as the `upstream.url` user.
#[tokio::test]
async fn unauthenticated_clients_get_redis_limits_and_hold_no_redis_connection() {
    let (server, mut admin) = redis_with_app_user().await;
    let proxy = auth_proxy(&server, APP_USER).await;
    // Redis's own answer to each, and the connection closed after it.
    let inputs: [&[u8]; 6] = [
        b"*11\r\n",
        b"*100\r\n",
        b"*1\r\n$16385\r\n",
        b"*1\r\n$100000\r\n",
        b"*2\r\n$4\r\nAUTH\r\n$65536\r\n",
        b"*1\r\n$4\r\nQUIT\r\n",
    ];
    for input in inputs {
        let mut redis = Conn::open(server.addr()).await;
        redis.send(input).await;
        let want = redis.read_to_close().await;
        let mut c = Conn::open(proxy.addr).await;
        c.send(input).await;
        let got = c.read_to_close().await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Unknown commands and wrong argument counts are refused before authentication is asked.
    let cmds: &[&[&str]] = &[
        &["GET", "k"],
        &["FOO", "a", "b"],
        &["GET"],
        &["CLIENT", "FOO"],
        &["CONFIG"],
        &["AUTH"],
        &["RESET"],
        &["PING"],
    ];
    assert_eq!(
        pipelined(proxy.addr, cmds).await,
        pipelined(server.addr(), cmds).await
    );

    // Once the monitor's connection is up, idle unauthenticated clients add none.
    eventually!(WAIT, "the monitor reached Redis", {
        proxy.control.status()["upstream"]["up"] == true
    });
    // Then only this admin connection and the monitor's are left: the direct connections
    // of the comparisons above are gone once Redis has read their close, which a busy
    // machine can delay past this point.
    let before = 2;
    eventually!(WAIT, "only the admin and the monitor's connections", {
        connected_clients(&mut admin).await == before
    });
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut c = Conn::open(proxy.addr).await;
        // Answered: the session is past the point where it used to connect upstream.
        assert_eq!(
            c.call(&["PING"]).await,
            "-NOAUTH Authentication required.\r\n"
        );
        idle.push(c);
    }
    assert_eq!(connected_clients(&mut admin).await, before);
    // Authenticating opens the client's connection, as the mapped user, before +OK.
    assert_eq!(
        idle[0].call(&["AUTH", "app", "proxy-pass"]).await,
        "+OK\r\n"
    );
    assert_eq!(connected_clients(&mut admin).await, before + 1);
    assert_eq!(idle[0].call(&["ACL", "WHOAMI"]).await, "$3\r\napp\r\n");
    proxy.shutdown().await;
}

/// Guards against an AUTH whose password is too large to hold being answered NOAUTH, or,
/// streamed, sent to Redis as it was: a Redis ACL user with a 100 KiB password that is no
/// `[auth]` user logged the client in. Proxy users are the only credentials: WRONGPASS, as
/// Redis answers for a user it does not know.
#[tokio::test]
async fn an_oversized_auth_password_gets_wrongpass() {
    let (server, mut admin) = redis_with_app_user().await;
    let big = "x".repeat(100 * 1024);
    let acl = [
        "ACL",
        "SETUSER",
        "big",
        "on",
        &format!(">{big}"),
        "~*",
        "+@all",
    ];
    assert_eq!(admin.call(&acl).await, "+OK\r\n");
    let proxy = auth_proxy(&server, APP_USER).await;
    let mut redis = Conn::open(server.addr()).await;
    assert_eq!(redis.call(&["AUTH", "app", "app-pass"]).await, "+OK\r\n");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["AUTH", "app", "proxy-pass"]).await, "+OK\r\n");
    for password in ["y".repeat(64 * 1024), big] {
        let want = redis.call(&["AUTH", "nobody", &password]).await;
        assert!(want.starts_with("-WRONGPASS"), "{want}");
        assert_eq!(c.call(&["AUTH", "big", &password]).await, want);
        assert_eq!(c.call(&["AUTH", &password]).await, want);
    }
    // Still authenticated as before, as in Redis.
    assert_eq!(c.call(&["ACL", "WHOAMI"]).await, "$3\r\napp\r\n");
    proxy.shutdown().await;
}

/// Guards against `RESPGUARD` alone being answered "unknown subcommand ''": Redis answers a
/// container command without a subcommand (`CLIENT`) with its arity error.
#[tokio::test]
async fn respguard_without_a_subcommand_is_an_arity_error() {
    let server = RedisServer::start();
    let mut raw = proxy_config(&server.url());
    raw.admin.command_networks = vec![];
    let proxy = start_proxy(raw).await;
    let mut redis = Conn::open(server.addr()).await;
    let want = redis
        .call(&["CLIENT"])
        .await
        .replace("'client'", "'respguard'");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["RESPGUARD"]).await, want);
    proxy.shutdown().await;
}

/// Guards against an admin request with an oversized head being closed without a word.
#[tokio::test]
async fn an_oversized_admin_request_head_gets_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let proxy = start_proxy(proxy_config(&server.url())).await;
    let mut s = tokio::net::TcpStream::connect(proxy.admin_addr.unwrap())
        .await
        .unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut response))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );
    proxy.shutdown().await;
}

/// Guards against the proxy's own WRONGPASS being sent under `CLIENT REPLY OFF`, where Redis
/// sends nothing.
#[tokio::test]
async fn a_wrong_password_under_client_reply_off_gets_no_answer() {
    let (server, _admin) = redis_with_app_user().await;
    let proxy = auth_proxy(&server, APP_USER).await;
    let session = |password: &'static str| -> Vec<Vec<&'static str>> {
        vec![
            vec!["AUTH", "app", password],
            vec!["CLIENT", "REPLY", "OFF"],
            vec!["AUTH", "app", "wrong"],
            vec!["CLIENT", "REPLY", "ON"],
            vec!["ECHO", "end"],
        ]
    };
    let mut out = Vec::new();
    for (addr, password) in [(server.addr(), "app-pass"), (proxy.addr, "proxy-pass")] {
        let mut c = Conn::open(addr).await;
        for cmd in session(password) {
            c.cmd(&cmd).await;
        }
        out.push(c.replies(3).await);
    }
    assert_eq!(out[0], "+OK\r\n+OK\r\n$3\r\nend\r\n");
    assert_eq!(out[1], out[0], "through the proxy");
    proxy.shutdown().await;
}
