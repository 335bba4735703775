//! Integration tests: real redis-server processes, the proxy in-process, raw sockets and
//! real client libraries.

mod clients;
mod differential;
mod failures;
mod harness;
mod memory;
mod scanner;
