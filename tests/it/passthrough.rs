//! What the proxy must carry unchanged though no ordinary reply looks like it: the deepest
//! nesting Redis produces, and replication (SYNC/PSYNC) through the proxy's address.
//! Everything is compared with what Redis gives directly.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Send `request` on a fresh connection and read until the bytes end with `last`.
async fn exchange(addr: SocketAddr, request: &[u8], last: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !got.ends_with(last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 64 * 1024];
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {last:?} in time; have {} bytes", got.len()))
            .expect("read");
        assert!(n > 0, "closed after {} bytes: {:?}", got.len(), tail(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

fn tail(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[b.len().saturating_sub(120)..]).into_owned()
}

/// A Lua table that contains itself makes Redis nest arrays until Lua's stack ends (about
/// 8,000 levels) and close them with an error; the proxy once dropped the client past 128
/// levels. The reply must arrive whole, byte for byte, in RESP2 and RESP3.
#[tokio::test]
async fn replies_nested_as_deep_as_lua_allows_pass_unchanged() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis).await;
    for proto in ["2", "3"] {
        let mut request = encode(&["HELLO", proto]);
        request.extend(encode(&[
            "EVAL",
            "local a = {}; local b = {a}; a[1] = b; return a",
            "0",
        ]));
        request.extend(encode(&["PING"]));
        let direct = exchange(redis.addr(), &request, b"+PONG\r\n").await;
        let through = exchange(proxy.addr, &request, b"+PONG\r\n").await;
        let depth = direct.windows(4).filter(|w| w == b"*1\r\n").count();
        assert!(
            depth > 1000,
            "RESP{proto}: Redis nested only {depth} levels"
        );
        assert_eq!(
            mask(&String::from_utf8_lossy(&direct)),
            mask(&String::from_utf8_lossy(&through)),
            "RESP{proto}"
        );
    }
    proxy.shutdown().await;
}
