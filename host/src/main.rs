//! `wasmshop`: see `wasmshop up --help`.

use clap::Parser;
use wasmshop::cli::{Cli, Command, init_logging, up};

fn main() {
    let cli = Cli::parse();
    let Command::Up(args) = cli.command;
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmshop")
        .build()
        .expect("starting the tokio runtime");
    if let Err(failure) = runtime.block_on(up(args)) {
        eprintln!("Error: {}", failure.message);
        std::process::exit(failure.code);
    }
}
