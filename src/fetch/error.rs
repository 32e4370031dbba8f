//! How tailsrv-fetch ends: its fatal errors and the exit status of each.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Exit status when the server's file was not the one the copy came from and
/// `--on-rotation exit` was given.
pub const EXIT_NOT_THE_SAME_FILE: u8 = 6;

/// Why a run that started stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `--once`: the server closed the connection in order (EOF).
    ServerClosed,
    /// Whoever reads stdout closed it (as `head` does).
    OutputClosed,
    /// `--to-end`: everything up to the end the server reported was fetched.
    ReachedEnd,
    /// SIGINT, SIGTERM or SIGHUP: FILE was synced first.
    Stopped {
        /// The signal's number.
        signal: i32,
    },
}

impl Ended {
    /// The exit status tailsrv-fetch ends with: 130 after SIGINT (what a shell reports for
    /// Ctrl-C), 0 otherwise (SIGTERM and SIGHUP are how a supervisor asks for a stop).
    pub fn exit_status(&self) -> u8 {
        match self {
            Ended::Stopped { signal } if *signal == libc::SIGINT => super::stop::EXIT_INTERRUPTED,
            _ => 0,
        }
    }
}

/// A fatal error: printed as one line, then tailsrv-fetch exits with [`FetchError::exit_status`].
#[derive(Debug)]
pub enum FetchError {
    /// HOST:PORT names no address (unknown host). Exit status 3.
    Unresolvable {
        /// The HOST:PORT given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// With `--once`: the connection could not be made, or failed before an orderly end.
    /// Exit status 4.
    Connection {
        /// The HOST:PORT given.
        addr: String,
        /// What the system said.
        source: io::Error,
    },
    /// FILE or the rotated name cannot be opened, locked, renamed or written. Exit status 5.
    File {
        /// The file.
        path: PathBuf,
        /// What was being done to it ("opening", "locking", ...).
        doing: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// The server's file is not the one the bytes held so far came from, and rotation
    /// handling is off. Exit status 6.
    NotTheSameFile {
        /// The offset at which the check was made.
        at: u64,
        /// What the check found.
        reason: String,
    },
    /// The server cannot give what was asked: it does not answer HTTP (an option needs
    /// it), or it refused the request. Exit status 1.
    Protocol {
        /// The HOST:PORT given.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// Anything else: writing stdout, a socket call that should not fail. Exit status 1.
    Io {
        /// What tailsrv-fetch was doing.
        context: String,
        /// What the system said.
        source: io::Error,
    },
}

impl FetchError {
    /// The exit status tailsrv-fetch ends with after this error.
    pub fn exit_status(&self) -> u8 {
        match self {
            FetchError::Io { .. } | FetchError::Protocol { .. } => 1,
            FetchError::Unresolvable { .. } => 3,
            FetchError::Connection { .. } => 4,
            FetchError::File { .. } => 5,
            FetchError::NotTheSameFile { .. } => EXIT_NOT_THE_SAME_FILE,
        }
    }

    pub(crate) fn file(path: &std::path::Path, doing: &'static str, source: io::Error) -> Self {
        FetchError::File {
            path: path.to_owned(),
            doing,
            source,
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Unresolvable { addr, source } => {
                write!(f, "cannot resolve {addr}: {source}")
            }
            FetchError::Connection { addr, source } => write!(f, "{addr}: {source}"),
            FetchError::File {
                path,
                doing,
                source,
            } => write!(f, "{doing} {}: {source}", path.display()),
            FetchError::NotTheSameFile { at, reason } => write!(
                f,
                "the server's file is not the one held so far ({reason}, checking before byte {at}); \
                 not resuming because of --on-rotation exit"
            ),
            FetchError::Io { context, source } => write!(f, "{context}: {source}"),
            FetchError::Protocol { addr, reason } => write!(f, "{addr}: {reason}"),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Unresolvable { source, .. }
            | FetchError::Connection { source, .. }
            | FetchError::File { source, .. }
            | FetchError::Io { source, .. } => Some(source),
            FetchError::NotTheSameFile { .. } | FetchError::Protocol { .. } => None,
        }
    }
}
