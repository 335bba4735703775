//! Integration tests: real redis-server processes, the proxy in-process, raw sockets and
//! real client libraries.

mod access;
mod admin;
mod audit;
mod cli;
mod clients;
mod deploy;
mod differential;
mod enqueue;
mod failures;
mod faults;
mod fidelity;
mod guards;
mod harness;
mod job_keys;
mod jobs;
mod keyspace;
mod lanes;
mod layering;
mod memory;
mod multiplexed;
mod operating;
mod passthrough;
mod payload_formats;
mod pinning;
mod pressure;
mod runtime;
mod scanner;
mod scripted_enqueue;
mod sentinel;
mod shim;
mod soak;
mod tls;
mod ttl_libraries;
mod ttl_semantics;
