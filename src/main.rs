//! The tailsrv binary: parse options, set up logging, signals and limits, run the server,
//! turn the result into an exit status.

use std::io::IsTerminal;
use std::process::ExitCode;
use tailsrv::cli::Options;
use tailsrv::process::{self, Signals};
use tailsrv::{Error, Outcome, Server};
use tracing::info;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let opts = Options::parse_or_exit();
    if let Err(e) = init_logging(&opts) {
        eprintln!("tailsrv: error: {e}");
        return ExitCode::from(tailsrv::error::EXIT_ERROR);
    }
    match run(&opts) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("tailsrv: error: {e}");
            ExitCode::from(tailsrv::error::EXIT_ERROR)
        }
    }
}

fn run(opts: &Options) -> Result<Outcome, Error> {
    // Signals first: every thread started from here on inherits the blocked mask, so SIGINT,
    // SIGTERM and SIGHUP reach only the signalfd.
    let signals = Signals::block()?;
    process::raise_limits()?;
    let server = Server::bind(opts)?;
    let stop = signals.recv()?;
    server.serve(async {
        let signal = stop.await;
        info!(signal, "signal received; closing all clients and exiting");
    })
}

fn init_logging(opts: &Options) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    #[cfg(feature = "tracing-journald")]
    if opts.journald {
        let journal = tracing_journald::layer()
            .map_err(|e| format!("cannot log to journald: {e}"))?
            .with_field_prefix(None);
        tracing_subscriber::registry()
            .with(filter)
            .with(journal)
            .init();
        return Ok(());
    }
    let _ = opts;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .init();
    Ok(())
}
