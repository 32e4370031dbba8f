//! The watcher executor: follows FILE with inotify and rings every shard when it changes.
//!
//! Why a doorbell and not a queue of sizes? Shared channels are bounded and single-producer,
//! and the watcher must never wait on a slow shard. So the watcher stores the news in
//! [`Published`] (atomics any shard can read) and then `try_send`s a `()` on a channel of
//! capacity one per shard. A full channel means that shard has a ring it has not answered
//! yet; when it does, it reads the atomics and so sees this change too. Every shard always
//! ends up with the latest size, and the watcher never blocks.

use crate::control::{self, Bells, View};
use crate::error::{Error, Outcome};
use crate::notify::Notifier;
use crate::stats::ShardStats;
use crate::sys;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::TcpListener;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::{debug, error, info, warn};

/// What the shards need to know about the file and the server's state.
#[derive(Debug, Default)]
pub struct Published {
    /// The file, once it exists. Set once and never closed while any shard runs: the file's
    /// identity cannot change without tailsrv exiting.
    file: OnceLock<File>,
    size: AtomicU64,
    phase: AtomicU8,
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// The file is gone: accept nobody, let clients finish the bytes the file had, then close.
    Draining,
    /// Close every client now, in order (signal, or the end of the drain).
    Closing,
    /// Reset every client now: the file shrank, so bytes still queued in the kernel may no
    /// longer be the file's (see `client::abort`).
    Aborting,
}

impl Published {
    pub fn file(&self) -> Option<&File> {
        self.file.get()
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Closing,
            _ => Phase::Aborting,
        }
    }

    fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Release);
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }
}

const DIR_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

// Why IN_ATTRIB? We hold the file open, so deleting it never raises IN_DELETE_SELF; the link
// count dropping to zero shows up as an attribute change.
const FILE_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DELETE_SELF);

/// What the watcher executor runs beside the watch itself.
pub struct SideJobs {
    pub stats: Vec<Arc<ShardStats>>,
    /// "FILE on ADDR", for status lines.
    pub label: String,
    /// The bound `--metrics` listener.
    pub metrics: Option<std::net::TcpListener>,
    pub notifier: Notifier,
    /// Rung by shards when clients come or go (only when systemd wants status).
    pub status_changes: Vec<SharedReceiver<()>>,
}

/// The file and its directory under watch. Built on the main thread so that a missing
/// directory or an unreadable file stops tailsrv before anything starts.
pub struct Watch {
    path: PathBuf,
    name: OsString,
    inotify: Inotify,
    file_wd: Option<WatchDescriptor>,
    published: Arc<Published>,
}

impl Watch {
    pub fn new(path: &Path) -> Result<Watch, Error> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::Config(format!("{} does not name a file", path.display())))?
            .to_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let inotify = Inotify::init().map_err(|e| Error::io("starting inotify", e))?;
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Config(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("directory {}", dir.display()), e)),
        }
        inotify
            .watches()
            .add(dir, DIR_EVENTS)
            .map_err(|e| Error::io(format!("watching directory {}", dir.display()), e))?;
        let mut watch = Watch {
            path: path.to_owned(),
            name,
            inotify,
            file_wd: None,
            published: Arc::new(Published::default()),
        };
        match watch.open() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        }
        Ok(watch)
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.clone()
    }

    /// Opens the file if it is there, watches it and publishes its size.
    fn open(&mut self) -> io::Result<()> {
        let file = File::open(&self.path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        // Watch first, size second: an append between the two is then never missed.
        self.file_wd = Some(self.inotify.watches().add(&self.path, FILE_EVENTS)?);
        let size = sys::fstat(file.as_raw_fd())?.st_size as u64;
        self.published.set_size(size);
        let _ = self.published.file.set(file);
        Ok(())
    }

    /// Runs on the watcher executor until `stop` (an eventfd) is set, or the file is gone or
    /// truncated.
    pub async fn run(
        mut self,
        stop: Arc<OwnedFd>,
        doorbells: Vec<SharedSender<()>>,
        jobs: SideJobs,
    ) -> Result<Outcome, Error> {
        let mut bells = Vec::with_capacity(doorbells.len());
        for bell in doorbells {
            bells.push(bell.connect().await);
        }
        let bells = Rc::new(Bells(bells));
        let view = Rc::new(View {
            stats: jobs.stats,
            published: self.published.clone(),
            label: jobs.label,
        });
        if let Some(listener) = jobs.metrics {
            // SAFETY: a bound, listening TCP socket we own; ownership moves to glommio.
            let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
            let metrics = control::serve_metrics(listener, view.clone(), bells.clone());
            glommio::spawn_local(metrics).detach();
        }
        let notifier = jobs.notifier;
        if notifier.enabled() {
            let mut changes = Vec::with_capacity(jobs.status_changes.len());
            for rx in jobs.status_changes {
                changes.push(rx.connect().await);
            }
            glommio::spawn_local(control::keep_status(notifier, view.clone(), changes)).detach();
        }
        if let Some(interval) = notifier.watchdog_interval() {
            info!(?interval, "systemd watchdog enabled");
            let watchdog = control::keep_watchdog(notifier, interval, view.clone(), bells.clone());
            glommio::spawn_local(watchdog).detach();
        }

        let mut buffer = [0u8; 4096];
        let inotify_fd = self.inotify.as_raw_fd();
        let stop_fd = stop.as_raw_fd();
        let mut known = self.published.size();
        bells.ring();
        let outcome = loop {
            let stopping = sys::eventfd_is_set(stop.as_fd())
                .map_err(|e| Error::io("reading the stop flag", e))?;
            if stopping {
                info!("asked to stop; closing all clients");
                self.published.set_phase(Phase::Closing);
                break Outcome::Signalled;
            }
            let mut look_at_path = false;
            let mut dir_gone = false;
            let mut any = false;
            loop {
                let events = match self.inotify.read_events(&mut buffer) {
                    Ok(events) => events,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Error::io("reading inotify events", e)),
                };
                for event in events {
                    any = true;
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        look_at_path = true;
                    } else if Some(&event.wd) == self.file_wd.as_ref() {
                        look_at_path |= !event.mask.contains(EventMask::MODIFY);
                    } else if event
                        .mask
                        .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                    {
                        dir_gone = true;
                    } else if event.name == Some(self.name.as_os_str()) {
                        look_at_path = true;
                    }
                }
            }
            if any {
                if let Some(outcome) = self.evaluate(look_at_path, dir_gone, &mut known) {
                    break outcome;
                }
                bells.ring();
            }
            // Why a blocking poll on glommio's helper thread? glommio 0.9 has no public way
            // to await a descriptor that is not a socket, and the inotify crate's async
            // stream is tokio's. One helper thread parked in poll(2) costs nothing while the
            // file is quiet, and wakes us for inotify events and the stop flag alike.
            let fds = [inotify_fd, stop_fd];
            glommio::executor()
                .spawn_blocking(move || sys::wait_readable(&fds))
                .await
                .map_err(|e| Error::io("waiting for file events", e))?;
        };
        notifier.stopping(&format!("stopping: {outcome:?}"));
        bells.ring();
        Ok(outcome)
    }

    /// Looks at the file after events; returns why to stop, if it is time to.
    fn evaluate(&mut self, look_at_path: bool, dir_gone: bool, known: &mut u64) -> Option<Outcome> {
        let Some(file) = self.published.file() else {
            if dir_gone {
                error!(file = %self.path.display(), "the file's directory was removed; exiting");
                self.published.set_phase(Phase::Closing);
                return Some(Outcome::FileGone);
            }
            match self.open() {
                Ok(()) => {
                    *known = self.published.size();
                    info!(file = %self.path.display(), size = *known, "file appeared; serving it");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %self.path.display(), error = %e, "file appeared but cannot be opened")
                }
            }
            return None;
        };
        let st = match sys::fstat(file.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => {
                error!(error = %e, "cannot stat the open file; exiting");
                self.published.set_phase(Phase::Closing);
                return Some(Outcome::FileGone);
            }
        };
        let size = st.st_size as u64;
        if size < *known {
            error!(
                file = %self.path.display(), was = *known, now = size,
                "file shrank (truncated or copytruncate-rotated); resetting all clients and exiting"
            );
            self.published.set_phase(Phase::Aborting);
            return Some(Outcome::Truncated);
        }
        if size > *known {
            *known = size;
            self.published.set_size(size);
        }
        if look_at_path || dir_gone || st.st_nlink == 0 {
            let why = if st.st_nlink == 0 {
                Some("deleted")
            } else {
                match std::fs::metadata(&self.path) {
                    Ok(m) if m.dev() == st.st_dev && m.ino() == st.st_ino => None,
                    Ok(_) => Some("replaced by another file"),
                    Err(_) => Some("renamed away"),
                }
            };
            if let Some(why) = why {
                error!(
                    file = %self.path.display(), why, size,
                    "file is gone; clients get what it held, then tailsrv exits"
                );
                self.published.set_phase(Phase::Draining);
                return Some(Outcome::FileGone);
            }
        }
        debug!(size, "file grew");
        None
    }
}
