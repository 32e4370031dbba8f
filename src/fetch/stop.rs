//! Stopping tailsrv-fetch on SIGINT, SIGTERM or SIGHUP: every wait (for the socket, for a
//! connection, between attempts) also watches a signalfd, so a signal ends the run at once
//! and in order: FILE synced, the progress line cleared, a status that says which.
//!
//! Why a signalfd and not a handler that sets a flag? A flag is only looked at between
//! system calls: a signal that lands just before a blocking read would wait for the next
//! byte, which on a quiet file may be hours away. Polling the socket and the signalfd
//! together has no such gap.

use crate::sys;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// Exit status after SIGINT: 128 + 2, what a shell reports for a command ended by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// SIGINT, SIGTERM and SIGHUP, blocked and read from a signalfd; or nothing, for a caller
/// that keeps the default signal handling.
pub struct Stop {
    fd: Option<OwnedFd>,
    signal: Option<i32>,
}

/// What a wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The socket is ready.
    Ready,
    /// The time given ran out (or the wait was interrupted): look again.
    TimedOut,
    /// A stop signal arrived.
    Stopped,
}

impl Stop {
    /// Blocks SIGINT, SIGTERM and SIGHUP in this thread and the threads it starts, to be
    /// read from a signalfd instead. Call it in `main`, before any thread exists.
    pub fn install() -> io::Result<Stop> {
        Ok(Stop {
            fd: Some(sys::signal_fd()?),
            signal: None,
        })
    }

    /// No signal handling of its own: signals act as they would without tailsrv-fetch.
    pub fn none() -> Stop {
        Stop {
            fd: None,
            signal: None,
        }
    }

    /// The signal that stopped the run, once one has.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Waits until `socket` is ready for `events` (`libc::POLLIN` or `libc::POLLOUT`), a
    /// stop signal arrives, or `timeout` passes.
    pub(crate) fn wait(
        &mut self,
        socket: BorrowedFd<'_>,
        events: i16,
        timeout: Option<Duration>,
    ) -> io::Result<Waited> {
        if self.signal.is_some() {
            return Ok(Waited::Stopped);
        }
        let Some(fd) = &self.fd else {
            return Ok(Waited::Ready);
        };
        let (ready, signalled) = sys::wait_ready_or(Some(socket), events, fd.as_fd(), timeout)?;
        if signalled && self.take()? {
            return Ok(Waited::Stopped);
        }
        Ok(if ready {
            Waited::Ready
        } else {
            Waited::TimedOut
        })
    }

    /// Sleeps for `delay`; `false` if a stop signal ended the sleep.
    pub(crate) fn sleep(&mut self, delay: Duration) -> io::Result<bool> {
        if self.fd.is_none() {
            std::thread::sleep(delay);
            return Ok(true);
        }
        let deadline = Instant::now() + delay;
        loop {
            if self.signal.is_some() {
                return Ok(false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(true);
            }
            let signalled = match &self.fd {
                Some(fd) => sys::wait_ready_or(None, 0, fd.as_fd(), Some(left))?.1,
                None => false,
            };
            if signalled {
                self.take()?;
            }
        }
    }

    /// Connects to `addr` within `timeout`; `Ok(None)` if a stop signal came first.
    pub(crate) fn connect(
        &mut self,
        addr: &SocketAddr,
        timeout: Duration,
    ) -> io::Result<Option<TcpStream>> {
        if self.fd.is_none() {
            return TcpStream::connect_timeout(addr, timeout).map(Some);
        }
        let socket = sys::connect_nonblocking(addr)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out",
                ));
            }
            match self.wait(socket.as_fd(), libc::POLLOUT, Some(left))? {
                Waited::Stopped => return Ok(None),
                Waited::TimedOut => {}
                Waited::Ready => {
                    sys::take_socket_error(socket.as_fd())?;
                    let stream = TcpStream::from(socket);
                    stream.set_nonblocking(false)?;
                    return Ok(Some(stream));
                }
            }
        }
    }

    /// Reads a pending signal; true if it was one that stops the run.
    fn take(&mut self) -> io::Result<bool> {
        let Some(fd) = &self.fd else {
            return Ok(false);
        };
        if let Some(signo) = sys::read_signal(fd.as_fd())? {
            self.signal = Some(signo);
        }
        Ok(self.signal.is_some())
    }
}
