//! The tailsrv-fetch binary: parse options, set up logging, fetch, turn the result into an
//! exit status.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tailsrv::fetch::options::FetchOptions;
use tailsrv::fetch::stop::Stop;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let opts = FetchOptions::parse();
    // Before any thread exists, so that every thread inherits the blocked signals.
    let stop = match Stop::install() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("tailsrv-fetch: error: setting up signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    // --quiet wins over RUST_LOG: it promises errors only.
    let filter = if opts.quiet {
        EnvFilter::new("error")
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .init();
    match tailsrv::fetch::run(opts, terminal, stop) {
        Ok(ended) => ExitCode::from(ended.exit_status()),
        Err(e) => {
            eprintln!("tailsrv-fetch: error: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}
