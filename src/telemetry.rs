//! The proxy's metrics: every handle registered once at start, so recording on the hot
//! path is an atomic add, never a lookup by name (which measured ~25x slower).
//!
//! Names end in a unit or `_total`; no label ever carries a key or a client-chosen string.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, gauge, Counter, Gauge};

/// Handles for the metrics sessions and the listener record.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Commands received from clients.
    pub commands: Counter,
    /// Bytes read from clients.
    pub client_bytes_received: Counter,
    /// Bytes written to clients.
    pub client_bytes_sent: Counter,
    /// Bytes read from Redis.
    pub upstream_bytes_received: Counter,
    /// Bytes written to Redis.
    pub upstream_bytes_sent: Counter,
    /// Connections refused because `proxy.max_clients` were open.
    pub clients_refused: Counter,
    /// Connections refused by the connection-rate limits.
    pub clients_rate_limited: Counter,
    /// Client connections accepted.
    pub clients_accepted: Counter,
    /// Client connections open now.
    pub clients_open: Gauge,
    /// Malformed requests (each closes its connection).
    pub client_protocol_errors: Counter,
    /// Clients whose TLS handshake failed or who spoke plain text to the TLS listener.
    pub client_tls_failures: Counter,
    /// Upstream connections closed because Redis owed replies and sent nothing for
    /// `upstream.reply_timeout`.
    pub upstream_reply_timeouts: Counter,
    /// Connections turned into a byte tunnel by SYNC or PSYNC (`proxy.replication`).
    pub replication_tunnels: Counter,
    /// Times multiplexed clients moved to a connection of their own (connection state used).
    pub pinned_clients: Counter,
    /// Times multiplexed clients went back to a shared connection (their state ended).
    pub unpinned_clients: Counter,
    /// Multiplexed clients disconnected for leaving replies unread past their limit
    /// (`proxy.output_buffer_hard`, or `output_buffer` for `output_buffer_soft_time`).
    pub slow_readers: Counter,
}

impl ProxyMetrics {
    /// Register every handle with the installed recorder (a no-op recorder if none is).
    pub fn register() -> Self {
        ProxyMetrics {
            commands: counter!("respguard_commands_total"),
            client_bytes_received: counter!("respguard_client_received_bytes_total"),
            client_bytes_sent: counter!("respguard_client_sent_bytes_total"),
            upstream_bytes_received: counter!("respguard_upstream_received_bytes_total"),
            upstream_bytes_sent: counter!("respguard_upstream_sent_bytes_total"),
            clients_refused: counter!("respguard_client_connections_refused_total"),
            clients_rate_limited: counter!("respguard_client_connections_rate_limited_total"),
            clients_accepted: counter!("respguard_client_connections_accepted_total"),
            clients_open: gauge!("respguard_client_connections"),
            client_protocol_errors: counter!("respguard_client_protocol_errors_total"),
            client_tls_failures: counter!("respguard_client_tls_handshake_failures_total"),
            upstream_reply_timeouts: counter!("respguard_upstream_reply_timeouts_total"),
            replication_tunnels: counter!("respguard_replication_tunnels_total"),
            pinned_clients: counter!("respguard_pinned_clients_total"),
            unpinned_clients: counter!("respguard_unpinned_clients_total"),
            slow_readers: counter!("respguard_slow_readers_disconnected_total"),
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in microseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// One command's histogram: a count per bucket (the last is `+Inf`), and the sum.
struct Buckets {
    counts: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// Commands of one kind read at one instant, whose replies arrived together: counted in
/// their histogram with one update of a bucket and of the sum, not one per command. In a
/// pipeline, the replies of one read from Redis mostly answer commands of one read from
/// the client, so a run is usually all of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LatencyRun {
    command: u16,
    received_us: u64,
    count: u64,
}

impl LatencyRun {
    /// Add a command read at `received_us`. When it does not belong to this run, the run
    /// starts afresh with it, and the run it ended is returned to be recorded
    /// ([`CommandLatency::record_run`]).
    #[inline]
    pub fn add(&mut self, command: u16, received_us: u64) -> Option<LatencyRun> {
        if self.command == command && self.received_us == received_us && self.count > 0 {
            self.count += 1;
            return None;
        }
        let ended = std::mem::replace(
            self,
            LatencyRun {
                command,
                received_us,
                count: 1,
            },
        );
        (ended.count > 0).then_some(ended)
    }
}

/// Calls and latency per command, as Prometheus histograms
/// (`respguard_command_duration_seconds{command}`): the time from the proxy reading a
/// command to its reply going to the client's socket buffer.
///
/// Fixed atomic buckets, one set per command of the command table (Redis's own names, so
/// the label set is bounded; commands Redis does not know count under `other`). Recording
/// is a few relaxed atomic adds and never allocates: the exporter's own histogram handles
/// keep every sample until a scrape drains them (8 bytes a sample, 20 MB per 5 s at
/// 500,000 commands a second), which breaks the proxy's memory bound when nobody scrapes.
pub struct CommandLatency {
    names: Box<[Box<str>]>,
    buckets: Box<[Buckets]>,
}

impl std::fmt::Debug for CommandLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandLatency")
            .field("commands", &self.names.len())
            .finish()
    }
}

impl CommandLatency {
    /// Histograms for every command of `table`, indexed by [`crate::command::CommandInfo::id`].
    pub fn new(table: &crate::command::CommandTable) -> Self {
        let unknown = table.unknown().id;
        let names: Box<[Box<str>]> = table
            .all()
            .map(|c| {
                if c.id == unknown {
                    "other".into()
                } else {
                    c.name.clone()
                }
            })
            .collect();
        let buckets = names
            .iter()
            .map(|_| Buckets {
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_us: AtomicU64::new(0),
            })
            .collect();
        CommandLatency { names, buckets }
    }

    /// Record one command answered after `micros` microseconds.
    #[inline]
    pub fn record(&self, command: u16, micros: u64) {
        self.record_many(command, micros, 1);
    }

    /// Record `count` commands of one kind, each answered after `micros` microseconds:
    /// what `count` calls of [`Self::record`] would record.
    #[inline]
    pub fn record_many(&self, command: u16, micros: u64, count: u64) {
        let Some(b) = self
            .buckets
            .get(command as usize)
            .or_else(|| self.buckets.last())
        else {
            return;
        };
        let i = LATENCY_BUCKETS_US.partition_point(|&bound| bound < micros);
        b.counts[i].fetch_add(count, Ordering::Relaxed);
        b.sum_us
            .fetch_add(micros.wrapping_mul(count), Ordering::Relaxed);
    }

    /// Record the commands of `run`, answered at `now_us`.
    #[inline]
    pub fn record_run(&self, run: LatencyRun, now_us: u64) {
        if run.count > 0 {
            let micros = now_us.saturating_sub(run.received_us);
            self.record_many(run.command, micros, run.count);
        }
    }

    /// How many commands named `name` were answered (for tests and `/status`).
    pub fn calls(&self, name: &str) -> u64 {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map_or(0, |i| self.total(&self.buckets[i]))
    }

    /// Commands answered in all.
    pub fn total_calls(&self) -> u64 {
        self.buckets.iter().map(|b| self.total(b)).sum()
    }

    fn total(&self, b: &Buckets) -> u64 {
        b.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Append the histograms of every command seen so far in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(
            "# HELP respguard_command_duration_seconds Time from reading a command to sending its reply, by command.\n\
             # TYPE respguard_command_duration_seconds histogram\n",
        );
        for (name, b) in self.names.iter().zip(self.buckets.iter()) {
            if self.total(b) == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, count) in b.counts.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = match LATENCY_BUCKETS_US.get(i) {
                    Some(&us) => format!("{}", us as f64 / 1e6),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(
                    out,
                    "respguard_command_duration_seconds_bucket{{command=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = b.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "respguard_command_duration_seconds_sum{{command=\"{name}\"}} {sum}\n\
                 respguard_command_duration_seconds_count{{command=\"{name}\"}} {cumulative}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandTable;

    #[test]
    fn latency_lands_in_its_bucket_and_renders_cumulatively() {
        let table = CommandTable::builtin();
        let latency = CommandLatency::new(&table);
        let get = table.lookup(&[b"GET"]).id;
        latency.record(get, 20);
        latency.record(get, 25);
        latency.record(get, 26);
        latency.record(get, 20_000_000);
        latency.record(table.unknown().id, 1);
        let mut text = String::new();
        latency.render(&mut text);
        assert!(text.contains(
            "respguard_command_duration_seconds_bucket{command=\"get\",le=\"0.000025\"} 2\n"
        ));
        assert!(text.contains(
            "respguard_command_duration_seconds_bucket{command=\"get\",le=\"0.00005\"} 3\n"
        ));
        assert!(text
            .contains("respguard_command_duration_seconds_bucket{command=\"get\",le=\"10\"} 3\n"));
        assert!(text.contains(
            "respguard_command_duration_seconds_bucket{command=\"get\",le=\"+Inf\"} 4\n"
        ));
        assert!(text.contains("respguard_command_duration_seconds_count{command=\"other\"} 1\n"));
        assert!(
            !text.contains("command=\"set\""),
            "unused commands are not rendered"
        );
        assert_eq!(latency.calls("get"), 4);
    }

    /// Commands recorded in runs ([`LatencyRun`]) render exactly as the same commands
    /// recorded one by one: counts, buckets and sums, across runs that change command or
    /// read time.
    #[test]
    fn a_run_of_commands_records_what_each_command_would() {
        let table = CommandTable::builtin();
        let get = table.lookup(&[b"GET"]).id;
        let set = table.lookup(&[b"SET"]).id;
        let answered: [(u16, u64); 7] = [
            (get, 10),
            (get, 10),
            (get, 10),
            (set, 10),
            (set, 900),
            (get, 900),
            (get, 900),
        ];
        let now_us = 1_000;
        let one_by_one = CommandLatency::new(&table);
        for (command, received_us) in answered {
            one_by_one.record(command, now_us - received_us);
        }
        let in_runs = CommandLatency::new(&table);
        let mut run = LatencyRun::default();
        let mut recorded = 0;
        for (command, received_us) in answered {
            if let Some(ended) = run.add(command, received_us) {
                in_runs.record_run(ended, now_us);
                recorded += 1;
            }
        }
        in_runs.record_run(run, now_us);
        assert_eq!(recorded, 3, "four runs: three ended by the next, one left");
        let (mut expected, mut got) = (String::new(), String::new());
        one_by_one.render(&mut expected);
        in_runs.render(&mut got);
        assert_eq!(got, expected);
        in_runs.record_run(LatencyRun::default(), now_us);
        assert_eq!(in_runs.total_calls(), 7, "an empty run records nothing");
    }
}
