//! `wasmshop`: see `wasmshop up --help`.

use clap::Parser;
use wasmshop::cli::{Cli, Command, LogFormat, init_logging, messages, up};

fn main() {
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
