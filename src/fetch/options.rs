//! tailsrv-fetch's command-line options. Their doc comments are its `--help` text.

use crate::addr::HostPort;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Fetch a file served by tailsrv: print the stream, or keep a local copy of the file,
/// resuming after every disconnect and noticing when the server's file was rotated.
///
/// Without FILE the stream goes to stdout, each byte once however often the connection
/// drops. With FILE, FILE is a copy of the server's file from its first byte: tailsrv-fetch
/// appends to it and resumes from its length, across its own restarts too. Run
/// `tailsrv -p PORT FILE` beside it and the copy is served again: a relay.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tailsrv-fetch",
    version,
    after_help = "Exit status: 0 when --once saw the server close the stream, stdout was closed, or \
after SIGTERM or SIGHUP; 130 after SIGINT (FILE is synced before either); 1 on another fatal error; 2 on a bad command line; 3 when HOST does not resolve at start-up; 4 when \
--once cannot connect or loses the connection; 5 when FILE cannot be opened, locked, renamed or \
written; 6 when the server's file is not the one held and --on-rotation is exit.\n\n\
With FILE, the identity of the server's file (its HTTP Tailsrv-File) is kept in FILE.tailsrv-id."
)]
pub struct FetchOptions {
    /// The tailsrv server: a host name, an IPv4 address or a bracketed IPv6 address, and a port
    #[arg(value_name = "HOST:PORT", value_parser = parse_addr)]
    pub addr: HostPort,

    /// Keep a copy of the server's file here instead of writing to stdout
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Start at byte N of the server's file (stdout only) [default: 0]
    #[arg(long, value_name = "N", group = "start", conflicts_with = "file")]
    pub from: Option<u64>,

    /// Start with the last BYTES bytes of the server's file (stdout only)
    ///
    /// The server says at which offset that is (its HTTP face's Tailsrv-Start), so later
    /// reconnects resume exactly. Needs a server that answers HTTP (not --no-http).
    #[arg(long, value_name = "BYTES", group = "start", conflicts_with = "file")]
    pub last: Option<u64>,

    /// Start with the last N lines of the server's file, as `tail -n N` counts them
    /// (stdout only; needs a server that answers HTTP)
    #[arg(long, value_name = "N", group = "start", conflicts_with = "file")]
    pub lines: Option<u64>,

    /// Start with what is appended from now on (stdout only; like --last 0)
    #[arg(long, group = "start", conflicts_with = "file")]
    pub new: bool,

    /// Fetch up to the end the server's file had when the first response began, then exit
    /// 0, as `cat` of the remote file would (needs a server that answers HTTP)
    ///
    /// Without it tailsrv-fetch follows the file as it grows, and --once still follows
    /// while the connection lasts. After a rotation, the end is the new file's.
    #[arg(long)]
    pub to_end: bool,

    /// Exit when the connection ends instead of reconnecting
    #[arg(long)]
    pub once: bool,

    /// When the server's file is a new one: `restart` (stdout: go on from its byte 0; FILE:
    /// rename FILE to the --rotated name and start it afresh) or `exit` (status 6, FILE
    /// untouched)
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnRotation::Restart)]
    pub on_rotation: OnRotation,

    /// Where FILE is renamed to when the server's file was rotated; an existing file of that
    /// name is replaced [default: FILE.1]
    #[arg(long, value_name = "PATH", requires = "file")]
    pub rotated: Option<PathBuf>,

    /// Bytes before the resume point that each reconnect asks for again and compares with
    /// those held
    #[arg(long, value_name = "BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 24)))]
    pub check_bytes: u64,

    /// Seconds those bytes have to arrive; when they do not, the server's file is shorter
    /// than the resume point, so it is a new one
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = crate::cli::parse_seconds)]
    pub check_timeout: Duration,

    /// Longest wait between reconnection attempts; the wait starts at 0.1 s and doubles,
    /// with jitter
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = crate::cli::parse_seconds)]
    pub max_delay: Duration,

    /// Seconds a connection attempt may take
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = crate::cli::parse_seconds)]
    pub connect_timeout: Duration,

    /// Flush FILE to disk (fdatasync) at most every SECS seconds while bytes arrive
    /// [default: never; bytes go to the page cache, where a local tailsrv serves them at once]
    #[arg(long, value_name = "SECS", requires = "file", value_parser = crate::cli::parse_seconds)]
    pub fsync: Option<Duration>,

    /// Print only errors: no logs, no progress line
    #[arg(short, long)]
    pub quiet: bool,
}

/// What to do when the server's file is not the one the bytes held came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnRotation {
    /// Start over from the new file's first byte (FILE is renamed first).
    Restart,
    /// Stop with exit status 6 and leave FILE as it is.
    Exit,
}

/// Where the stream starts when there is nothing held yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// An absolute offset.
    At(u64),
    /// This many bytes before the end (`--last`, `--new`).
    BeforeEnd(u64),
    /// This many lines before the end (`--lines`).
    Lines(u64),
}

impl FetchOptions {
    /// Where to start, from `--from`, `--last` and `--new`.
    pub fn start(&self) -> Start {
        match (self.from, self.last, self.new, self.lines) {
            (_, Some(n), _, _) => Start::BeforeEnd(n),
            (_, _, true, _) => Start::BeforeEnd(0),
            (_, _, _, Some(n)) => Start::Lines(n),
            (from, _, _, _) => Start::At(from.unwrap_or(0)),
        }
    }

    /// The name FILE is renamed to on rotation.
    pub fn rotated_path(&self) -> Option<PathBuf> {
        let file = self.file.as_ref()?;
        Some(self.rotated.clone().unwrap_or_else(|| {
            let mut name = file.clone().into_os_string();
            name.push(".1");
            PathBuf::from(name)
        }))
    }
}

/// Accepts `HOST:PORT`, `IP:PORT` and `[IPv6]:PORT` (the parser `--metrics` uses), but
/// not port 0, which no server listens on; a name is resolved when connecting.
fn parse_addr(text: &str) -> Result<HostPort, String> {
    let at: HostPort = text.parse()?;
    if at.port == 0 {
        return Err(format!("`{text}`: port 0 is no server's port"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn options_are_consistent() {
        FetchOptions::command().debug_assert();
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for ok in [
            "localhost:4321",
            "127.0.0.1:1",
            "[::1]:4321",
            "relay-3.example:65535",
        ] {
            assert_eq!(parse_addr(ok).map(|a| a.to_string()).as_deref(), Ok(ok));
        }
        for bad in [
            "localhost",
            "localhost:",
            ":4321",
            "host:0",
            "host:70000",
            "::1:4321",
            "[]:1",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn start_and_rotation_options() {
        let o = FetchOptions::try_parse_from(["f", "h:1"]).unwrap();
        assert_eq!(o.start(), Start::At(0));
        assert_eq!(o.rotated_path(), None);
        let o = FetchOptions::try_parse_from(["f", "h:1", "--last", "100"]).unwrap();
        assert_eq!(o.start(), Start::BeforeEnd(100));
        let o = FetchOptions::try_parse_from(["f", "h:1", "--new"]).unwrap();
        assert_eq!(o.start(), Start::BeforeEnd(0));
        let o = FetchOptions::try_parse_from(["f", "h:1", "--from", "7"]).unwrap();
        assert_eq!(o.start(), Start::At(7));
        let o = FetchOptions::try_parse_from(["f", "h:1", "--lines", "10", "--to-end"]).unwrap();
        assert_eq!(o.start(), Start::Lines(10));
        assert!(o.to_end);
        let o = FetchOptions::try_parse_from(["f", "h:1", "copy.log"]).unwrap();
        assert_eq!(o.rotated_path(), Some(PathBuf::from("copy.log.1")));
        assert_eq!(o.on_rotation, OnRotation::Restart);
        let o =
            FetchOptions::try_parse_from(["f", "h:1", "copy.log", "--rotated", "old.log"]).unwrap();
        assert_eq!(o.rotated_path(), Some(PathBuf::from("old.log")));
    }

    #[test]
    fn refuses_contradictions() {
        for args in [
            &["f"][..],
            &["f", "h"],
            &["f", "h:1", "--from", "1", "--new"],
            &["f", "h:1", "--last", "1", "--from", "2"],
            &["f", "h:1", "copy", "--from", "5"],
            &["f", "h:1", "copy", "--new"],
            &["f", "h:1", "copy", "--lines", "3"],
            &["f", "h:1", "--lines", "3", "--last", "4"],
            &["f", "h:1", "--lines", "x"],
            &["f", "h:1", "--rotated", "x"],
            &["f", "h:1", "--fsync", "1"],
            &["f", "h:1", "--check-bytes", "0"],
            &["f", "h:1", "--on-rotation", "ignore"],
        ] {
            assert!(FetchOptions::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
