//! One HTTP/1.1 GET to a running proxy's admin listener, for the commands that ask it
//! something (`respguard health-probe`, `respguard suggest --from-proxy`), where no HTTP
//! client is installed: the request in one write (a server that answers and closes at once
//! may otherwise read only part of it), a bounded read, a time limit on both.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An answer: its status line and its body.
#[derive(Debug)]
pub struct Answer {
    /// `HTTP/1.1 200 OK`.
    pub status: String,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

impl Answer {
    /// Whether the status is 200.
    pub fn is_ok(&self) -> bool {
        self.status.contains(" 200 ")
    }
}

/// GET `path` from `address` (`host:port`), waiting at most `timeout` to connect and for
/// each read, and reading at most `max_bytes` of the response.
pub fn get(address: &str, path: &str, timeout: Duration, max_bytes: u64) -> io::Result<Answer> {
    let addr = address.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing")
    })?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.take(max_bytes).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no complete HTTP response"))?;
    Ok(Answer {
        status: head.lines().next().unwrap_or_default().to_string(),
        body: body.to_string(),
    })
}
