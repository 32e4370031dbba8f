//! The tailsrv binary: parse options, set up logging, run the server, turn the result into
//! an exit status.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tailsrv::cli::Options;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let opts = Options::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match tailsrv::run(opts) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("tailsrv: error: {e}");
            ExitCode::from(tailsrv::error::EXIT_ERROR)
        }
    }
}
