//! tailsrv-fetch: a client that follows a tailsrv stream to stdout or into a local copy,
//! resuming exactly after every disconnect and noticing rotations.
//!
//! ```text
//!   connect ──▶ GET /stream?from=(position - k) ──▶ identity, size ──▶ check k bytes ──▶ stream ──▶ Output
//!      ▲                                              │ other file / shorter │ differ            │ EOF, reset
//!      │                                              ▼                      ▼                   │
//!      │                               start over (FILE -> FILE.1), at 0                         │
//!      └───────────── back-off (capped, jittered) ◀──────────────────────────────────────────────┘
//! ```
//!
//! A server that does not answer HTTP (`--no-http`) gets the raw header `position - k`
//! instead, and only the byte check.
//!
//! - [`options`]: the command line.
//! - `http`: the request sent and the response head read (where the stream starts, the
//!   file's size and identity), pure logic.
//! - `check`: the rotation check's second line (bytes before the resume point), pure logic.
//! - `backoff`: waits between attempts.
//! - `output`: stdout or FILE; owns the position and the bytes to check against.
//! - `progress`: the progress line on a terminal.
//! - [`stop`]: SIGINT, SIGTERM and SIGHUP, watched by every wait.
//! - [`error`]: fatal errors and exit statuses.
//!
//! Plain blocking std I/O: one connection at a time needs no runtime.

pub(crate) mod backoff;
pub(crate) mod check;
pub mod error;
pub(crate) mod http;
pub mod options;
pub(crate) mod output;
pub(crate) mod progress;
pub mod stop;

use crate::addr::{Host, HostPort};
use backoff::Backoff;
use check::{Check, Verdict};
use error::{Ended, FetchError};
use http::Ask;
use options::{FetchOptions, OnRotation, Start};
use output::{Moved, Output, Wrote};
use progress::Progress;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use stop::{Stop, Waited};
use tracing::{debug, info, warn};

/// Read buffer size: large enough that a catch-up costs few system calls.
const BUF: usize = 256 << 10;

/// TCP keepalive: idle seconds, probe interval, probes. A silent upstream (power loss,
/// partition) is found after about two minutes instead of never.
const KEEPALIVE: (i32, i32, i32) = (60, 10, 6);

/// How one connection ended.
enum SessionEnd {
    /// The server closed the stream (EOF): it stopped, or its file went away.
    Closed,
    /// The connection failed: refused, unreachable, reset.
    Failed(io::Error),
    /// The name did not resolve.
    Unresolvable(io::Error),
    /// The rotation check says the server's file is a new one.
    Rotated { at: u64, verdict: Verdict },
    /// stdout was closed.
    OutputClosed,
    /// A stop signal arrived.
    Stopped,
    /// `--to-end`: the end the server reported is reached.
    ReachedEnd,
    /// The server does not answer HTTP: ask again with the raw header, at once.
    NotHttp,
}

/// Runs until `--once` sees the end, stdout closes, a signal watched by `stop` arrives, or
/// a fatal error.
pub fn run(opts: FetchOptions, show_progress: bool, stop: Stop) -> Result<Ended, FetchError> {
    let mut output = match (&opts.file, opts.rotated_path()) {
        (Some(file), Some(rotated)) => {
            if &rotated == file {
                return Err(FetchError::file(
                    file,
                    "rotating",
                    io::Error::other("--rotated names FILE itself"),
                ));
            }
            Output::file(file, rotated, opts.fsync)?
        }
        _ => Output::stdout(0, opts.check_bytes),
    };
    if let Output::File(_) = output {
        info!(
            file = %opts.file.as_deref().unwrap_or(std::path::Path::new("")).display(),
            length = output.position(),
            "resuming the copy from its length"
        );
    }
    // stdout starts where the options say, FILE where its length says.
    let first = match (&output, opts.start()) {
        (Output::File(_), _) => None,
        (_, Start::At(n)) => Some(Ask::From(n)),
        (_, Start::BeforeEnd(n)) => Some(Ask::Last(n)),
        (_, Start::Lines(n)) => Some(Ask::Lines(n)),
    };
    let mut fetcher = Fetcher {
        first,
        raw_only: false,
        end: None,
        backoff: Backoff::new(opts.max_delay, Backoff::seed()),
        progress: Progress::new(show_progress && !opts.quiet),
        resolved_once: false,
        buf: vec![0; BUF],
        opts,
        stop,
    };
    let result = fetcher.run(&mut output);
    fetcher.progress.clear();
    if let Ok(Ended::Stopped { signal }) = result {
        // Why sync even without --fsync? Whoever stopped us may be about to shut the
        // machine down; one fdatasync on the way out is cheap.
        output.sync()?;
        info!(signal, at = output.position(), "stopped by a signal");
        return result;
    }
    output.finish()?;
    result
}

struct Fetcher {
    /// Where the first stream starts (stdout), until a server has answered it.
    first: Option<Ask>,
    /// The server did not answer HTTP: use the raw header.
    raw_only: bool,
    /// `--to-end`: the offset to stop at, once a server has said.
    end: Option<u64>,
    opts: FetchOptions,
    backoff: Backoff,
    progress: Progress,
    resolved_once: bool,
    buf: Vec<u8>,
    stop: Stop,
}

impl Fetcher {
    fn run(&mut self, output: &mut Output) -> Result<Ended, FetchError> {
        loop {
            let end = self.session(output)?;
            self.progress.clear();
            match end {
                SessionEnd::OutputClosed => return Ok(Ended::OutputClosed),
                SessionEnd::Stopped => return Ok(self.stopped()),
                SessionEnd::ReachedEnd => {
                    info!(
                        at = output.position(),
                        "reached the end the server reported"
                    );
                    return Ok(Ended::ReachedEnd);
                }
                SessionEnd::NotHttp => {
                    // Why go on in raw? A --no-http server (or an older tailsrv) still
                    // serves offsets; what only HTTP can tell is refused below.
                    warn!(addr = %self.opts.addr, "the server does not answer HTTP; using the raw header (no file identity)");
                    self.raw_only = true;
                    continue;
                }
                SessionEnd::Rotated { at, verdict } => {
                    if self.opts.on_rotation == OnRotation::Exit {
                        return Err(FetchError::NotTheSameFile {
                            at,
                            reason: verdict.reason(),
                        });
                    }
                    let held = output.position();
                    match output.start_over()? {
                        Some(rotated) => warn!(
                            reason = %verdict.reason(), held, rotated = %rotated.display(),
                            "the server's file is a new one: the copy was renamed, starting afresh from byte 0"
                        ),
                        None => warn!(
                            reason = %verdict.reason(), held,
                            "the server's file is a new one: going on from its byte 0"
                        ),
                    }
                    // The new file has an end of its own.
                    self.end = None;
                    // Straight back: the server is up, and it has a whole file to send.
                    self.backoff.reset();
                    continue;
                }
                SessionEnd::Closed => {
                    info!(at = output.position(), "the server closed the stream");
                    if self.opts.once {
                        return Ok(Ended::ServerClosed);
                    }
                }
                SessionEnd::Failed(e) => {
                    if self.opts.once {
                        return Err(FetchError::Connection {
                            addr: self.opts.addr.to_string(),
                            source: e,
                        });
                    }
                    warn!(addr = %self.opts.addr, error = %e, at = output.position(), "connection failed");
                }
                SessionEnd::Unresolvable(e) => {
                    // Why fatal only before the first success? At start-up an unknown
                    // name is almost always a typo; later it is a DNS hiccup.
                    if !self.resolved_once || self.opts.once {
                        return Err(FetchError::Unresolvable {
                            addr: self.opts.addr.to_string(),
                            source: e,
                        });
                    }
                    warn!(addr = %self.opts.addr, error = %e, "cannot resolve; retrying");
                }
            }
            let delay = self.backoff.delay();
            debug!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting after a pause"
            );
            if !self.pause(delay)? {
                return Ok(self.stopped());
            }
        }
    }

    /// How the run ended once a stop signal has arrived.
    fn stopped(&self) -> Ended {
        Ended::Stopped {
            signal: self.stop.signal().unwrap_or(0),
        }
    }

    /// Waits `delay` between attempts; `false` if a stop signal came first.
    fn pause(&mut self, delay: Duration) -> Result<bool, FetchError> {
        self.stop.sleep(delay).map_err(|e| FetchError::Io {
            context: "waiting for a signal".into(),
            source: e,
        })
    }

    /// Waits until `sock` has input, for at most `timeout`, watching for a stop signal.
    fn readable(
        &mut self,
        sock: &TcpStream,
        timeout: Option<Duration>,
    ) -> Result<Waited, FetchError> {
        self.stop
            .wait(sock.as_fd(), libc::POLLIN, timeout)
            .map_err(|e| FetchError::Io {
                context: "waiting for the server".into(),
                source: e,
            })
    }

    /// Resolves HOST:PORT and connects to the first address that answers.
    fn connect(&mut self) -> Result<TcpStream, SessionEnd> {
        let HostPort { host, port } = &self.opts.addr;
        let addrs: Vec<SocketAddr> = match host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, *port)],
            Host::Name(name) => match (name.as_str(), *port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => return Err(SessionEnd::Unresolvable(e)),
            },
        };
        if addrs.is_empty() {
            return Err(SessionEnd::Unresolvable(io::Error::new(
                ErrorKind::NotFound,
                "no addresses",
            )));
        }
        self.resolved_once = true;
        let mut last = None;
        for addr in addrs {
            match self.stop.connect(&addr, self.opts.connect_timeout) {
                Ok(None) => return Err(SessionEnd::Stopped),
                // Why look at our own address? Connecting to a local port nobody listens on
                // can, rarely, pick that same port as the source and connect to itself
                // (TCP simultaneous open); the header would then come back as data.
                Ok(Some(s)) if s.local_addr().ok() == Some(addr) => {
                    last = Some(io::Error::from(ErrorKind::ConnectionRefused));
                }
                Ok(Some(s)) => {
                    let (idle, interval, count) = KEEPALIVE;
                    if let Err(e) = crate::sys::set_keepalive(s.as_fd(), idle, interval, count) {
                        debug!(error = %e, "cannot turn on TCP keepalive");
                    }
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(SessionEnd::Failed(last.unwrap_or_else(|| {
            io::Error::new(ErrorKind::NotConnected, "no address answered")
        })))
    }

    /// One connection: ask for the stream from just before the resume point, check the
    /// file's identity and the bytes before the resume point, then stream until the end.
    fn session(&mut self, output: &mut Output) -> Result<SessionEnd, FetchError> {
        let mut sock = match self.connect() {
            Ok(s) => s,
            Err(end) => return Ok(end),
        };
        let peer = sock
            .peer_addr()
            .map_or_else(|_| self.opts.addr.to_string(), |a| a.to_string());
        let position = output.position();
        let k = output.checkable().min(self.opts.check_bytes);
        let mut check = Check::new(position - k, output.tail(k)?);
        let ask = self.first.unwrap_or(Ask::From(check.header()));
        // Bytes of the stream that came with the response head.
        let mut carried = Vec::new();
        let mut identity = None;
        if self.raw_only {
            let Ask::From(at) = ask else {
                return Err(self.needs_http());
            };
            if self.opts.to_end {
                return Err(self.needs_http());
            }
            if self.first.take().is_some() {
                output.set_start(at);
                check = Check::new(at, Vec::new());
            }
            if let Err(e) = sock.write_all(format!("{at}\n").as_bytes()) {
                return Ok(SessionEnd::Failed(e));
            }
        } else {
            if let Err(e) =
                sock.write_all(http::request(ask, &self.opts.addr.to_string()).as_bytes())
            {
                return Ok(SessionEnd::Failed(e));
            }
            let (stream, rest) = match self.read_head(&mut sock)? {
                Ok(head) => head,
                Err(end) => return Ok(end),
            };
            if self.first.take().is_some() {
                // Where the server says the stream starts: exact, whatever was asked.
                output.set_start(stream.start);
                check = Check::new(stream.start, Vec::new());
                info!(
                    start = stream.start,
                    size = stream.size,
                    "the server says where the stream starts"
                );
            } else if stream.start != check.header() {
                return Ok(SessionEnd::Failed(io::Error::other(format!(
                    "asked for the stream from byte {}, the server sent it from {}",
                    check.header(),
                    stream.start
                ))));
            }
            // Why the identity first? It tells a new file at once, with no byte to wait
            // for; and a file shorter than the resume point needs no timeout either, the
            // server says how long it is. The byte check below stays, as a second line.
            if position > 0 {
                if let (Some(held), Some(now)) = (output.identity(), stream.file.as_deref()) {
                    if held != now {
                        debug!(held, now, "the server names another file");
                        return Ok(SessionEnd::Rotated {
                            at: position,
                            verdict: Verdict::Replaced,
                        });
                    }
                }
                if stream.size < position {
                    return Ok(SessionEnd::Rotated {
                        at: position,
                        verdict: Verdict::Shorter { size: stream.size },
                    });
                }
            }
            if self.opts.to_end && self.end.is_none() {
                self.end = Some(stream.size);
            }
            identity = stream.file;
            carried = rest;
        }
        // The first stream's position is only known now.
        let position = output.position();
        let k = position - check.header();
        info!(%peer, position, check = k, "connected");
        self.progress.restart(output.position());
        if self.end.is_some_and(|end| output.position() >= end) {
            return Ok(SessionEnd::ReachedEnd);
        }

        if k > 0 {
            let deadline = Instant::now() + self.opts.check_timeout;
            loop {
                let n = if !carried.is_empty() {
                    let n = carried.len().min(self.buf.len());
                    self.buf[..n].copy_from_slice(&carried[..n]);
                    carried.drain(..n);
                    n
                } else {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(SessionEnd::Rotated {
                            at: position,
                            verdict: check.timed_out(),
                        });
                    }
                    set_timeout(&sock, Some(left))?;
                    match self.readable(&sock, Some(left))? {
                        Waited::Stopped => return Ok(SessionEnd::Stopped),
                        Waited::TimedOut => continue,
                        Waited::Ready => {}
                    }
                    match sock.read(&mut self.buf) {
                        Ok(0) => return Ok(SessionEnd::Closed),
                        Ok(n) => n,
                        Err(e) if is_timeout(&e) => continue,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return Ok(SessionEnd::Failed(e)),
                    }
                };
                match check.feed(&self.buf[..n]) {
                    (_, None) => {}
                    (used, Some(Verdict::Same)) => {
                        debug!(check = k, "same file: resuming");
                        let mut rest = self.buf[used..n].to_vec();
                        rest.append(&mut carried);
                        carried = rest;
                        break;
                    }
                    (_, Some(verdict)) => {
                        return Ok(SessionEnd::Rotated {
                            at: position,
                            verdict,
                        })
                    }
                }
            }
        }
        // The bytes that follow come from this file: say so before writing any of them.
        if identity.is_some() {
            output.set_identity(identity.as_deref())?;
        }
        if !carried.is_empty() {
            if let Some(end) = self.write(output, &carried)? {
                return Ok(end);
            }
        }

        // The server answered and serves the file held: the next disconnect starts the
        // back-off from its first, short wait.
        self.backoff.reset();

        // Why a read timeout at all? Only to redraw the progress line and to fsync a quiet
        // FILE on time; otherwise a quiet file may rightly send nothing for hours.
        let tick = match (self.progress.enabled(), self.opts.fsync) {
            (false, None) => None,
            (true, None) => Some(progress::TICK),
            (false, Some(f)) => Some(f),
            (true, Some(f)) => Some(f.min(progress::TICK)),
        };
        set_timeout(&sock, tick)?;
        loop {
            let waited = self.readable(&sock, tick)?;
            if waited == Waited::Stopped {
                return Ok(SessionEnd::Stopped);
            }
            let moved = match waited {
                // --to-end: read and write, to stop exactly at the end.
                Waited::Ready if self.end.is_some() => match sock.read(&mut self.buf) {
                    Ok(0) => Moved::End,
                    Ok(n) => {
                        let bytes = std::mem::take(&mut self.buf);
                        let wrote = self.write(output, &bytes[..n]);
                        self.buf = bytes;
                        if let Some(end) = wrote? {
                            return Ok(end);
                        }
                        Moved::Bytes
                    }
                    Err(e) => Moved::Socket(e),
                },
                Waited::Ready => output.copy_from(&mut sock, &mut self.buf)?,
                _ => Moved::Socket(ErrorKind::TimedOut.into()),
            };
            match moved {
                Moved::Bytes => {}
                Moved::End => return Ok(SessionEnd::Closed),
                Moved::Closed => return Ok(SessionEnd::OutputClosed),
                Moved::Socket(e) if is_timeout(&e) => {
                    self.progress.update(output.position());
                    output.tick()?;
                    continue;
                }
                Moved::Socket(e) if e.kind() == ErrorKind::Interrupted => continue,
                Moved::Socket(e) => return Ok(SessionEnd::Failed(e)),
            }
            self.progress.update(output.position());
        }
    }

    /// Writes stream bytes to the output, up to the `--to-end` end; `Some` when the
    /// session is over (stdout closed, or the end reached).
    fn write(
        &mut self,
        output: &mut Output,
        bytes: &[u8],
    ) -> Result<Option<SessionEnd>, FetchError> {
        let room = self
            .end
            .map_or(u64::MAX, |end| end.saturating_sub(output.position()));
        let take = usize::try_from(room).map_or(bytes.len(), |r| r.min(bytes.len()));
        if let Wrote::Closed = output.write(&bytes[..take])? {
            return Ok(Some(SessionEnd::OutputClosed));
        }
        self.progress.update(output.position());
        if self.end.is_some_and(|end| output.position() >= end) {
            return Ok(Some(SessionEnd::ReachedEnd));
        }
        Ok(None)
    }

    /// The error for what a server without HTTP cannot do.
    fn needs_http(&self) -> FetchError {
        FetchError::Protocol {
            addr: self.opts.addr.to_string(),
            reason: "the server does not answer HTTP (tailsrv --no-http?), which --last, --new, \
                     --lines and --to-end need"
                .into(),
        }
    }

    /// Reads the response head: what the server says about the stream, and the body bytes
    /// that came with it; or how the session ends.
    fn read_head(
        &mut self,
        sock: &mut TcpStream,
    ) -> Result<Result<(http::Stream, Vec<u8>), SessionEnd>, FetchError> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        let mut got = Vec::new();
        loop {
            match http::parse(&got) {
                http::Response::Partial => {}
                http::Response::Stream { stream, head_len } => {
                    return Ok(Ok((stream, got.split_off(head_len))))
                }
                http::Response::Refused { status, reason } => {
                    let error = FetchError::Protocol {
                        addr: self.opts.addr.to_string(),
                        reason: format!("the server answered {status}: {reason}"),
                    };
                    return Err(error);
                }
                http::Response::Malformed(why) => {
                    return Ok(Err(SessionEnd::Failed(io::Error::other(why))))
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Err(SessionEnd::Failed(io::Error::new(
                    ErrorKind::TimedOut,
                    "no response head in time",
                ))));
            }
            set_timeout(sock, Some(left))?;
            match self.readable(sock, Some(left))? {
                Waited::Stopped => return Ok(Err(SessionEnd::Stopped)),
                Waited::TimedOut => continue,
                Waited::Ready => {}
            }
            let mut buf = [0u8; 4096];
            match sock.read(&mut buf) {
                // Closed before a single byte: a raw-only server refusing the request line.
                Ok(0) if got.is_empty() => return Ok(Err(SessionEnd::NotHttp)),
                Ok(0) => {
                    return Ok(Err(SessionEnd::Failed(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the connection ended inside the response head",
                    ))))
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) if got.is_empty() && e.kind() == ErrorKind::ConnectionReset => {
                    // A raw-only server resets a request whose unread bytes it closes on.
                    return Ok(Err(SessionEnd::NotHttp));
                }
                Err(e) => return Ok(Err(SessionEnd::Failed(e))),
            }
        }
    }
}

fn set_timeout(sock: &TcpStream, timeout: Option<Duration>) -> Result<(), FetchError> {
    sock.set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))
        .map_err(|e| FetchError::Io {
            context: "setting a read timeout".into(),
            source: e,
        })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
