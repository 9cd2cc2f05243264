//! `wasmshop up`: flags named like `spin up`'s, each also settable from the
//! environment so a container needs no command line.

use crate::app::{App, AppOptions};
use crate::backends::BackendArgs;
use crate::engine::{EngineLimits, Profiler};
use crate::manifest::AppManifest;
use crate::metrics::Metrics;
use crate::runtime_config::RuntimeConfig;
use crate::trigger::http::{FrontDoorLimits, front_door};
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
    /// Run the application described by a Spin manifest (boxed: its
    /// flags make it far larger than the other commands).
    Up(Box<UpArgs>),
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
    // Read-only: a host may be running on this directory (it holds the
    // lock; this takes none and changes nothing).
    let stored =
        embedded::stored_messages(&args.data_dir, &args.topic).map_err(ExitError::runtime)?;
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
    #[arg(long, env = "WASMSHOP_LISTEN", default_value = "127.0.0.1:3000", value_parser = parse_listen)]
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
        value_delimiter = ',',
        value_parser = parse_component_id
    )]
    pub component_id: Vec<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
    /// An empty value (`WASMSHOP_METRICS_LISTEN=` in a template) is off.
    #[arg(long, env = "WASMSHOP_METRICS_LISTEN", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<String>,

    /// Directory of the embedded database and the compiled-component cache
    /// [default: .wasmshop next to the manifest].
    #[arg(long, env = "WASMSHOP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Wall-clock limit of one request or delivery, in seconds (at least
    /// 0.001, at most a day); a component still running then is stopped and
    /// the client gets a 503.
    #[arg(long, env = "WASMSHOP_REQUEST_TIMEOUT_SECS", allow_negative_numbers = true, default_value_t = 30.0, value_parser = parse_request_timeout)]
    pub request_timeout_secs: f64,

    /// Linear memory one instance may use, in MiB (1 to 4096: a 32-bit
    /// WebAssembly memory holds at most 4 GiB); past it the request fails
    /// with a 500 and the host carries on.
    #[arg(long, env = "WASMSHOP_MAX_MEMORY_MB", allow_negative_numbers = true, default_value_t = 128, value_parser = parse_memory_mb)]
    pub max_memory_mb: usize,

    /// Instances alive at once (concurrent requests plus deliveries), 1 to
    /// 10000; past it a request is answered 503 with Retry-After.
    #[arg(long, env = "WASMSHOP_MAX_INSTANCES", allow_negative_numbers = true, default_value_t = 1000, value_parser = parse_instances)]
    pub max_instances: u32,

    /// Lets `perf` name the components' compiled functions: `perfmap`
    /// writes /tmp/perf-<pid>.map (one line per function, at each start);
    /// `none` costs nothing. For profiling only.
    #[arg(long, env = "WASMSHOP_PROFILER", value_enum, default_value_t = Profiler::None)]
    pub profiler: Profiler,

    /// On SIGTERM/SIGINT, how long in-flight requests and deliveries may
    /// still run, in seconds (0 to 3600).
    #[arg(long, env = "WASMSHOP_SHUTDOWN_GRACE_SECS", allow_negative_numbers = true, default_value_t = 10.0, value_parser = parse_grace)]
    pub shutdown_grace_secs: f64,

    /// Seconds a client may take from connecting (or from the first byte
    /// of a request) to the end of the request's headers; then the
    /// connection is closed (at least 0.001, at most 3600).
    #[arg(long, env = "WASMSHOP_HEADER_READ_TIMEOUT_SECS", allow_negative_numbers = true, default_value_t = 10.0, value_parser = parse_hour)]
    pub header_read_timeout_secs: f64,

    /// Seconds a keep-alive connection may sit idle between requests;
    /// longer than the connection pools of the callers (Envoy in Azure
    /// Container Apps keeps idle connections up to an hour), so they close
    /// first (at least 1, at most a day).
    #[arg(long, env = "WASMSHOP_IDLE_TIMEOUT_SECS", allow_negative_numbers = true, default_value_t = 3900.0, value_parser = parse_idle)]
    pub idle_timeout_secs: f64,

    /// Seconds a client may take to send a request body once its headers
    /// are in; then it gets a 408 (at least 0.001, at most 3600).
    #[arg(long, env = "WASMSHOP_BODY_READ_TIMEOUT_SECS", allow_negative_numbers = true, default_value_t = 30.0, value_parser = parse_hour)]
    pub body_read_timeout_secs: f64,

    /// Open client connections at once [default: derived from the
    /// open-files limit, which the host raises to its hard limit at start];
    /// at the cap the oldest connection still sending a request is closed.
    #[arg(long, env = "WASMSHOP_MAX_CONNECTIONS", allow_negative_numbers = true, value_parser = parse_connections)]
    pub max_connections: Option<usize>,

    /// Largest request body in bytes (1 to 1 GiB); larger is a 413 before
    /// any component runs.
    #[arg(long, env = "WASMSHOP_MAX_REQUEST_BODY_BYTES", allow_negative_numbers = true, default_value_t = 4 << 20, value_parser = parse_request_body_bytes)]
    pub max_request_body_bytes: usize,

    /// MiB of request bodies the host buffers at once, across all requests
    /// (1 to 65536); past it a request gets a 503 with Retry-After.
    #[arg(long, env = "WASMSHOP_BODY_BUFFER_MB", allow_negative_numbers = true, default_value_t = 256, value_parser = parse_buffer_mb)]
    pub body_buffer_mb: usize,

    /// Seconds a client may accept no bytes of a response before its
    /// connection is closed (at least 0.001, at most 3600).
    #[arg(long, env = "WASMSHOP_SEND_TIMEOUT_SECS", allow_negative_numbers = true, default_value_t = 30.0, value_parser = parse_hour)]
    pub send_timeout_secs: f64,

    /// Largest response body the host buffers for one response, in bytes
    /// (0 to 1 GiB; 0 streams every response from its instance); a larger
    /// one is streamed, holding its instance while the client reads.
    #[arg(long, env = "WASMSHOP_MAX_RESPONSE_BUFFER_BYTES", allow_negative_numbers = true, default_value_t = 16 << 20, value_parser = parse_response_buffer_bytes)]
    pub max_response_buffer_bytes: usize,

    /// MiB of response bodies the host buffers at once, across all
    /// responses (0 to 65536); past it responses are streamed from their
    /// instances.
    #[arg(long, env = "WASMSHOP_RESPONSE_BUFFER_MB", allow_negative_numbers = true, default_value_t = 256, value_parser = parse_response_buffer_mb)]
    pub response_buffer_mb: usize,

    /// The backends' own flags (`--dapr-*`).
    #[command(flatten)]
    pub backends: BackendArgs,

    /// Log format.
    #[arg(long, env = "WASMSHOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// Largest `--max-memory-mb`: a 32-bit WebAssembly memory holds 4 GiB.
const MAX_MEMORY_MB: u64 = 4096;
/// Largest `--max-instances`: the pooling allocator reserves address space
/// for two memories of up to 4 GiB (plus guard pages) per instance, and
/// 10000 of them already take most of a 47-bit address space.
const MAX_INSTANCES: u64 = 10_000;
/// Largest `--max-connections` (Linux's default `nr_open` is 2^20).
const MAX_CONNECTIONS: u64 = 1 << 20;

/// A number of seconds in `(0, max]` (or `[0, max]` when `zero_ok`), for
/// a clap value parser: a bad value is one line and exit code 2 when the
/// command line is read, never a panic when it is used.
fn parse_secs(text: &str, min: f64, max: f64) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds; give e.g. 30"))?;
    if !secs.is_finite() || secs < min || secs > max {
        return Err(format!(
            "{text} is out of range; give a number of seconds from {min} to {max}"
        ));
    }
    Ok(secs)
}

/// The shortest time limit a flag takes (1 ms): shorter ones cannot be
/// met by any request and are surely typos.
const MIN_LIMIT_SECS: f64 = 0.001;

/// A component id as listed (`product, order` in the environment is two
/// ids): surrounding spaces are dropped, an empty one is refused.
fn parse_component_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.is_empty() {
        return Err(
            "a component id is empty; name components of the manifest, separated by commas".into(),
        );
    }
    Ok(id.to_string())
}

/// `HOST:PORT` (an IPv6 host in brackets), checked when the command line
/// is read so a typo is one line and exit 2, not a failed bind after the
/// components were compiled.
fn parse_listen(text: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "'{text}' is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:3000, 0.0.0.0:8080, [::]:3000)"
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && (host.starts_with('[') == host.ends_with(']'))
        && !host.trim_matches(|c| c == '[' || c == ']').is_empty();
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(text.to_string())
}

/// [`parse_listen`], or empty for off.
fn parse_metrics_listen(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    parse_listen(text)
}

fn parse_request_timeout(text: &str) -> Result<f64, String> {
    parse_secs(text, MIN_LIMIT_SECS, 86_400.0)
}

fn parse_grace(text: &str) -> Result<f64, String> {
    parse_secs(text, 0.0, 3_600.0)
}

fn parse_hour(text: &str) -> Result<f64, String> {
    parse_secs(text, MIN_LIMIT_SECS, 3_600.0)
}

/// The idle keep-alive timeout: at least a second, since a shorter one
/// would race every caller's connection pool (`docs/operations.md`).
fn parse_idle(text: &str) -> Result<f64, String> {
    parse_secs(text, 1.0, 86_400.0)
}

/// A whole number in `min..=max`, for a clap value parser: a negative or
/// too large value says "out of range" like the other flags, rather
/// than the integer parser's "invalid digit".
fn parse_count(text: &str, min: u64, max: u64) -> Result<usize, String> {
    let n: i128 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number; give e.g. {min}"))?;
    if n < i128::from(min) || n > i128::from(max) {
        return Err(format!(
            "{text} is out of range; give a whole number from {min} to {max}"
        ));
    }
    Ok(n as usize)
}

fn parse_instances(text: &str) -> Result<u32, String> {
    parse_count(text, 1, MAX_INSTANCES).map(|n| n as u32)
}

fn parse_connections(text: &str) -> Result<usize, String> {
    parse_count(text, 1, MAX_CONNECTIONS)
}

fn parse_memory_mb(text: &str) -> Result<usize, String> {
    parse_count(text, 1, MAX_MEMORY_MB)
}

fn parse_request_body_bytes(text: &str) -> Result<usize, String> {
    parse_count(text, 1, 1 << 30)
}

fn parse_buffer_mb(text: &str) -> Result<usize, String> {
    parse_count(text, 1, 65_536)
}

fn parse_response_buffer_bytes(text: &str) -> Result<usize, String> {
    parse_count(text, 0, 1 << 30)
}

fn parse_response_buffer_mb(text: &str) -> Result<usize, String> {
    parse_count(text, 0, 65_536)
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

/// Sets up logging to stderr and OpenTelemetry (`crate::telemetry`).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    crate::telemetry::install(json);
}

/// Runs `wasmshop up` until SIGTERM/SIGINT.
pub async fn up(args: UpArgs) -> Result<(), ExitError> {
    let started = Instant::now();
    // Environment-only settings are checked before anything is loaded, so a
    // bad value is one line and exit 2 like a bad flag.
    crate::capabilities::messaging::delivery::DeadLetterRetention::from_env()
        .map_err(ExitError::input)?;
    let manifest = AppManifest::load(&args.from).map_err(ExitError::input)?;
    // An unknown --component-id is a bad flag: one line and exit 2.
    crate::app::select(&manifest, args.component_id.clone())
        .map_err(|e| ExitError::input(format!("{e:#}")))?;
    crate::telemetry::name_components(&manifest);
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path).map_err(ExitError::input)?,
        None => RuntimeConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| manifest.dir.join(".wasmshop"));
    // Held until the process exits: one host per data directory.
    let _lock = lock_data_dir(&data_dir)?;
    let front_door = front_door_limits(&args);
    let metrics = Arc::new(Metrics::default());
    let options = AppOptions {
        manifest,
        runtime_config,
        component_ids: args.component_id.clone(),
        data_dir,
        limits: EngineLimits {
            max_memory_bytes: args.max_memory_mb << 20,
            max_instances: args.max_instances,
            profiler: args.profiler,
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
    if let Some(metrics_addr) = args.metrics_listen.as_ref().filter(|a| !a.is_empty()) {
        let l = tokio::net::TcpListener::bind(metrics_addr).await.map_err(|e| {
            ExitError::runtime(format!("cannot listen on {metrics_addr} for metrics ({e}); choose another --metrics-listen"))
        })?;
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving metrics at /metrics");
        tasks.push(tokio::spawn(crate::trigger::http::serve_metrics(
            metrics.clone(),
            l,
            stopped.clone(),
            front_door,
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
        front_door,
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

/// The listener's limits from the flags; the connection cap, unless
/// given, from the open-files limit (raised to its hard limit first).
fn front_door_limits(args: &UpArgs) -> FrontDoorLimits {
    let open_files = match front_door::raise_open_files_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    let derived = front_door::connection_cap(open_files);
    let max_connections = match args.max_connections {
        Some(n) if n > derived => {
            tracing::warn!(
                requested = n,
                open_files,
                "--max-connections is above what the open-files limit leaves room for; using {derived} (raise `ulimit -Hn` to allow more)"
            );
            derived
        }
        Some(n) => n,
        None => derived,
    };
    tracing::info!(open_files, max_connections, "connection cap");
    FrontDoorLimits {
        header_read_timeout: Duration::from_secs_f64(args.header_read_timeout_secs),
        idle_timeout: Duration::from_secs_f64(args.idle_timeout_secs),
        body_read_timeout: Duration::from_secs_f64(args.body_read_timeout_secs),
        max_connections,
        max_body_bytes: args.max_request_body_bytes,
        body_budget_bytes: args.body_buffer_mb << 20,
        send_timeout: Duration::from_secs_f64(args.send_timeout_secs),
        max_response_buffer_bytes: args.max_response_buffer_bytes,
        response_budget_bytes: args.response_buffer_mb << 20,
    }
}

/// The lock file in the data directory; it holds the pid of the host
/// that owns the directory.
pub const LOCK_FILE: &str = "wasmshop.lock";

/// Takes the data directory for this process alone: an exclusive lock
/// on [`LOCK_FILE`], released by the kernel when the process ends (also
/// on `kill -9`). A second host on the same directory would share the
/// embedded database's queue and compile cache with the first.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, ExitError> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(data_dir).map_err(|e| {
        ExitError::runtime(format!(
            "cannot create the data directory {} ({e}); choose another with --data-dir",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            ExitError::runtime(format!(
                "cannot open the lock file {} ({e}); check the data directory's permissions",
                path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another wasmshop process".to_string(),
                pid => format!("wasmshop process {pid}"),
            };
            return Err(ExitError::runtime(format!(
                "the data directory {} is in use by {holder} (it holds {}); stop that process, or give this one its own --data-dir",
                data_dir.display(),
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(ExitError::runtime(format!(
                "cannot lock {} ({e}); the data directory must be on a file system that supports locks",
                path.display()
            )));
        }
    }
    let written = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|_| file.flush());
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot write this process's id into the lock file");
    }
    Ok(file)
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
    use super::{Cli, parse_listen, parse_metrics_listen};
    use clap::CommandFactory;

    #[test]
    fn component_ids_are_trimmed_and_none_is_empty() {
        use clap::Parser;
        let cli =
            Cli::try_parse_from(["wasmshop", "up", "--component-id", "product, order"]).unwrap();
        let super::Command::Up(args) = cli.command else {
            panic!("not up")
        };
        assert_eq!(args.component_id, ["product", "order"]);
        assert!(
            Cli::try_parse_from(["wasmshop", "up", "--component-id", "product,,order"]).is_err()
        );
    }

    #[test]
    fn listen_addresses_are_host_and_port() {
        for ok in [
            "127.0.0.1:3000",
            "0.0.0.0:0",
            "[::]:8080",
            "localhost:65535",
        ] {
            assert_eq!(parse_listen(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "bad",
            ":3000",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "[::1:80",
            "[]:80",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
        // The metrics listener is off when empty (a template's blank value).
        assert_eq!(parse_metrics_listen("").as_deref(), Ok(""));
        assert!(parse_metrics_listen("bad").is_err());
    }

    #[test]
    fn the_flags_of_every_backend_fit_together() {
        Cli::command().debug_assert();
    }
}
