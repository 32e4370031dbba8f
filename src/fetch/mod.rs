//! tailsrv-fetch: a client that follows a tailsrv stream to stdout or into a local copy,
//! resuming exactly after every disconnect and noticing rotations.
//!
//! ```text
//!   connect ──▶ header (position - k) ──▶ check k bytes ──▶ stream ──▶ Output (stdout | FILE)
//!      ▲                                     │ differ / too few              │ EOF, reset
//!      │                                     ▼                               │
//!      │                      start over (FILE -> FILE.1), at 0              │
//!      └───────────── back-off (capped, jittered) ◀──────────────────────────┘
//! ```
//!
//! - [`options`]: the command line.
//! - `check`: the rotation check, pure logic.
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
pub mod options;
pub(crate) mod output;
pub(crate) mod progress;
pub mod stop;

use crate::addr::{Host, HostPort};
use backoff::Backoff;
use check::{Check, Verdict};
use error::{Ended, FetchError};
use options::{FetchOptions, OnRotation, Start};
use output::{Output, Wrote};
use progress::Progress;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};
use stop::{Stop, Waited};
use tracing::{debug, info, warn};

/// Read buffer size: large enough that a catch-up costs few system calls.
const BUF: usize = 256 << 10;

/// With `--last`/`--new`, how long the stream must stay quiet for its end to be reached.
const QUIET_END: Duration = Duration::from_millis(200);

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
    let mut fetcher = Fetcher {
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
    opts: FetchOptions,
    backoff: Backoff,
    progress: Progress,
    resolved_once: bool,
    buf: Vec<u8>,
    stop: Stop,
}

impl Fetcher {
    fn run(&mut self, output: &mut Output) -> Result<Ended, FetchError> {
        if let (Output::Stdout(_), Start::At(at)) = (&*output, self.opts.start()) {
            output.set_start(at);
        }
        if let (Output::Stdout(_), Start::BeforeEnd(n)) = (&*output, self.opts.start()) {
            let Some(end) = self.find_end()? else {
                return Ok(self.stopped());
            };
            let at = end.saturating_sub(n);
            info!(end, start = at, "found the end of the server's file");
            output.set_start(at);
        }
        loop {
            let end = self.session(output)?;
            self.progress.clear();
            match end {
                SessionEnd::OutputClosed => return Ok(Ended::OutputClosed),
                SessionEnd::Stopped => return Ok(self.stopped()),
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
                    if let Err(e) = crate::sys::set_keepalive(s.as_raw_fd(), idle, interval, count)
                    {
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

    /// One connection: check the bytes before the resume point, then stream until the end.
    fn session(&mut self, output: &mut Output) -> Result<SessionEnd, FetchError> {
        let mut sock = match self.connect() {
            Ok(s) => s,
            Err(end) => return Ok(end),
        };
        let position = output.position();
        let k = output.checkable().min(self.opts.check_bytes);
        let mut check = Check::new(position - k, output.tail(k)?);
        let peer = sock
            .peer_addr()
            .map_or_else(|_| self.opts.addr.to_string(), |a| a.to_string());
        if let Err(e) = sock.write_all(format!("{}\n", check.header()).as_bytes()) {
            return Ok(SessionEnd::Failed(e));
        }
        info!(%peer, position, check = k, "connected");
        self.progress.restart(position);

        if k > 0 {
            let deadline = Instant::now() + self.opts.check_timeout;
            loop {
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
                let n = match sock.read(&mut self.buf) {
                    Ok(0) => return Ok(SessionEnd::Closed),
                    Ok(n) => n,
                    Err(e) if is_timeout(&e) => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Ok(SessionEnd::Failed(e)),
                };
                match check.feed(&self.buf[..n]) {
                    (_, None) => {}
                    (used, Some(Verdict::Same)) => {
                        debug!(check = k, "same file: resuming");
                        if used < n {
                            let rest = self.buf[used..n].to_vec();
                            if let Wrote::Closed = output.write(&rest)? {
                                return Ok(SessionEnd::OutputClosed);
                            }
                        }
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
            let read = match waited {
                Waited::Ready => sock.read(&mut self.buf),
                _ => Err(ErrorKind::TimedOut.into()),
            };
            let n = match read {
                Ok(0) => return Ok(SessionEnd::Closed),
                Ok(n) => n,
                Err(e) if is_timeout(&e) => {
                    self.progress.update(output.position());
                    output.tick()?;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Ok(SessionEnd::Failed(e)),
            };
            if let Wrote::Closed = output.write(&self.buf[..n])? {
                return Ok(SessionEnd::OutputClosed);
            }
            self.progress.update(output.position());
        }
    }

    /// `--last`/`--new`: reads the server's file from byte 0, discarding it, until nothing
    /// arrives for [`QUIET_END`]; returns the offset reached, or `None` if a stop signal
    /// came first.
    ///
    /// Why read it all? A `-N` header starts at an offset the server does not tell, and
    /// without that offset no reconnect could resume exactly.
    fn find_end(&mut self) -> Result<Option<u64>, FetchError> {
        loop {
            let mut sock = match self.connect() {
                Ok(s) => s,
                Err(SessionEnd::Stopped) => return Ok(None),
                Err(SessionEnd::Unresolvable(e)) => {
                    return Err(FetchError::Unresolvable {
                        addr: self.opts.addr.to_string(),
                        source: e,
                    })
                }
                Err(SessionEnd::Failed(e)) if self.opts.once => {
                    return Err(FetchError::Connection {
                        addr: self.opts.addr.to_string(),
                        source: e,
                    })
                }
                Err(_) => {
                    let delay = self.backoff.delay();
                    if !self.pause(delay)? {
                        return Ok(None);
                    }
                    continue;
                }
            };
            self.progress.restart(0);
            let result = self.read_to_quiet(&mut sock);
            self.progress.clear();
            match result {
                Ok(end) => return Ok(end),
                Err(e) if self.opts.once => {
                    return Err(FetchError::Connection {
                        addr: self.opts.addr.to_string(),
                        source: e,
                    })
                }
                Err(e) => {
                    warn!(error = %e, "connection failed while looking for the end; retrying");
                    let delay = self.backoff.delay();
                    if !self.pause(delay)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Sends `0` and reads until nothing arrives for [`QUIET_END`]: the bytes read, or
    /// `None` if a stop signal came first.
    fn read_to_quiet(&mut self, sock: &mut TcpStream) -> io::Result<Option<u64>> {
        sock.write_all(b"0\n")?;
        set_timeout(sock, Some(QUIET_END)).map_err(|e| io::Error::other(e.to_string()))?;
        let mut end = 0u64;
        loop {
            match self
                .stop
                .wait(sock.as_fd(), libc::POLLIN, Some(QUIET_END))?
            {
                Waited::Stopped => return Ok(None),
                Waited::TimedOut => return Ok(Some(end)),
                Waited::Ready => {}
            }
            match sock.read(&mut self.buf) {
                Ok(0) => return Ok(Some(end)),
                Ok(n) => {
                    end += n as u64;
                    self.progress.update(end);
                }
                Err(e) if is_timeout(&e) => return Ok(Some(end)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
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
