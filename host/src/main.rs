//! `wasmshop`: see `wasmshop up --help`.

use clap::Parser;
use wasmshop::cli::{Cli, Command, LogFormat, init_logging, messages, up};

/// jemalloc instead of glibc's malloc: malloc and free were ~10% of the
/// host's samples on the wasm-only row, and with jemalloc every request
/// costs 10–13% less CPU (docs/performance.md, "Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation (`_RJEM_MALLOC_CONF`
/// in the environment still overrides them). Two arenas, as for glibc
/// below: values are allocated on one thread and freed on another, and
/// each arena keeps its own free pages. Freed pages go back to the
/// system after 250 ms, by jemalloc's background thread, so peak
/// resident memory stays near glibc's (133–143 MB against 132–135 MB on
/// `scripts/bench/throughput.sh`'s 256-connection row). The syntax is
/// jemalloc's `malloc_conf` (`man jemalloc`, "TUNING"); the symbol name is
/// tikv-jemalloc-sys's prefixed one.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] =
    b"background_thread:true,narenas:2,dirty_decay_ms:250,muzzy_decay_ms:0\0";

fn main() {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Up(args) => args.log_format,
        Command::Messages(_) => LogFormat::Text,
    };
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmshop")
        .build()
        .expect("starting the tokio runtime");
    let result = runtime.block_on(async {
        let export = wasmshop::telemetry::start();
        let result = match cli.command {
            Command::Up(args) => up(*args).await,
            Command::Messages(args) => messages(args).await,
        };
        export.shutdown(std::time::Duration::from_secs(5)).await;
        result
    });
    // Requests were drained and consumers stopped inside `up`; what is
    // left (a blocking database call of a task the drain cut off) gets a
    // moment, and never keeps a stopped host from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Err(error) = result {
        eprintln!("error: {}", error.message);
        std::process::exit(error.code);
    }
}

/// glibc's malloc still serves the C libraries (SQLite's page caches on
/// the reader and writer threads). It gives each thread that allocates
/// an arena of its own, up to 8 per core, and memory freed into one
/// arena is not reused by another. When glibc served the whole host, two
/// arenas took the peak resident memory of `scripts/bench/throughput.sh`'s
/// 256-connection row from ~151 MB to ~128 MB at the same throughput
/// (docs/performance.md, "Memory and warm start").
/// `MALLOC_ARENA_MAX` set in the environment still wins. Must run before
/// any other thread starts; on a libc other than glibc it does nothing.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tunable; no other thread
        // exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
