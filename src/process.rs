//! Process-wide set-up for the binary's `main`: the signal mask, and resource limits.
//!
//! Why not inside [`Server::bind`](crate::Server::bind)? Both change the whole process: a
//! test or an embedding program running a server in its own process must keep its signals
//! and limits as they are.

use crate::error::Error;
use crate::sys;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use tracing::{debug, warn};

/// SIGINT, SIGTERM and SIGHUP, blocked and readable from a signalfd.
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks SIGINT, SIGTERM and SIGHUP in this thread and in every thread it starts from now
    /// on. Call it first in `main`, before any thread exists, so no thread takes them the
    /// default way (ending the process at once).
    pub fn block() -> Result<Signals, Error> {
        let fd = sys::signal_fd().map_err(|e| Error::io("setting up signal handling", e))?;
        Ok(Signals { fd })
    }

    /// Resolves with the number of the first of those signals to arrive.
    ///
    /// Why a thread? The future is polled wherever the caller polls it (by
    /// [`Server::serve`](crate::Server::serve), on a plain thread with no reactor); one thread
    /// parked in poll(2) on the signalfd is the simplest thing that can wake it.
    ///
    /// Fails if that thread cannot start: with the signals blocked and nobody reading them,
    /// SIGTERM would otherwise be ignored.
    pub fn recv(self) -> Result<impl Future<Output = i32> + Send + 'static, Error> {
        let slot: Arc<Mutex<(Option<i32>, Option<Waker>)>> = Arc::default();
        let writer = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("tailsrv-signals".into())
            .spawn(move || {
                let signo = loop {
                    match sys::read_signal(self.fd.as_fd()) {
                        Ok(Some(signo)) => break signo,
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %e, "cannot read signals; stopping");
                            break 0;
                        }
                    }
                    if let Err(e) = sys::wait_readable(self.fd.as_fd()) {
                        warn!(error = %e, "cannot wait for signals; stopping");
                        break 0;
                    }
                };
                if let Ok(mut state) = writer.lock() {
                    state.0 = Some(signo);
                    if let Some(w) = state.1.take() {
                        w.wake();
                    }
                }
            });
        spawned.map_err(|e| Error::io("starting the signal thread", e))?;
        Ok(futures_lite::future::poll_fn(move |cx| match slot.lock() {
            Ok(mut state) => match state.0 {
                Some(signo) => Poll::Ready(signo),
                None => {
                    state.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            Err(_) => Poll::Ready(0),
        }))
    }
}

/// Raises the descriptor and locked-memory soft limits to their hard limits, and fails if
/// the locked-memory limit is too low for glommio to start its executors.
pub fn raise_limits() -> Result<(), Error> {
    match sys::raise_nofile_limit() {
        Ok(limit) => debug!(limit, "descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the descriptor limit"),
    }
    // glommio refuses to start an executor under 512 KiB of locked memory, and then only
    // says that a thread failed; say it plainly instead.
    const MIN_MEMLOCK: u64 = 512 << 10;
    match sys::raise_memlock_limit() {
        Ok(soft) if soft < MIN_MEMLOCK => Err(Error::Config(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is {} KiB; tailsrv needs at least {} KiB \
             (raise it, e.g. LimitMEMLOCK=8M in a systemd unit)",
            soft >> 10,
            MIN_MEMLOCK >> 10
        ))),
        Ok(_) => Ok(()),
        Err(e) => {
            warn!(error = %e, "cannot read the locked-memory limit");
            Ok(())
        }
    }
}
