//! The admin listener and the live console: every endpoint's status, content type and
//! body; the bounds on a request (head size, body, time, connections at once); the console
//! page, its assets naming no other host; and the page in a real browser (headless
//! Chromium) showing the figures of known traffic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use respguard::admin::{console, CONNECTION_TIME, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Send `request` as is on its own connection and read until the listener closes it;
/// returns what came back (lossy UTF-8), even if the close was a reset.
async fn raw_exchange(admin: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(admin).await.expect("admin connect");
    s.write_all(request).await.expect("send the request");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("answered and closed in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// The value of header `name` in a response head (names compared without case).
fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
    response.head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn every_admin_endpoint_answers_with_its_status_type_and_body() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();

    let healthz = http_get(admin, "/healthz").await;
    assert_eq!((healthz.status, &*healthz.body), (200, "ok\n"));
    assert_eq!(header(&healthz, "Content-Type"), Some("text/plain"));
    assert!(
        healthz.head.contains("\r\nContent-Type: text/plain\r\n"),
        "title case: {}",
        healthz.head
    );

    let readyz = eventually!(WAIT, "/readyz ready", {
        let r = http_get(admin, "/readyz").await;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(r.body)
        }
    });
    assert!(
        readyz
            .body
            .starts_with("ready: upstream answering, command table from ")
            && readyz.body.ends_with('\n'),
        "{}",
        readyz.body
    );

    let status = http_get(admin, "/status").await;
    assert_eq!(status.status, 200);
    assert_eq!(header(&status, "Content-Type"), Some("application/json"));
    assert!(status.body.ends_with("}\n"), "pretty JSON and a newline");
    assert_eq!(status.json()["version"], env!("CARGO_PKG_VERSION"));

    let metrics = http_get(admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        header(&metrics, "Content-Type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        metrics.body.contains("respguard_config_generation"),
        "{}",
        metrics.body
    );

    // The insight runs by default: its report, as JSON.
    let keyspace = http_get(admin, "/keyspace").await;
    assert_eq!(keyspace.status, 200, "{}", keyspace.body);
    assert_eq!(header(&keyspace, "Content-Type"), Some("application/json"));
    let report: respguard::keyspace::report::LiveReport =
        serde_json::from_str(&keyspace.body).expect("a LiveReport");
    assert_eq!(report.sample_rate, 128);

    let missing = http_get(admin, "/nothing").await;
    assert_eq!((missing.status, &*missing.body), (404, "not found\n"));

    let post = raw_exchange(
        admin,
        b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post}"
    );
    assert!(post.ends_with("\r\n\r\nonly GET\n"), "{post}");

    let with_body = raw_exchange(
        admin,
        b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(
        with_body.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{with_body}"
    );
    let chunked = raw_exchange(
        admin,
        b"GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        chunked.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{chunked}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_disabled_is_a_404_and_the_console_says_so() {
    let server = RedisServer::start();
    let mut raw = proxy_config(&server.url());
    raw.admin.metrics = false;
    let proxy = start_proxy(raw).await;
    let admin = proxy.admin_addr.unwrap();
    let metrics = http_get(admin, "/metrics").await;
    assert_eq!(
        (metrics.status, &*metrics.body),
        (404, "metrics disabled\n")
    );
    let data = http_get(admin, "/console/data").await.json();
    assert!(data["decisions"].is_null(), "{data}");
    assert!(data["commands_answered"].is_null(), "{data}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_console_and_its_assets_are_served_and_name_no_other_host() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();
    let page = http_get(admin, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        header(&page, "Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let policy = header(&page, "Content-Security-Policy").expect("a content security policy");
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(
        !policy.contains("http"),
        "the policy allows no other host: {policy}"
    );

    // Every file the page refers to is one the listener serves, and every file it serves
    // is checked.
    let mut referred: Vec<&str> = page
        .body
        .split(['"', '\''])
        .filter(|s| s.starts_with("/console/"))
        .collect();
    referred.sort();
    let mut served: Vec<&str> = console::assets()
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| *p != "/")
        .collect();
    served.sort();
    assert_eq!(
        referred, served,
        "the page loads exactly the assets the listener serves"
    );
    for (path, text) in console::assets() {
        let response = http_get(admin, path).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, text, "{path} is served as compiled in");
        for scheme in ["http://", "https://", "//cdn", "url("] {
            assert!(!text.contains(scheme), "{path} names {scheme}");
        }
    }
    let data = http_get(admin, "/console/data").await.json();
    for key in [
        "memory",
        "clients",
        "commands_answered",
        "decisions",
        "top_refused_clients",
        "rules_toml",
    ] {
        assert!(data.get(key).is_some(), "/console/data has {key}: {data}");
    }
    proxy.shutdown().await;
}

/// A head over 8 KiB that arrives in pieces is answered 431 (not closed without a word),
/// and the listener goes on serving.
#[tokio::test]
async fn a_head_over_the_bound_arriving_in_pieces_gets_431() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for i in 0..20 {
        let line = format!("X-Pad-{i}: {}\r\n", "p".repeat(1000));
        if s.write_all(line.as_bytes()).await.is_err() {
            break; // answered and closed already
        }
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("closed in time");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{got}"
    );
    assert_eq!(http_get(admin, "/healthz").await.status, 200);
    proxy.shutdown().await;
}

/// A client trickling its head a byte at a time (never idle long) is cut off when the
/// connection's time is up, not served forever.
#[tokio::test]
async fn a_slow_client_is_cut_off_at_the_connection_time() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();
    let s = TcpStream::connect(admin).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        // At most 20 s of one byte every 100 ms; the listener closes long before.
        for _ in 0..200 {
            if writer.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, reader.read_to_end(&mut got))
        .await
        .expect("the listener closes a trickling client");
    let took = started.elapsed();
    trickle.abort();
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "a head never finished is never answered 200"
    );
    assert!(
        took >= CONNECTION_TIME - Duration::from_millis(500)
            && took < CONNECTION_TIME + Duration::from_secs(3),
        "closed after {took:?}, the bound is {CONNECTION_TIME:?}"
    );
    proxy.shutdown().await;
}

/// Connections past the bound are answered 503 at once; once the held ones go, the
/// listener serves again.
#[tokio::test]
async fn admin_connections_at_once_are_bounded() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    // Accepted in order: by the time this one is, the held ones have every slot.
    let over = raw_exchange(admin, b"").await;
    assert!(
        over.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
            && over.ends_with("too many admin connections\n"),
        "{over}"
    );
    drop(held);
    eventually!(WAIT, "a slot is free again", {
        let r = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if r.starts_with("HTTP/1.1 200 ") {
            Ok(())
        } else {
            Err(r)
        }
    });
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_admin_listener() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();
    assert_eq!(http_get(admin, "/healthz").await.status, 200);
    proxy.shutdown().await;
    eventually!(WAIT, "the admin port closed", {
        match TcpStream::connect(admin).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_string()),
        }
    });
}

/// The browser: `RESPGUARD_CHROMIUM` or Debian's `chromium` (scripts/install-test-deps.sh
/// installs it).
fn chromium() -> String {
    std::env::var("RESPGUARD_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Load `url` in headless Chromium, let its scripts run for `virtual_ms` of virtual time,
/// and return the DOM they leave.
async fn rendered_dom(url: &str, virtual_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={virtual_ms}"),
            "--dump-dom",
            url,
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium renders the page within 60 s")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): install Debian's chromium (scripts/install-test-deps.sh does)",
                chromium()
            )
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 DOM")
}

/// The text of the element with `id` in a dumped DOM (up to its first tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let after = &dom[at..];
    let start = after.find('>').unwrap() + 1;
    let end = after[start..].find('<').unwrap() + start;
    &after[start..end]
}

#[tokio::test]
async fn the_console_shows_live_figures_in_a_real_browser() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        "[keyspace]\nsample_rate = 1\n[[guards.size.rules]]\npattern = \"cblob:*\"\nmax_value = \"1KiB\"\n",
    )
    .await;
    let admin = proxy.admin_addr.unwrap();
    let mut c = Conn::open(proxy.addr).await;
    let big = "v".repeat(2000);
    for i in 0..7 {
        let reply = c.call(&["SET", &format!("cblob:{i}"), &big]).await;
        assert!(
            reply.starts_with("-ERR respguard: value of 2000 bytes"),
            "{reply}"
        );
    }
    for i in 0..50 {
        assert_eq!(c.call(&["SET", &format!("k:{i}"), "v"]).await, "+OK\r\n");
    }
    let answered_before = http_get(admin, "/status").await.json()["commands_answered"]
        .as_u64()
        .unwrap();
    assert!(answered_before >= 57, "{answered_before}");

    let dom = rendered_dom(&format!("http://{admin}/"), 7000).await;

    // The decision table: the configured rule (a pattern no other test uses, as the
    // recorder is the process's), refused exactly as often as it was here.
    assert!(
        dom.contains(
            "<td>size</td><td>cblob:*</td><td>refused</td><td>enforce</td><td class=\"num\">7</td>"
        ),
        "decision row for cblob:* with 7 refusals: {dom}"
    );
    // The client refused: this test's connection, seven times.
    assert!(
        dom.contains("<td>127.0.0.1</td><td class=\"num\">7</td>"),
        "refused client row: {dom}"
    );
    // The rules in force, as TOML.
    assert!(
        text_of(&dom, "rules").contains("pattern = \"cblob:*\""),
        "{dom}"
    );
    // Commands answered, at least what was sent; a rate computed from two polls.
    let answered: u64 = text_of(&dom, "commands-answered")
        .replace(',', "")
        .parse()
        .expect("a count");
    assert!(
        answered >= answered_before,
        "{answered} < {answered_before}"
    );
    let rate = text_of(&dom, "commands-per-second");
    assert!(
        rate.replace(',', "").parse::<f64>().is_ok(),
        "commands per second shown: {rate:?}"
    );
    // Memory from the monitor's poll, and the shedding level.
    assert_eq!(text_of(&dom, "shedding-level"), "normal");
    assert!(
        text_of(&dom, "memory-used").ends_with("iB")
            || text_of(&dom, "memory-used").ends_with(" B"),
        "{dom}"
    );
    // The live keyspace table: the fifty writes to `k:*`, none with a TTL.
    assert!(
        dom.contains("<table id=\"keyspace\">"),
        "the table is shown: {dom}"
    );
    assert!(
        dom.contains("<td>k:*</td><td class=\"num\">50</td>"),
        "k:* row with 50 operations: {dom}"
    );
    proxy.shutdown().await;
}

/// An admin listener whose `/keyspace` is served by `report`, in front of no proxy, so the
/// route and the page's table are checked against every field of a report chosen here
/// (the live proxy's own report is checked in the browser test above).
async fn admin_with_keyspace(
    report: respguard::keyspace::report::LiveReport,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    use std::sync::Arc;

    use respguard::admin::{self, AdminState, KeyspaceSource};
    use respguard::command::CommandTable;
    use respguard::control::{Control, StatusSources};
    use respguard::guard::GuardContext;
    use respguard::health::UpstreamHealth;
    use respguard::upstream::{ConnectGate, GateSettings};

    let config = proxy_config("redis://127.0.0.1:1").validate().unwrap();
    let raw = config.raw.clone();
    let gate = Arc::new(ConnectGate::new(
        config.upstream.clone(),
        GateSettings {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_connects_per_second: 10,
            max_connections: 0,
            tls: None,
        },
    ));
    let table = Arc::new(CommandTable::builtin());
    let health = Arc::new(UpstreamHealth::default());
    let control = Control::new(
        raw.clone(),
        None,
        table,
        GuardContext::new(&raw.guards),
        StatusSources {
            gate,
            health: Arc::clone(&health),
            client_slots: Arc::new(tokio::sync::Semaphore::new(10)),
            max_clients: 10,
            latency: None,
        },
    )
    .unwrap();
    let source: KeyspaceSource = Arc::new(move || report.clone());
    let state = AdminState {
        prometheus: None,
        latency: None,
        health,
        control: Arc::new(control),
        table_source: "builtin",
        keyspace: Some(source),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(admin::serve(listener, state, stopped));
    (addr, stop)
}

#[tokio::test]
async fn a_keyspace_report_is_served_as_json_and_shown_as_a_table() {
    use respguard::keyspace::report::{LiveReport, PrefixActivity};
    let report = LiveReport {
        window_seconds: 120.0,
        sample_rate: 1,
        prefix_capacity: 1024,
        tracked_prefixes: 2,
        prefixes: vec![
            PrefixActivity {
                prefix: "session:*".into(),
                operations: 1200,
                writes: 400,
                writes_per_second: 400.0 / 120.0,
                bytes_written: 3 * 1024 * 1024,
                writes_without_ttl: 100,
                largest_value_bytes: 2048,
                ..Default::default()
            },
            PrefixActivity {
                prefix: "queue:*".into(),
                operations: 90,
                writes: 60,
                writes_per_second: 0.5,
                pushes: 60,
                pops: 20,
                library: Some("sidekiq".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let (admin, stop) = admin_with_keyspace(report.clone()).await;
    let served = http_get(admin, "/keyspace").await;
    assert_eq!(served.status, 200);
    let parsed: LiveReport = serde_json::from_str(&served.body).expect("a LiveReport");
    assert_eq!(parsed, report);

    let dom = rendered_dom(&format!("http://{admin}/"), 3000).await;
    assert!(
        dom.contains("<table id=\"keyspace\">"),
        "the table is shown: {dom}"
    );
    assert!(
        dom.contains(
            "<td>session:*</td><td class=\"num\">1,200</td><td class=\"num\">3.33</td>\
             <td class=\"num\">3.0 MiB</td><td class=\"num\">25 %</td><td class=\"num\">2.0 KiB</td>\
             <td class=\"num\">0</td><td>–</td>"
        ),
        "session:* row: {dom}"
    );
    assert!(
        dom.contains("<td>queue:*</td><td class=\"num\">90</td><td class=\"num\">0.5</td>")
            && dom.contains("<td class=\"num\">40</td><td>sidekiq</td>"),
        "queue:* row: {dom}"
    );
    let _ = stop.send(true);
}
