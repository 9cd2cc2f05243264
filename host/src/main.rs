//! `wasmshop`: see `wasmshop up --help`.

use clap::Parser;
use wasmshop::cli::{Cli, Command, LogFormat, init_logging, messages, up};

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

/// glibc's malloc gives each thread that allocates an arena of its own,
/// up to 8 per core, and memory freed into one arena is not reused by
/// another. Here values are allocated on one thread (a tokio worker, the
/// SQLite writer) and freed on another, so each arena kept its own high
/// water mark: two arenas take the peak resident memory of
/// `scripts/bench/throughput.sh`'s 256-connection row from ~151 MB to
/// ~128 MB at the same throughput (docs/performance.md, "Memory and warm start").
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
