//! `wasmshop up`: flags named like `spin up`'s, each also settable from the
//! environment so a container needs no command line.

use crate::app::{App, AppOptions};
use crate::backends::BackendArgs;
use crate::engine::EngineLimits;
use crate::manifest::AppManifest;
use crate::metrics::Metrics;
use crate::runtime_config::RuntimeConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code for invalid input (manifest, runtime config, flags), as clap uses.
pub const EXIT_INVALID_INPUT: i32 = 2;

/// The WasmShop host.
#[derive(Debug, Parser)]
#[command(
    name = "wasmshop",
    version,
    about = "Runs WasmShop's WebAssembly service components (a Spin manifest) on wasmtime"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the application described by a Spin manifest.
    Up(UpArgs),
    /// Print the messages the embedded backend holds for a topic, e.g. the
    /// dead letters of `products` (`--topic products.deadletter`).
    Messages(MessagesArgs),
}

/// Flags of `wasmshop messages`.
#[derive(Debug, Clone, Args)]
pub struct MessagesArgs {
    /// The data directory of the host (as given to `up`).
    #[arg(long, env = "WASMSHOP_DATA_DIR", default_value = ".wasmshop")]
    pub data_dir: PathBuf,
    /// The topic to list.
    #[arg(long)]
    pub topic: String,
}

/// Prints one JSON object per stored message of a topic. This is a tool
/// of the embedded backend, whose queue it reads.
pub async fn messages(args: MessagesArgs) -> Result<(), ExitError> {
    use crate::backends::embedded;
    if !args.data_dir.join("wasmshop.db").exists() {
        return Err(ExitError::input(format!(
            "{} holds no embedded database; pass the --data-dir the host runs with",
            args.data_dir.display()
        )));
    }
    let db = embedded::EmbeddedDb::open(&args.data_dir).map_err(ExitError::runtime)?;
    let stored = embedded::stored_messages(&db, &args.topic)
        .await
        .map_err(ExitError::runtime)?;
    for (seq, m) in stored {
        let line = serde_json::json!({
            "seq": seq,
            "topic": args.topic,
            "contentType": m.content_type,
            "metadata": m.metadata,
            "data": String::from_utf8_lossy(&m.data),
        });
        println!("{line}");
    }
    Ok(())
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines when stderr is not a terminal, text otherwise.
    Auto,
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// Flags of `wasmshop up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// The application manifest (Spin manifest v2). Component sources are
    /// resolved relative to it.
    #[arg(
        short = 'f',
        long = "from",
        env = "WASMSHOP_FROM",
        default_value = "spin.toml"
    )]
    pub from: PathBuf,

    /// Address to serve HTTP on (port 0 picks a free port, printed at start-up).
    #[arg(long, env = "WASMSHOP_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: String,

    /// Runtime config file choosing the backend of each key-value store
    /// label and messaging client (embedded, redis, dapr). Without it,
    /// everything uses the embedded backend.
    #[arg(long, env = "WASMSHOP_RUNTIME_CONFIG_FILE")]
    pub runtime_config_file: Option<PathBuf>,

    /// Run only these components (repeat, or comma-separate in the
    /// environment variable); the default is all of them. One service per
    /// container: `--component-id product`.
    #[arg(
        short = 'c',
        long = "component-id",
        env = "WASMSHOP_COMPONENT_ID",
        value_delimiter = ','
    )]
    pub component_id: Vec<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
    #[arg(long, env = "WASMSHOP_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Directory of the embedded database and the compiled-component cache
    /// [default: .wasmshop next to the manifest].
    #[arg(long, env = "WASMSHOP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Wall-clock limit of one request or delivery, in seconds; a component
    /// still running then is stopped and the client gets a 503.
    #[arg(long, env = "WASMSHOP_REQUEST_TIMEOUT_SECS", default_value_t = 30.0)]
    pub request_timeout_secs: f64,

    /// Linear memory one instance may use, in MiB; past it the request fails
    /// with a 500 and the host carries on.
    #[arg(long, env = "WASMSHOP_MAX_MEMORY_MB", default_value_t = 128)]
    pub max_memory_mb: usize,

    /// Instances alive at once (concurrent requests plus deliveries).
    #[arg(long, env = "WASMSHOP_MAX_INSTANCES", default_value_t = 1000)]
    pub max_instances: u32,

    /// On SIGTERM/SIGINT, how long in-flight requests and deliveries may
    /// still run, in seconds.
    #[arg(long, env = "WASMSHOP_SHUTDOWN_GRACE_SECS", default_value_t = 10.0)]
    pub shutdown_grace_secs: f64,

    /// The backends' own flags (`--dapr-*`).
    #[command(flatten)]
    pub backends: BackendArgs,

    /// Log format.
    #[arg(long, env = "WASMSHOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// Why `wasmshop` exits early, and the exit code it deserves.
#[derive(Debug)]
pub struct ExitError {
    /// The process exit code.
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

impl ExitError {
    fn input(message: impl ToString) -> Self {
        ExitError {
            code: EXIT_INVALID_INPUT,
            message: message.to_string(),
        }
    }
    fn runtime(message: impl ToString) -> Self {
        ExitError {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Runs `wasmshop up` until SIGTERM/SIGINT.
pub async fn up(args: UpArgs) -> Result<(), ExitError> {
    let started = Instant::now();
    let manifest = AppManifest::load(&args.from).map_err(ExitError::input)?;
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path).map_err(ExitError::input)?,
        None => RuntimeConfig::default(),
    };
    let valid_timeout = args.request_timeout_secs.is_finite() && args.request_timeout_secs > 0.0;
    let valid_grace = args.shutdown_grace_secs.is_finite() && args.shutdown_grace_secs >= 0.0;
    if !valid_timeout || !valid_grace {
        return Err(ExitError::input(
            "--request-timeout-secs must be positive and --shutdown-grace-secs not negative",
        ));
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| manifest.dir.join(".wasmshop"));
    let metrics = Arc::new(Metrics::default());
    let options = AppOptions {
        manifest,
        runtime_config,
        component_ids: args.component_id.clone(),
        data_dir,
        limits: EngineLimits {
            max_memory_bytes: args.max_memory_mb.max(1) << 20,
            max_instances: args.max_instances.max(1),
        },
        request_timeout: Duration::from_secs_f64(args.request_timeout_secs),
        backend_args: args.backends.clone(),
    };
    let app = App::load(options, metrics.clone())
        .await
        .map_err(|e| ExitError::runtime(format!("{e:#}")))?;
    for (component, outcome, took) in app.cache_report() {
        tracing::info!(
            component,
            ?outcome,
            took_ms = took.as_millis() as u64,
            "component loaded"
        );
    }

    // Backends that must answer before we listen (the Dapr sidecar).
    app.backends()
        .wait_until_ready()
        .await
        .map_err(ExitError::runtime)?;

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| {
            ExitError::runtime(format!(
                "cannot listen on {} ({e}); choose another address with --listen",
                args.listen
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ExitError::runtime(format!("cannot read the listening address: {e}")))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let grace = Duration::from_secs_f64(args.shutdown_grace_secs);

    let mut tasks = Vec::new();
    if let Some(metrics_addr) = &args.metrics_listen {
        let l = tokio::net::TcpListener::bind(metrics_addr).await.map_err(|e| {
            ExitError::runtime(format!("cannot listen on {metrics_addr} for metrics ({e}); choose another --metrics-listen"))
        })?;
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving metrics at /metrics");
        tasks.push(tokio::spawn(crate::trigger::http::serve_metrics(
            metrics.clone(),
            l,
            stopped.clone(),
        )));
    }
    tasks.extend(
        crate::trigger::messaging::start(&app, stopped.clone(), grace)
            .map_err(ExitError::runtime)?,
    );
    let server = tokio::spawn(crate::trigger::http::serve(
        app.clone(),
        listener,
        stopped.clone(),
        grace,
    ));

    // The two lines tests and people look for, as `spin up` prints them.
    println!("Serving http://{addr}");
    println!("Available Routes:");
    for (route, component) in app.router().routes() {
        println!("  {component}: http://{addr}{}", route.as_str());
    }
    tracing::info!(address = %addr, startup_ms = started.elapsed().as_millis() as u64, "ready");

    wait_for_signal().await;
    tracing::info!("shutting down: no new requests; finishing those in flight (up to {grace:?})");
    let _ = stop.send(true);
    let _ = server.await;
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_flags_of_every_backend_fit_together() {
        Cli::command().debug_assert();
    }
}
