//! Client names under multiplexing: CLIENT SETNAME is kept by respguard for the client
//! instead of giving it a connection of its own for life; CLIENT GETNAME answers it; a
//! connection of the client's own (a transaction, a blocking command) is given the name
//! first, so Redis's `CLIENT LIST` shows it there, and is never reused by another client.
//!
//! Replies are compared byte for byte with a direct connection's.

use crate::harness::*;
use crate::identities::{mux_proxy, only_shared, pipelined};
use crate::multiplexed::Watcher;

/// Names set, read, refused (Redis's own error for a name with a space), removed and set
/// again, then read inside a transaction: byte for byte what a direct connection gets,
/// pipelined and one command at a time. During the transaction Redis shows the client's
/// own connection with its name. A named client whose transaction does not rename it is
/// back on shared connections afterwards (its own, named, is closed rather than kept for
/// reuse: the next client's transaction sees no name), and the shared ones keep theirs.
#[tokio::test]
async fn client_setname_is_kept_without_a_connection_of_its_own() {
    let script: &[&[&str]] = &[
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "app"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "a b"],
        &["CLIENT", "SETNAME", "x", "y"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", ""],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "app2"],
        &["MULTI"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "app3"],
        &["EXEC"],
        &["CLIENT", "GETNAME"],
        &["SET", "k", "v"],
    ];
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    let want = pipelined(&mut direct, script).await;
    assert!(
        want.contains("-ERR Client names cannot contain spaces"),
        "{want}"
    );

    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut c, script).await, want, "one pipeline");
    // The SETNAME its transaction ran is on that connection only: it keeps it.
    drop(c);
    only_shared(&mut watcher, "the first client's named connection closed").await;
    let mut c2 = Conn::open(proxy.addr).await;
    let mut replies = String::new();
    for (i, command) in script.iter().enumerate() {
        replies.push_str(&c2.call(command).await);
        if command[0] == "MULTI" {
            let (_, own) = watcher.serving().await;
            let names: Vec<&str> = own.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["app2"], "the transaction's connection, at {i}");
        }
    }
    assert_eq!(replies, want, "one at a time");
    drop(c2);

    // A client named on a shared connection goes back to one after its transaction.
    let mut named = Conn::open(proxy.addr).await;
    let renamed: &[&[&str]] = &[
        &["CLIENT", "SETNAME", "worker"],
        &["MULTI"],
        &["GET", "k"],
        &["EXEC"],
        &["CLIENT", "GETNAME"],
    ];
    let mut direct = Conn::open(reference.addr()).await;
    let want = pipelined(&mut direct, renamed).await;
    assert_eq!(pipelined(&mut named, renamed).await, want);
    let shared = only_shared(&mut watcher, "the named client back on shared connections").await;
    assert!(shared.iter().all(|c| c.name != "worker"), "{shared:?}");

    // The next client's transaction gets a connection without a name.
    let mut other = Conn::open(proxy.addr).await;
    let transaction: &[&[&str]] = &[&["MULTI"], &["CLIENT", "GETNAME"], &["EXEC"]];
    let mut direct = Conn::open(reference.addr()).await;
    let want = pipelined(&mut direct, transaction).await;
    assert_eq!(pipelined(&mut other, transaction).await, want);
    proxy.shutdown().await;
}

/// `HELLO v SETNAME name` names the client on shared connections too (go-redis and Lettuce
/// send it at connect when given a client name): Redis's reply (its `id` aside: a shared
/// connection's), CLIENT GETNAME, a version Redis refuses: byte for byte what a direct
/// connection gets; Redis shows no connection of the client's own and no shared one
/// renamed. A name Redis refuses gets Redis's own error.
#[tokio::test]
async fn hello_with_setname_names_the_client_on_shared_connections() {
    let script: &[&[&str]] = &[
        &["HELLO", "3", "SETNAME", "app"],
        &["CLIENT", "GETNAME"],
        &["GET", "nothing"],
        &["HELLO", "2", "SETNAME", "app2"],
        &["CLIENT", "GETNAME"],
        &["HELLO", "4", "SETNAME", "other"],
        &["CLIENT", "GETNAME"],
    ];
    let refused: &[&[&str]] = &[&["HELLO", "3", "SETNAME", "a b"], &["CLIENT", "GETNAME"]];
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    let want = mask(&pipelined(&mut direct, script).await);
    let mut direct = Conn::open(reference.addr()).await;
    let want_refused = pipelined(&mut direct, refused).await;
    assert!(
        want_refused.starts_with("-ERR Client names"),
        "{want_refused}"
    );

    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(mask(&pipelined(&mut c, script).await), want);
    let shared = only_shared(&mut watcher, "the named client on shared connections").await;
    assert!(
        shared
            .iter()
            .all(|c| c.name == crate::multiplexed::SHARED_NAME),
        "{shared:?}"
    );
    let mut other = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut other, refused).await, want_refused);
    proxy.shutdown().await;
}
