//! The `respguard` binary: command-line parsing, logging, signals, printing. Everything
//! else is in the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use respguard::config::{ConfigSource, Overrides, RawConfig};

/// A Redis-protocol guarding proxy.
#[derive(Parser, Debug)]
#[command(name = "respguard", version, about)]
struct Cli {
    /// Configuration file (TOML); every key has a default.
    #[arg(long, short, env = "RESPGUARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address clients connect to (overrides proxy.listen).
    #[arg(long, env = "RESPGUARD_LISTEN")]
    listen: Option<String>,
    /// Redis URL, redis://[user:password@]host:port[/db], or behind Sentinel
    /// redis-sentinel://[user:password@]host:port[,host:port...][/db]#master, or a Redis
    /// Cluster redis-cluster://[user:password@]host:port[,host:port...]
    /// (overrides upstream.url).
    #[arg(long, env = "RESPGUARD_UPSTREAM")]
    upstream: Option<String>,
    /// Address of the health and metrics listener; empty disables it (overrides admin.listen).
    #[arg(long, env = "RESPGUARD_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Log filter, e.g. info or respguard=debug (overrides log.level).
    #[arg(long, env = "RESPGUARD_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json (overrides log.format).
    #[arg(long, env = "RESPGUARD_LOG_FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Ask a running proxy's admin listener whether it is healthy (exit 0) or not (exit 1);
    /// for container health checks, where no HTTP client is installed.
    HealthProbe {
        /// The admin listener's address.
        #[arg(default_value = "127.0.0.1:9121")]
        admin: String,
        /// The path to ask: /healthz (process up) or /readyz (Redis answering).
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Read an existing Redis safely (SCAN, TYPE, PTTL, MEMORY USAGE on a sample; rate
    /// limited; pausing when Redis is slow) and report its keys per prefix.
    Audit(AuditArgs),
    /// Propose guard rules (TOML, in observe mode) from an audit or a proxy's live report;
    /// nothing is applied.
    Suggest {
        /// A report written by `respguard audit --json`.
        #[arg(
            long,
            conflicts_with = "from_proxy",
            required_unless_present = "from_proxy"
        )]
        from_audit: Option<PathBuf>,
        /// A proxy's live keyspace report: a JSON file, or the admin listener's address
        /// (host:port; its /keyspace is fetched).
        #[arg(long)]
        from_proxy: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// The Redis to audit: redis://[user:password@]host:port[/db] or rediss://...
    #[arg(long, env = "RESPGUARD_UPSTREAM")]
    upstream: String,
    /// PEM CA certificates to trust for rediss:// (default: the system's).
    #[arg(long)]
    tls_ca_file: Option<String>,
    /// PEM client certificate, for a rediss:// server that requires one.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<String>,
    /// The key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<String>,
    /// The COUNT of each SCAN.
    #[arg(long, default_value_t = 500)]
    scan_count: u32,
    /// MEMORY USAGE for one key in N per prefix (1: every key; 0: none).
    #[arg(long, default_value_t = 10)]
    memory_sample: u32,
    /// Commands per second at most (0: no limit).
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// A round trip slower than this (ms) pauses the audit.
    #[arg(long, default_value_t = 50)]
    slow_ms: u64,
    /// The first pause (ms) after a slow round trip; it doubles while Redis stays slow.
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// Most prefixes tracked; keys of further prefixes are counted as (other).
    #[arg(long, default_value_t = 10_000)]
    max_prefixes: usize,
    /// Stop after about this many keys (0: all).
    #[arg(long, default_value_t = 0)]
    max_keys: u64,
    /// Bytes that separate key segments.
    #[arg(long, default_value = ":")]
    separators: String,
    /// Most segments a prefix keeps.
    #[arg(long, default_value_t = 3)]
    max_depth: usize,
    /// Print the report as JSON (for `respguard suggest --from-audit`).
    #[arg(long)]
    json: bool,
}

impl Cli {
    /// The values given on the command line or in the environment.
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            admin_listen: self.admin_listen.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
        }
    }

    /// The file's configuration with the command line and environment applied on top.
    fn raw_config(&self, file: Option<&PathBuf>) -> anyhow::Result<RawConfig> {
        let mut raw = match file {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        self.overrides().apply(&mut raw);
        Ok(raw)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        let raw = cli.raw_config(Some(file))?;
        let text = raw.to_toml();
        let notes = raw
            .validate()
            .and_then(|config| respguard::app::check(&config))
            .with_context(|| format!("{} is not valid", file.display()))?;
        // Notes as TOML comments, so the output stays a configuration file.
        let notes: String = notes.iter().map(|n| format!("# note: {n}\n")).collect();
        // A reader that stops early (`check-config FILE | head`) is not an error.
        let shown = writeln!(
            std::io::stdout(),
            "# {} is valid\n{notes}# effective configuration:\n{text}",
            file.display()
        );
        return match shown {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        };
    }
    if let Some(Command::HealthProbe { admin, path }) = &cli.command {
        return health_probe(admin, path);
    }
    if let Some(Command::Audit(args)) = &cli.command {
        return audit(args);
    }
    if let Some(Command::Suggest {
        from_audit,
        from_proxy,
    }) = &cli.command
    {
        return suggest(from_audit.as_deref(), from_proxy.as_deref());
    }
    let mut config = cli
        .raw_config(cli.config.as_ref())?
        .validate()
        .context("invalid configuration")?;
    config.source = cli.config.clone().map(|path| ConfigSource {
        path,
        overrides: cli.overrides(),
    });
    init_logging(&config.raw.log.level, &config.raw.log.format);
    // Each client costs two descriptors (its socket and its upstream's; multiplexed, one,
    // the shared connections being few): raise the soft limit to the hard one, as Redis
    // does, and serve no more clients than it allows, so a client over the limit gets the
    // clear max-clients error instead of accept or connect failing with "too many open
    // files" (which would also trip the upstream circuit).
    // Behind Sentinel the gate keeps a duplicate of each upstream socket (so that a
    // failover can shut them down): one more per client.
    let per_client = match config.raw.upstream.connections {
        respguard::config::ConnectionModel::PerClient => 2,
        respguard::config::ConnectionModel::Multiplexed => 1,
    } + u64::from(config.upstream.sentinel.is_some());
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let fits = clients_within(limit, per_client);
            if fits < config.max_clients {
                tracing::warn!(
                    open_file_limit = limit,
                    max_clients = config.raw.proxy.max_clients,
                    serving = fits,
                    "the open-file limit is too low for proxy.max_clients; serving fewer clients (raise it with ulimit -n or LimitNOFILE)"
                );
                config.max_clients = fits;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let runtime = respguard::runtime::build(&config.raw.proxy)?;
    runtime.block_on(async {
        let proxy = respguard::app::start(config).await?;
        let control = std::sync::Arc::clone(&proxy.control);
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .expect("SIGHUP handler");
            while hangup.recv().await.is_some() {
                // The outcome is logged by the reload itself.
                let _ = control.reload("SIGHUP");
            }
        });
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections");
        proxy.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn health_probe(admin: &str, path: &str) -> anyhow::Result<()> {
    let timeout = std::time::Duration::from_secs(2);
    let answer = respguard::http_get::get(admin, path, timeout, 1 << 20)?;
    anyhow::ensure!(answer.is_ok(), "{path}: {}", answer.status);
    Ok(())
}

fn audit(args: &AuditArgs) -> anyhow::Result<()> {
    use respguard::keyspace::audit;
    use std::io::IsTerminal;
    use std::time::Duration;
    let target = respguard::config::UpstreamTarget::parse(&args.upstream)?;
    anyhow::ensure!(
        target.sentinel.is_none(),
        "audit reads one node: give it the node's redis:// URL, not a Sentinel URL"
    );
    let tls = if target.tls {
        let files = respguard::transport::ClientTlsFiles {
            ca_file: args.tls_ca_file.clone(),
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_key_file.clone(),
        };
        Some(respguard::config::UpstreamTls {
            connector: respguard::transport::connector(&files).map_err(anyhow::Error::msg)?,
            server_name: Some(
                respguard::transport::server_name(&target.host).map_err(anyhow::Error::msg)?,
            ),
        })
    } else {
        None
    };
    let mut options = audit::AuditOptions::new(target);
    options.tls = tls;
    options.scan_count = args.scan_count;
    options.memory_sample = args.memory_sample;
    options.pace.max_commands_per_second = args.rate;
    options.pace.slow_round_trip = Duration::from_millis(args.slow_ms);
    options.pace.pause = Duration::from_millis(args.pause_ms);
    options.max_prefixes = args.max_prefixes;
    options.max_keys = args.max_keys;
    options.prefixes.separators = args.separators.clone();
    options.prefixes.max_depth = args.max_depth;
    let on_terminal = std::io::stderr().is_terminal();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(audit::run(&options, |p| {
        if on_terminal {
            eprint!(
                "\r\x1b[2K{} of ~{} keys, {} prefixes, {:.0} s, {} pauses",
                p.keys,
                p.dbsize,
                p.prefixes,
                p.elapsed.as_secs_f64(),
                p.pauses
            );
        }
    }));
    if on_terminal {
        eprintln!();
    }
    let report = report.context("audit failed")?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)?
    } else {
        report.table()
    };
    print_out(&text)
}

fn suggest(from_audit: Option<&std::path::Path>, from_proxy: Option<&str>) -> anyhow::Result<()> {
    use respguard::keyspace::suggest;
    let (observations, source) = match (from_audit, from_proxy) {
        (Some(path), _) => (
            suggest::observe_audit(&suggest::load_audit(path)?),
            format!("the audit {}", path.display()),
        ),
        (None, Some(proxy)) => (
            suggest::observe_live(&suggest::load_live(proxy)?),
            format!("the live report of {proxy}"),
        ),
        (None, None) => anyhow::bail!("give --from-audit FILE or --from-proxy ADDRESS_OR_FILE"),
    };
    print_out(&suggest::to_toml(&suggest::propose(&observations), &source))
}

/// Print to stdout; a reader that stops early (`... | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    match writeln!(std::io::stdout(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::new(level);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Descriptors kept for everything but clients: listeners, the monitor's and health
/// check's connections, admin requests, the runtime's own, logs.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How many clients fit in `open_file_limit` descriptors, `per_client` each.
fn clients_within(open_file_limit: u64, per_client: u64) -> usize {
    (open_file_limit.saturating_sub(RESERVED_DESCRIPTORS) / per_client).max(1) as usize
}
