//! Real client libraries through the proxy: redis-py (sync and asyncio, RESP2 and RESP3)
//! and ioredis, each running its scenario script from `tests/clients/`. A missing library
//! fails the test with the command that installs it; it never skips.

use crate::harness::*;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

async fn run(program: &str, args: &[&str], install_hint: &str) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(CLIENTS)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} ({install_hint})"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({install_hint}):\n{stdout}\n{stderr}"
    );
    println!("{}", stdout.trim());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_py_sync_and_asyncio_in_resp2_and_resp3() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let port = proxy.addr.port().to_string();
    for protocol in ["2", "3"] {
        run(
            "python3",
            &["redis_py_scenario.py", &port, protocol],
            "pip install redis",
        )
        .await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ioredis() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let port = proxy.addr.port().to_string();
    run(
        "node",
        &["ioredis_scenario.js", &port],
        "cd tests/clients && npm ci",
    )
    .await;
    proxy.shutdown().await;
}
