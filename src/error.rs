//! The fatal errors that stop tailsrv, and the exit statuses it ends with.

use std::fmt;
use std::io;
use std::process::ExitCode;

/// A fatal error: printed as one line, then tailsrv exits with status 1.
#[derive(Debug)]
pub enum Error {
    /// A system call failed.
    Io {
        /// What tailsrv was doing (`binding [::]:4000`).
        context: String,
        /// What the system said.
        source: io::Error,
    },
    /// The file or the options cannot work (a directory, a missing parent, zero shards).
    Config(String),
    /// The runtime failed: an executor could not start, or a thread panicked.
    Runtime(String),
}

impl Error {
    /// An [`Error::Io`] with its context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Config(msg) | Error::Runtime(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a server that started ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop (SIGINT, SIGTERM or SIGHUP for the binary; the shutdown future or
    /// [`Handle::shutdown`](crate::Handle::shutdown) in-process): clients were closed and the
    /// server stopped. Exit status 0.
    Signalled,
    /// The file was deleted, renamed away or replaced. Exit status 3.
    FileGone,
    /// The file shrank. Exit status 4.
    Truncated,
}

/// Exit status for a fatal error, at start-up or later.
pub const EXIT_ERROR: u8 = 1;
/// Exit status for a bad command line (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the file was deleted, renamed away or replaced.
pub const EXIT_FILE_GONE: u8 = 3;
/// Exit status when the file shrank.
pub const EXIT_TRUNCATED: u8 = 4;

impl Outcome {
    /// What tailsrv is doing about it, for systemd's STATUS= line while it stops.
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Signalled => "stopping on a signal: closing every client",
            Outcome::FileGone => {
                "stopping: the file was deleted, renamed away or replaced; clients get what \
                 it held"
            }
            Outcome::Truncated => "stopping: the file shrank; resetting every client",
        }
    }

    /// The exit status the binary ends with after this outcome.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Signalled => 0,
            Outcome::FileGone => EXIT_FILE_GONE,
            Outcome::Truncated => EXIT_TRUNCATED,
        })
    }
}
