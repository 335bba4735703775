//! Starting and stopping a whole proxy: the pieces wired together from a [`Config`].
//!
//! The binary calls this, and so do the integration tests, which start proxies in-process
//! on port 0 and stop them through the returned [`ProxyHandle`].
//!
//! What a validated [`Config`] names but does not hold is built here: TLS from the PEM
//! files ([`Tls`]), and the policy (through [`Policy::build`], the one path from
//! configuration to guards). [`check`] builds both without serving, for `check-config`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState, KeyspaceSource};
use crate::admission::Admission;
use crate::cluster::read_rules::ReadRules;
use crate::cluster::shared::SharedSettings;
use crate::cluster::view::ClusterView;
use crate::cluster::ClusterUpstream;
use crate::command::{CommandTable, TableSource};
use crate::config::{Config, ConfigError, ConnectionModel, ListenerTls, RuntimeModel, UpstreamTls};
use crate::control::{Control, Policy, StatusSources};
use crate::guard::queue::QueueDepths;
use crate::guard::GuardContext;
use crate::health::UpstreamHealth;
use crate::listener::Intake;
use crate::monitor::Monitor;
use crate::mux::threads::LanesPerThread;
use crate::mux::{MuxSettings, UnreadLimit};
use crate::pressure::MemoryPressure;
use crate::runtime::{self, Serving};
use crate::sentinel::SentinelWatcher;
use crate::session::Shared;
use crate::shutdown::ShutdownSignal;
use crate::telemetry::CommandLatency;
use crate::telemetry::ProxyMetrics;
use crate::upstream::{read_replies, ConnectGate, GateSettings};
use tokio::sync::Semaphore;

/// A running proxy.
pub struct ProxyHandle {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where the admin HTTP listener is, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The command table in use.
    pub table: Arc<CommandTable>,
    /// Redis memory pressure as the monitor and the shed guard see it.
    pub pressure: Arc<MemoryPressure>,
    /// Depths of the queues the queue guard follows.
    pub queues: Arc<QueueDepths>,
    /// The control plane: reloads (`Control::reload`, which the binary calls on SIGHUP),
    /// status.
    pub control: Arc<Control>,
    /// The gate every upstream connection goes through (its address: the primary in use).
    pub gate: Arc<ConnectGate>,
    shutdown: watch::Sender<bool>,
    serving: Serving,
}

impl ProxyHandle {
    /// Stop accepting, let sessions finish within the drain timeout, and return when done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.serving.stopped().await;
    }
}

/// TLS for both sides, built from the PEM files the configuration names.
#[derive(Debug, Default)]
pub struct Tls {
    /// TLS to the upstream (`rediss://`).
    pub upstream: Option<UpstreamTls>,
    /// TLS for clients (`[proxy.tls]`).
    pub listener: Option<ListenerTls>,
}

impl Tls {
    /// Read the certificates and keys `config` names; an error names the setting.
    pub fn build(config: &Config) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let file = |f: &String| (!f.is_empty()).then(|| f.clone());
        let upstream = if config.upstream.tls {
            let t = &config.raw.upstream.tls;
            let connector = crate::transport::connector(&crate::transport::ClientTlsFiles {
                ca_file: file(&t.ca_file),
                cert_file: file(&t.cert_file),
                key_file: file(&t.key_file),
            })
            .map_err(|e| invalid("upstream.tls", e))?;
            let name = match t.server_name.as_str() {
                // Behind Sentinel: the host of the primary found, at each connection.
                "" if config.upstream.sentinel.is_some() => None,
                "" => Some(config.upstream.host.as_str()),
                name => Some(name),
            };
            let server_name = name
                .map(crate::transport::server_name)
                .transpose()
                .map_err(|e| invalid("upstream.tls.server_name", e))?;
            Some(UpstreamTls {
                connector,
                server_name,
            })
        } else {
            None
        };
        // `validate` has checked that both files are given, or neither.
        let t = &config.raw.proxy.tls;
        let listener = if t.cert_file.is_empty() {
            None
        } else {
            let files = crate::transport::ServerTlsFiles {
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
                client_ca_file: file(&t.client_ca_file),
            };
            let acceptor =
                crate::transport::acceptor(&files).map_err(|e| invalid("proxy.tls", e))?;
            Some(ListenerTls(acceptor))
        };
        Ok(Tls { upstream, listener })
    }
}

/// Build what [`start`] builds from `config` before serving (TLS, and the policy against
/// the built-in command table), and serve nothing: every error `start` would give before
/// it connects. `respguard check-config` runs this, and prints the notes it returns: what
/// the rules leave alone that their author may not expect (the warnings a start logs).
pub fn check(config: &Config) -> Result<Vec<String>, ConfigError> {
    Tls::build(config)?;
    let raw = &config.raw;
    let table = CommandTable::builtin();
    Policy::build(raw, &table, &GuardContext::new(&raw.guards))?;
    Ok(crate::guard::ttl::library_notes(&raw.guards.ttl))
}

/// The process's Prometheus recorder, installed once.
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

/// Start a proxy: bind its listeners, load the command table, and serve.
pub async fn start(config: Config) -> anyhow::Result<ProxyHandle> {
    let raw = &config.raw;
    let tls = Tls::build(&config)?;
    let prometheus = if raw.admin.metrics {
        prometheus()
    } else {
        None
    };
    let metrics = ProxyMetrics::register();
    let gate = Arc::new(ConnectGate::new(
        config.upstream.clone(),
        GateSettings {
            connect_timeout: raw.upstream.connect_timeout.0,
            backoff_min: raw.upstream.backoff_min.0,
            backoff_max: raw.upstream.backoff_max.0,
            max_connects_per_second: raw.upstream.max_connects_per_second,
            max_connections: raw.upstream.max_connections,
            tls: tls.upstream,
        },
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let read_rules = ReadRules::new(&raw.upstream.read_from);
    // Behind Sentinel with rules reading from replicas: the primary and its replicas as
    // one shard, routed as a cluster's (`cluster`), published by the watcher.
    let replica_view = (config.upstream.sentinel.is_some() && !read_rules.is_empty())
        .then(|| Arc::new(ClusterView::replicated(Arc::new(gate.for_nodes()))));
    if let Some(sentinels) = &config.upstream.sentinel {
        // Find the primary before anything connects; without one the proxy still starts
        // (clients get the reason, `/readyz` says not ready) and the watcher keeps asking.
        let password = Some(raw.upstream.sentinel_password.clone()).filter(|p| !p.is_empty());
        let mut watcher = SentinelWatcher::new(
            Arc::clone(&gate),
            sentinels.clone(),
            password,
            raw.upstream.connect_timeout.0,
        );
        if let Some(view) = &replica_view {
            watcher = watcher.with_replica_view(Arc::clone(view));
        }
        let _ = watcher.discover().await;
        tokio::spawn(watcher.run(shutdown_rx.clone()));
    }
    let table = Arc::new(load_command_table(&gate, config.command_table_from_upstream).await);
    let reply_timeout = Some(raw.upstream.reply_timeout.0).filter(|t| !t.is_zero());
    // How much a client may leave unread: on a lane, and monitoring through a cluster.
    let unread = UnreadLimit {
        soft: raw.proxy.output_buffer.0 as usize,
        hard: raw.proxy.output_buffer_hard.0 as usize,
        soft_time: raw.proxy.output_buffer_soft_time.0,
    };
    let view = match (&config.upstream.cluster, replica_view) {
        (Some(target), _) => {
            // Read the topology before clients come; without it the proxy still starts
            // (clients get the reason, `/readyz` says not ready) and the view keeps asking.
            let view = Arc::new(ClusterView::new(Arc::clone(&gate), target.seeds.clone()));
            view.read_once().await;
            tokio::spawn(Arc::clone(&view).run(shutdown_rx.clone()));
            Some(view)
        }
        (None, replicated) => replicated,
    };
    let cluster = view.map(|view| {
        let shared =
            (raw.upstream.connections == ConnectionModel::Multiplexed).then_some(SharedSettings {
                per_node: raw.upstream.shared_connections,
                identities: raw.upstream.shared_identities,
                unread_hard: raw.proxy.output_buffer_hard.0 as usize,
                handshake_timeout: raw.upstream.connect_timeout.0,
                reply_timeout,
                pinned: raw.upstream.pinned_connections,
                pinned_idle: raw.upstream.pinned_idle,
            });
        Arc::new(
            ClusterUpstream::new(view, Arc::clone(&table), read_rules, shared, reply_timeout)
                .with_output_limit(unread),
        )
    });
    let context = GuardContext::new(&raw.guards);
    let latency = raw
        .admin
        .metrics
        .then(|| Arc::new(CommandLatency::new(&table)));
    let health = Arc::new(UpstreamHealth::default());
    let client_slots = Arc::new(Semaphore::new(config.max_clients));
    let mut control = Control::new(
        raw.clone(),
        config.source.clone(),
        Arc::clone(&table),
        context.clone(),
        StatusSources {
            gate: Arc::clone(&gate),
            health: Arc::clone(&health),
            client_slots: Arc::clone(&client_slots),
            max_clients: config.max_clients,
            latency: latency.clone(),
        },
    )?;
    if let Some(cluster) = &cluster {
        control = control.with_read_rules(Arc::clone(cluster.read_rules()));
    }
    let control = Arc::new(control);

    tokio::spawn(
        Monitor {
            health: Arc::clone(&health),
            gate: Arc::clone(&gate),
            // Behind Sentinel memory and queues are the primary's, read through the gate.
            cluster: cluster.clone().filter(|c| c.view().is_sharded()),
            pressure: Arc::clone(&context.pressure),
            queues: Arc::clone(&context.queues),
            settings: raw.monitor.clone(),
            shed_with_eviction: raw.guards.shed.with_eviction,
            timeout: raw.upstream.connect_timeout.0.max(Duration::from_secs(1)),
        }
        .run(shutdown_rx.clone()),
    );

    let admin_addr = match config.admin_listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {a} (admin.listen): {e}"))?;
            let bound = l.local_addr()?;
            let state = AdminState {
                prometheus,
                latency: latency.clone(),
                health,
                control: Arc::clone(&control),
                table_source: match table.source() {
                    TableSource::Upstream => "upstream",
                    TableSource::Builtin => "builtin",
                },
                keyspace: control.keyspace_enabled().then(|| {
                    let control = Arc::clone(&control);
                    Arc::new(move || control.keyspace().unwrap_or_default()) as KeyspaceSource
                }),
            };
            tokio::spawn(admin::serve(l, state, shutdown_rx.clone()));
            Some(bound)
        }
        None => None,
    };

    // In front of a cluster each client's router shares node connections instead.
    let multiplexed = raw.upstream.connections == ConnectionModel::Multiplexed;
    let lanes = (multiplexed && cluster.is_none()).then(|| {
        let settings = MuxSettings {
            shared: raw.upstream.shared_connections,
            pinned: raw.upstream.pinned_connections,
            pinned_idle: raw.upstream.pinned_idle,
            identities: raw.upstream.shared_identities,
            pinned_wait: raw.upstream.connect_timeout.0,
            unread,
            reply_timeout,
        };
        // Per-core, each serving thread has its own lanes (mux::threads).
        let threads = match raw.proxy.runtime {
            RuntimeModel::PerCore => runtime::serving_threads(raw.proxy.worker_threads),
            RuntimeModel::MultiThread => 1,
        };
        Arc::new(LanesPerThread::new(
            settings,
            Arc::clone(&gate),
            shutdown_rx.clone(),
            threads,
        ))
    });
    let shared = Arc::new(Shared {
        table: Arc::clone(&table),
        gate: Arc::clone(&gate),
        limits: config.limits,
        max_pending: raw.proxy.max_pending_commands,
        output_buffer: raw.proxy.output_buffer.0 as usize,
        drain_timeout: raw.proxy.drain_timeout.0,
        // In front of a cluster a session's one connection is several: each router applies
        // it to each node link (a silent node fails only what it owes).
        reply_timeout: reply_timeout.filter(|_| cluster.is_none()),
        replication: raw.proxy.replication,
        metrics,
        latency,
        control: Arc::clone(&control),
        lanes,
        cluster,
        shutdown: Arc::new(ShutdownSignal::new()),
    });
    let admission = Admission::new(
        raw.proxy.max_connections_per_second,
        raw.proxy.max_connections_per_second_per_address,
        raw.proxy.max_tracked_addresses,
    );
    let intake = Intake::new(shared, client_slots, admission, tls.listener.map(|t| t.0));
    let serving = runtime::serve(&raw.proxy, config.listen, Arc::new(intake), shutdown_rx)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (proxy.listen): {e}", config.listen))?;
    let addr = serving.addr;
    tracing::info!(
        %addr,
        upstream = %gate.address(),
        ?admin_addr,
        runtime = raw.proxy.runtime.word(),
        "respguard listening"
    );
    Ok(ProxyHandle {
        addr,
        admin_addr,
        table,
        pressure: context.pressure,
        queues: context.queues,
        control,
        gate,
        shutdown,
        serving,
    })
}

/// Read the upstream's `COMMAND` reply, or fall back to the built-in table and say why.
async fn load_command_table(gate: &ConnectGate, from_upstream: bool) -> CommandTable {
    if !from_upstream {
        return CommandTable::builtin();
    }
    let result = async {
        let (mut conn, _slot) = gate.connect().await.map_err(|e| e.to_string())?;
        conn.write_all(b"*1\r\n$7\r\nCOMMAND\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_replies(&mut conn, 1)
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .expect("one reply");
        let bytes = reply.map_err(|e| format!("COMMAND refused: {e}"))?;
        CommandTable::from_command_reply(&bytes, TableSource::Upstream).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(10), result).await {
        Ok(Ok(table)) => {
            tracing::info!(
                commands = table.len(),
                "command table read from the upstream"
            );
            table
        }
        Ok(Err(reason)) => {
            tracing::warn!(%reason, "using the built-in command table (Redis 7.0)");
            CommandTable::builtin()
        }
        Err(_) => {
            tracing::warn!("COMMAND timed out; using the built-in command table (Redis 7.0)");
            CommandTable::builtin()
        }
    }
}
