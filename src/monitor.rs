//! The memory monitor: a dedicated upstream connection that polls `PING`, `INFO memory` and
//! `INFO clients` every `monitor.interval`, turns them into the pressure and shedding level
//! the shed guard reads ([`MemoryPressure`]), and exports them as metrics.
//!
//! Besides the level, it keeps the growth rate of used memory (least squares over the samples
//! of the last `monitor.growth_window`) and the time until the limit is reached at that rate,
//! and logs when pressure crosses a `monitor.warning_levels` ratio: a warning going up, a note
//! coming down. It also reads the depth (`LLEN`, `ZCARD`, `XLEN`) of followed queues that
//! are at their limit, written without their size in the reply, or idle (see
//! [`crate::guard::queue`]).
//!
//! Every poll's PING also tells `/readyz` whether Redis can serve ([`crate::health`]): not
//! while it answers `LOADING`, and still when an ACL refuses the proxy's user `INFO` (then
//! memory pressure is unknown, a warning says so, and nothing is shed).
//!
//! A reading can go stale between polls: when a session marks it so (`CONFIG SET`,
//! `FLUSHALL`, a failover passing through the proxy) nothing is shed until the next poll,
//! and a poll that would raise the level on a pressure ten times the last one is read again
//! before it is recorded, so writes are never refused on a reading Redis has already left
//! behind.
//!
//! It connects through the shared [`ConnectGate`], so its reconnects respect the connect rate
//! and circuit breaker like every session's. While Redis cannot be polled, the last level
//! stays in force (commands fail anyway while Redis is unreachable) and
//! `respguard_monitor_up` is 0.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use metrics::{counter, gauge, Counter, Gauge};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::cluster::view::ClusterView;
use crate::config::RawMonitor;
use crate::guard::queue::{QueueDepths, QueueKind};
use crate::health::Upstream;
use crate::pressure::{Level, LimitSource, MemoryPressure};
use crate::upstream::{read_replies, ConnectGate, UpstreamSlot};

/// Most queues whose depth is read again in one poll.
const MAX_REFRESH_PER_POLL: usize = 256;

/// What one poll read from `INFO`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InfoReading {
    /// `used_memory`.
    pub used_memory: u64,
    /// `maxmemory` (0: none).
    pub maxmemory: u64,
    /// `maxmemory_policy`.
    pub policy: String,
    /// `connected_clients`.
    pub connected_clients: u64,
    /// `blocked_clients`.
    pub blocked_clients: u64,
}

impl InfoReading {
    /// Read the fields from `INFO` text (`field:value` lines); missing fields stay 0.
    pub fn parse(text: &str, into: &mut InfoReading) {
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "used_memory" => into.used_memory = v.parse().unwrap_or(0),
                "maxmemory" => into.maxmemory = v.parse().unwrap_or(0),
                "maxmemory_policy" => into.policy = v.to_string(),
                "connected_clients" => into.connected_clients = v.parse().unwrap_or(0),
                "blocked_clients" => into.blocked_clients = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
}

/// Growth of used memory, from samples over a window.
#[derive(Debug)]
pub struct Growth {
    window: Duration,
    every: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Growth {
    /// At most about 120 samples over `window`.
    pub fn new(window: Duration) -> Self {
        Growth {
            window,
            every: window / 120,
            samples: VecDeque::with_capacity(122),
        }
    }

    /// Add a sample taken at `at`.
    pub fn add(&mut self, at: Instant, used: u64) {
        if self
            .samples
            .back()
            .is_some_and(|&(t, _)| at.duration_since(t) < self.every)
        {
            return;
        }
        self.samples.push_back((at, used));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| at.duration_since(t) > self.window)
            || self.samples.len() > 121
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second (least squares over the samples); 0 with fewer than three.
    pub fn rate(&self) -> f64 {
        if self.samples.len() < 3 {
            return 0.0;
        }
        let t0 = self.samples[0].0;
        let n = self.samples.len() as f64;
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for &(t, y) in &self.samples {
            let x = t.duration_since(t0).as_secs_f64();
            let y = y as f64;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let d = n * sxx - sx * sx;
        if d <= 0.0 {
            return 0.0;
        }
        (n * sxy - sx * sy) / d
    }

    /// Seconds until `used` reaches `limit` at the current rate, or `None` when memory is
    /// not growing or there is no limit.
    pub fn seconds_until(&self, used: u64, limit: u64) -> Option<f64> {
        let rate = self.rate();
        (limit > 0 && rate > 0.0).then(|| limit.saturating_sub(used) as f64 / rate)
    }
}

struct MonitorMetrics {
    used: Gauge,
    limit: Gauge,
    pressure: Gauge,
    growth: Gauge,
    until_full: Gauge,
    level: Gauge,
    transitions: Counter,
    clients: Gauge,
    blocked: Gauge,
    up: Gauge,
    tracked_queues: Gauge,
}

impl MonitorMetrics {
    fn register() -> Self {
        MonitorMetrics {
            used: gauge!("respguard_upstream_memory_used_bytes"),
            limit: gauge!("respguard_upstream_memory_limit_bytes"),
            pressure: gauge!("respguard_upstream_memory_pressure_ratio"),
            growth: gauge!("respguard_upstream_memory_growth_bytes_per_second"),
            until_full: gauge!("respguard_upstream_memory_seconds_until_full"),
            level: gauge!("respguard_shedding_level"),
            transitions: counter!("respguard_shedding_transitions_total"),
            clients: gauge!("respguard_upstream_clients_connected"),
            blocked: gauge!("respguard_upstream_clients_blocked"),
            up: gauge!("respguard_monitor_up"),
            tracked_queues: gauge!("respguard_queues_tracked"),
        }
    }
}

/// Everything the monitor needs.
pub struct Monitor {
    /// Where `/readyz` reads whether Redis answers.
    pub health: Arc<crate::health::UpstreamHealth>,
    /// The gate to connect through.
    pub gate: Arc<ConnectGate>,
    /// With a `redis-cluster://` upstream: the cluster, reached through a router of the
    /// monitor's own so that each queue's depth is read on its node (memory is read from
    /// the node the router's keyless commands go to: one primary).
    pub cluster: Option<Arc<crate::cluster::ClusterUpstream>>,
    /// Where the readings go.
    pub pressure: Arc<MemoryPressure>,
    /// Queues to refresh.
    pub queues: Arc<QueueDepths>,
    /// `[monitor]`.
    pub settings: RawMonitor,
    /// `guards.shed.with_eviction`.
    pub shed_with_eviction: bool,
    /// Longest wait for a reply.
    pub timeout: Duration,
}

/// What the monitor remembers between polls, for its logs.
struct Remembered {
    pressure: f64,
    limit_note: Option<String>,
}

impl Monitor {
    /// Poll until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let metrics = MonitorMetrics::register();
        let mut growth = Growth::new(self.settings.growth_window.0);
        let mut conn: Option<(crate::transport::Stream, UpstreamSlot)> = None;
        let mut levels = self.settings.warning_levels.clone();
        levels.sort_by(|a, b| a.total_cmp(b));
        let mut remembered = Remembered {
            pressure: 0.0,
            limit_note: None,
        };
        let mut shards = ShardMemory::default();
        let mut ticker = tokio::time::interval(self.settings.interval.0);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            if conn.is_none() {
                conn = match &self.cluster {
                    Some(cluster) => cluster
                        .connect_to_primaries(([127, 0, 0, 1], 0).into())
                        .ok(),
                    None => self.gate.connect().await.ok(),
                };
            }
            let Some((stream, _)) = conn.as_mut() else {
                metrics.up.set(0.0);
                self.health.set(Upstream::Silent);
                continue;
            };
            match tokio::time::timeout(self.timeout, self.poll_confirmed(stream)).await {
                Ok(Ok((polled, covers))) => {
                    // PING decides readiness: INFO still answers while Redis is LOADING.
                    self.health.set(polled.upstream);
                    let info = match (&self.cluster, polled.info) {
                        (Some(cluster), Ok(info)) => {
                            Ok(shards.poll(cluster.view(), &self).await.unwrap_or(info))
                        }
                        (_, info) => info,
                    };
                    match info {
                        Ok(info) => {
                            metrics.up.set(1.0);
                            let seen = &mut remembered;
                            self.apply(&info, covers, &metrics, &mut growth, &levels, seen);
                        }
                        Err(refused) => {
                            metrics.up.set(0.0);
                            let note = format!("Redis refused INFO ({refused}): memory pressure is unknown and writes are never shed; give the proxy's user +info");
                            if remembered.limit_note.as_deref() != Some(note.as_str()) {
                                tracing::warn!("{note}");
                                remembered.limit_note = Some(note);
                            }
                            self.pressure
                                .record_poll(0, 0, LimitSource::MaxMemory, false, covers);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "memory poll failed");
                    metrics.up.set(0.0);
                    self.health.set(Upstream::Silent);
                    conn = None;
                    continue;
                }
                Err(_) => {
                    metrics.up.set(0.0);
                    self.health.set(Upstream::Silent);
                    conn = None;
                    continue;
                }
            }
            let due = self.queues.due_for_refresh(MAX_REFRESH_PER_POLL);
            if !due.is_empty() {
                let (stream, _) = conn.as_mut().expect("connected");
                let refreshed =
                    tokio::time::timeout(self.timeout, refresh_queues(stream, &self.queues, &due))
                        .await;
                if !matches!(refreshed, Ok(Ok(()))) {
                    conn = None;
                }
            }
            metrics.tracked_queues.set(self.queues.len() as f64);
            for (rule, depth) in self.queues.deepest_by_rule() {
                gauge!("respguard_queue_depth", "rule" => rule.to_string()).set(depth as f64);
            }
        }
    }

    /// One poll, and at once a second one when the first would raise the level on a jump
    /// of an order of magnitude ([`MemoryPressure::needs_confirmation`]); with the stale
    /// marks the recorded poll covers.
    async fn poll_confirmed(
        &self,
        stream: &mut crate::transport::Stream,
    ) -> std::io::Result<(Poll, u64)> {
        let covers = self.pressure.marks();
        let polled = poll(stream).await?;
        let Ok(info) = &polled.info else {
            return Ok((polled, covers));
        };
        let (limit, _, enabled) = self.limit_of(info);
        if !self
            .pressure
            .needs_confirmation(info.used_memory, limit, enabled)
        {
            return Ok((polled, covers));
        }
        tracing::debug!("memory reading jumped: reading it again");
        let covers = self.pressure.marks();
        Ok((poll(stream).await?, covers))
    }

    /// The limit pressure is measured against, where it comes from, and whether shedding
    /// applies (not when Redis evicts at its limit, unless `with_eviction`).
    fn limit_of(&self, info: &InfoReading) -> (u64, LimitSource, bool) {
        let (limit, source) = if info.maxmemory > 0 {
            (info.maxmemory, LimitSource::MaxMemory)
        } else {
            (self.settings.memory_budget.0, LimitSource::Budget)
        };
        let evicts = info.policy.starts_with("allkeys-");
        (limit, source, !evicts || self.shed_with_eviction)
    }

    fn apply(
        &self,
        info: &InfoReading,
        covers: u64,
        metrics: &MonitorMetrics,
        growth: &mut Growth,
        warning_levels: &[f64],
        remembered: &mut Remembered,
    ) {
        let (limit, source, enabled) = self.limit_of(info);
        let note = if limit == 0 {
            Some("Redis has no maxmemory and monitor.memory_budget is not set: memory pressure is unknown and writes are never shed".to_string())
        } else if !enabled {
            Some(format!("maxmemory-policy is {}: Redis evicts keys at its limit, so writes are not shed (set guards.shed.with_eviction to shed anyway)", info.policy))
        } else {
            None
        };
        if note != remembered.limit_note {
            if let Some(n) = &note {
                tracing::warn!("{n}");
            }
            remembered.limit_note = note;
        }
        let (before, after) =
            self.pressure
                .record_poll(info.used_memory, limit, source, enabled, covers);
        let now = Instant::now();
        growth.add(now, info.used_memory);
        let rate = growth.rate();
        let until_full = growth.seconds_until(info.used_memory, limit);
        let pressure = if limit > 0 {
            info.used_memory as f64 / limit as f64
        } else {
            0.0
        };
        metrics.used.set(info.used_memory as f64);
        metrics.limit.set(limit as f64);
        metrics.pressure.set(pressure);
        metrics.growth.set(rate);
        metrics.until_full.set(until_full.unwrap_or(-1.0));
        metrics.level.set(after as u8 as f64);
        metrics.clients.set(info.connected_clients as f64);
        metrics.blocked.set(info.blocked_clients as f64);
        let describe = || {
            let until = match until_full {
                Some(s) => format!(
                    ", full in {} at {}/s",
                    humantime::format_duration(Duration::from_secs(s as u64)),
                    human_bytes(rate as u64)
                ),
                None => String::new(),
            };
            format!(
                "Redis memory at {:.1}% of {} ({} of {}{until})",
                pressure * 100.0,
                source.name(),
                human_bytes(info.used_memory),
                human_bytes(limit),
            )
        };
        if before != after {
            metrics.transitions.increment(1);
            if after > before {
                tracing::warn!(
                    from = before.name(),
                    to = after.name(),
                    "shedding level raised: {}",
                    describe()
                );
            } else {
                tracing::info!(
                    from = before.name(),
                    to = after.name(),
                    "shedding level lowered: {}",
                    describe()
                );
            }
        }
        if limit > 0 {
            let last = remembered.pressure;
            if let Some(w) = warning_levels
                .iter()
                .rev()
                .find(|&&w| last < w && pressure >= w)
            {
                tracing::warn!(level = w, "memory warning: {}", describe());
            } else if let Some(w) = warning_levels.iter().find(|&&w| last >= w && pressure < w) {
                tracing::info!(
                    level = w,
                    "memory back under a warning level: {}",
                    describe()
                );
            }
            remembered.pressure = pressure;
        }
        if after == Level::Normal && before == Level::Normal {
            tracing::trace!("{}", describe());
        }
    }
}

/// A size for a log line: `8.9MiB`, `1.5GiB`, `512KiB`, `100B`.
fn human_bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size {
            let v = n as f64 / size as f64;
            return if v.fract() == 0.0 {
                format!("{v}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{n}B")
}

/// In front of a Redis Cluster: every primary's memory, read on connections of the
/// monitor's own, each shard's level set on its slots (the shed guard judges a write by
/// the shard holding its keys), and the fullest shard's reading the one the proxy's level,
/// metrics and logs follow.
#[derive(Default)]
struct ShardMemory {
    /// A connection to each primary polled (dropped when it fails).
    conns: HashMap<String, crate::transport::Stream>,
    /// Each primary's level at its last poll, for the thresholds' hysteresis.
    levels: HashMap<String, Level>,
}

impl ShardMemory {
    /// Poll every primary of `view`'s map; the fullest shard's reading, if any answered.
    async fn poll(&mut self, view: &ClusterView, monitor: &Monitor) -> Option<InfoReading> {
        let map = view.map()?;
        let mut fullest: Option<(f64, InfoReading)> = None;
        for (index, shard) in map.shards().iter().enumerate() {
            let Some(info) = self.read(&shard.primary, view, monitor.timeout).await else {
                continue;
            };
            let (limit, _, enabled) = monitor.limit_of(&info);
            let pressure = if limit > 0 && enabled {
                info.used_memory as f64 / limit as f64
            } else {
                0.0
            };
            let before = self
                .levels
                .get(&shard.primary)
                .copied()
                .unwrap_or(Level::Normal);
            let level = monitor.pressure.thresholds().next(before, pressure);
            // One series per primary: bounded by the cluster's size.
            let node = shard.primary.clone();
            gauge!("respguard_shard_memory_pressure", "node" => node.clone()).set(pressure);
            gauge!("respguard_shard_shedding_level", "node" => node).set(level as u8 as f64);
            self.levels.insert(shard.primary.clone(), level);
            monitor
                .pressure
                .set_slot_levels(&map.ranges_of(index), level);
            if fullest.as_ref().is_none_or(|(p, _)| pressure > *p) {
                fullest = Some((pressure, info));
            }
        }
        self.conns
            .retain(|address, _| map.shards().iter().any(|s| &s.primary == address));
        fullest.map(|(_, info)| info)
    }

    /// One primary's INFO, on the connection kept for it (opened when missing).
    async fn read(
        &mut self,
        address: &str,
        view: &ClusterView,
        timeout: Duration,
    ) -> Option<InfoReading> {
        if !self.conns.contains_key(address) {
            let stream = view.gate().open_node(address).await.ok()?;
            self.conns.insert(address.to_string(), stream);
        }
        let stream = self.conns.get_mut(address)?;
        match tokio::time::timeout(timeout, poll(stream)).await {
            Ok(Ok(Poll { info: Ok(info), .. })) => Some(info),
            _ => {
                self.conns.remove(address);
                None
            }
        }
    }
}

/// What one poll got back.
#[derive(Debug)]
struct Poll {
    /// What PING said: `Up` when Redis can serve, `Loading` while it loads its dataset.
    upstream: Upstream,
    /// The INFO fields, or why INFO was refused (an ACL without `+info`, for instance).
    info: Result<InfoReading, String>,
}

/// Send `PING`, `INFO memory` and `INFO clients` in one write and read the three replies.
async fn poll(stream: &mut crate::transport::Stream) -> std::io::Result<Poll> {
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
        .await?;
    let mut replies = read_replies(stream, 3).await?.into_iter();
    let upstream = match replies.next() {
        Some(Ok(_)) => Upstream::Up,
        Some(Err(e)) if e.starts_with("LOADING") => Upstream::Loading,
        _ => Upstream::Silent,
    };
    let mut info = InfoReading::default();
    let mut refused = None;
    for reply in replies {
        match reply {
            Ok(bytes) => InfoReading::parse(&String::from_utf8_lossy(&bytes), &mut info),
            Err(e) => refused = Some(e),
        }
    }
    Ok(Poll {
        upstream,
        info: refused.map_or(Ok(info), Err),
    })
}

/// Read the depth of `due` queues with one pipeline: `LLEN`, `ZCARD` or `XLEN` by the
/// queue's kind, `TYPE` for a key only scripts have written (its depth is read at the next
/// poll).
async fn refresh_queues(
    stream: &mut crate::transport::Stream,
    queues: &QueueDepths,
    due: &[Arc<crate::guard::queue::TrackedQueue>],
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let kinds: Vec<QueueKind> = due.iter().map(|q| q.kind()).collect();
    for (q, kind) in due.iter().zip(&kinds) {
        crate::resp::command(&mut out, &[kind.refresh_command(), &q.key]);
    }
    stream.write_all(&out).await?;
    let replies = read_replies(stream, due.len()).await?;
    for ((q, kind), reply) in due.iter().zip(kinds).zip(replies) {
        // An error (WRONGTYPE: the key changed type) leaves the depth as it was.
        let Ok(bytes) = reply else { continue };
        let text = bytes.strip_suffix(b"\r\n").unwrap_or(&bytes);
        match (kind, text.split_first()) {
            (QueueKind::Unknown | QueueKind::NotAQueue, Some((b'+', name))) => {
                queues.typed(q, QueueKind::of_type_name(name));
            }
            (_, Some((b':', digits))) => {
                if let Some(n) = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|t| t.parse().ok())
                {
                    queues.refreshed(q, n);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read() {
        let mut r = InfoReading::default();
        InfoReading::parse(
            "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:33554432\r\nmaxmemory_policy:noeviction\r\n",
            &mut r,
        );
        InfoReading::parse(
            "# Clients\r\nconnected_clients:7\r\nblocked_clients:2\r\n",
            &mut r,
        );
        assert_eq!(
            r,
            InfoReading {
                used_memory: 1 << 20,
                maxmemory: 32 << 20,
                policy: "noeviction".into(),
                connected_clients: 7,
                blocked_clients: 2,
            }
        );
    }

    #[test]
    fn growth_is_the_slope_and_gives_time_until_full() {
        let mut g = Growth::new(Duration::from_secs(120));
        let t0 = Instant::now();
        for i in 0..10u64 {
            g.add(t0 + Duration::from_secs(i), 1000 + 100 * i);
        }
        assert!((g.rate() - 100.0).abs() < 1e-6, "{}", g.rate());
        let until = g.seconds_until(1900, 2900).unwrap();
        assert!((until - 10.0).abs() < 1e-6, "{until}");
        assert_eq!(g.seconds_until(1900, 0), None);
    }

    #[test]
    fn sizes_in_logs_are_short() {
        assert_eq!(human_bytes(9_295_144), "8.9MiB");
        assert_eq!(human_bytes(16 << 20), "16MiB");
        assert_eq!(human_bytes(100), "100B");
    }

    #[test]
    fn growth_keeps_a_bounded_window() {
        let mut g = Growth::new(Duration::from_secs(120));
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            g.add(t0 + Duration::from_secs(i), i);
        }
        assert!(g.samples.len() <= 121);
        let oldest = g.samples.front().unwrap().0;
        assert!(t0 + Duration::from_secs(10_000 - 122) <= oldest);
    }
}
