//! The watcher executor: follows FILE with inotify, publishes its size and the server's
//! phase ([`crate::state`]), and rings the shards that need to hear about it.

use crate::admission::Limits;
use crate::control::View;
use crate::error::{Error, Outcome};
use crate::notify::Notifier;
use crate::state::{Bell, Bells, Interest, Phase, Published};
use crate::stats::{ShardStats, WatcherStats};
use crate::sys;
use crate::{metrics, systemd};
use futures_lite::future;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tracing::{debug, error, info, warn};

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
    /// The client limits in force, for the metrics.
    pub limits: Limits,
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
    stats: Arc<WatcherStats>,
}

/// What a batch of file events means for the shards.
enum News {
    Nothing,
    /// The file grew: shards with clients waiting for growth must hear of it.
    Grew,
    /// The file appeared: every shard must pick it up.
    Opened,
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
            stats: Arc::new(WatcherStats::default()),
        };
        match watch.open() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        }
        Ok(watch)
    }

    /// The watcher's counters, for the handle and the metrics.
    pub fn stats(&self) -> Arc<WatcherStats> {
        self.stats.clone()
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
        let size = sys::fstat(file.as_fd())?.st_size as u64;
        self.published.set_size(size);
        self.published.set_file(file);
        Ok(())
    }

    /// Runs on the watcher executor until `stop` (an eventfd) becomes readable, or the file
    /// is gone or truncated.
    pub async fn run(
        mut self,
        stop: Arc<OwnedFd>,
        doorbells: Vec<(SharedSender<()>, Arc<Interest>)>,
        jobs: SideJobs,
    ) -> Result<Outcome, Error> {
        let mut bells = Vec::with_capacity(doorbells.len());
        for (sender, interest) in doorbells {
            let sender = crate::state::connect_patiently(sender.connect()).await;
            bells.push(Bell { sender, interest });
        }
        let bells = Rc::new(Bells(bells));
        let view = Rc::new(View {
            stats: jobs.stats,
            watcher: self.stats.clone(),
            published: self.published.clone(),
            label: jobs.label,
            limits: jobs.limits,
        });
        if let Some(listener) = jobs.metrics {
            let listener = sys::adopt_listener(listener.into());
            let metrics = metrics::serve(listener, view.clone(), bells.clone());
            glommio::spawn_local(metrics).detach();
        }
        let notifier = jobs.notifier;
        if notifier.enabled() {
            let mut changes = Vec::with_capacity(jobs.status_changes.len());
            for rx in jobs.status_changes {
                changes.push(crate::state::connect_patiently(rx.connect()).await);
            }
            glommio::spawn_local(systemd::keep_status(notifier, view.clone(), changes)).detach();
        }
        if let Some(interval) = notifier.watchdog_interval() {
            info!(?interval, "systemd watchdog enabled");
            let watchdog = systemd::keep_watchdog(notifier, interval, view.clone(), bells.clone());
            glommio::spawn_local(watchdog).detach();
        }

        // Why wait through glommio's ring rather than in poll(2) on a helper thread? Each
        // wake through the helper costs a futex, a thread switch and an eventfd write on
        // every append; an io_uring poll completes straight into this executor's ring.
        // The stop flag is never read, so once set it stays readable.
        let stop = async {
            loop {
                sys::readable_or_soon(stop.as_fd())
                    .await
                    .map_err(|e| Error::io("waiting for the stop flag", e))?;
                if sys::is_readable(stop.as_fd())
                    .map_err(|e| Error::io("looking at the stop flag", e))?
                {
                    return Ok::<(), Error>(());
                }
            }
        };
        futures_lite::pin!(stop);
        let mut known = self.published.size();
        bells.ring_all();
        let outcome = loop {
            match self.take_events(&mut known)? {
                Ok(News::Nothing) => {}
                Ok(News::Grew) => bells.ring_waiting(),
                Ok(News::Opened) => bells.ring_all(),
                Err(outcome) => break outcome,
            }
            let inotify = async {
                sys::readable_or_soon(self.inotify.as_fd())
                    .await
                    .map_err(|e| Error::io("waiting for file events", e))?;
                Ok(None)
            };
            let stop = async { (&mut stop).await.map(Some) };
            if let Some(()) = future::or(inotify, stop).await? {
                info!("asked to stop; closing all clients");
                self.published.set_phase(Phase::Closing);
                break Outcome::Signalled;
            }
            ShardStats::add(&self.stats.wakeups, 1);
        };
        notifier.stopping(outcome.status());
        bells.ring_all();
        Ok(outcome)
    }

    /// Reads every pending inotify event and looks at the file if any came; says what the
    /// shards need to hear, or why to stop.
    fn take_events(&mut self, known: &mut u64) -> Result<Result<News, Outcome>, Error> {
        let mut buffer = [0u8; 4096];
        let mut look_at_path = false;
        let mut dir_gone = false;
        let mut any = false;
        // Why one read? A read takes every event that fits, and the buffer holds hundreds;
        // if more are left, the descriptor is still readable and the next wait returns at
        // once. Reading again until EAGAIN would cost a system call on every append.
        let events = match self.inotify.read_events(&mut buffer) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Ok(News::Nothing)),
            Err(e) => return Err(Error::io("reading inotify events", e)),
        };
        for event in events {
            any = true;
            ShardStats::add(&self.stats.file_events, 1);
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
        if !any {
            return Ok(Ok(News::Nothing));
        }
        Ok(self.evaluate(look_at_path, dir_gone, known))
    }

    /// Looks at the file after events: what changed, or why to stop.
    fn evaluate(
        &mut self,
        look_at_path: bool,
        dir_gone: bool,
        known: &mut u64,
    ) -> Result<News, Outcome> {
        let Some(file) = self.published.file() else {
            if dir_gone {
                error!(file = %self.path.display(), "the file's directory was removed; exiting");
                self.published.set_phase(Phase::Closing);
                return Err(Outcome::FileGone);
            }
            match self.open() {
                Ok(()) => {
                    *known = self.published.size();
                    info!(file = %self.path.display(), size = *known, "file appeared; serving it");
                    return Ok(News::Opened);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %self.path.display(), error = %e, "file appeared but cannot be opened")
                }
            }
            return Ok(News::Nothing);
        };
        let st = match sys::fstat(file.as_fd()) {
            Ok(st) => st,
            Err(e) => {
                error!(error = %e, "cannot stat the open file; exiting");
                self.published.set_phase(Phase::Closing);
                return Err(Outcome::FileGone);
            }
        };
        let size = st.st_size as u64;
        if size < *known {
            error!(
                file = %self.path.display(), was = *known, now = size,
                "file shrank (truncated or copytruncate-rotated); resetting all clients and exiting"
            );
            self.published.set_phase(Phase::Aborting);
            return Err(Outcome::Truncated);
        }
        let grew = size > *known;
        if grew {
            *known = size;
            self.published.set_size(size);
        }
        if look_at_path || dir_gone || st.st_nlink == 0 {
            // Why look at the path even when the link count is 0? `mv other FILE` unlinks
            // the file we hold just as `rm` does; what is at the path now tells them apart.
            let why = match std::fs::metadata(&self.path) {
                Ok(m) if m.dev() == st.st_dev && m.ino() == st.st_ino && st.st_nlink > 0 => None,
                Ok(_) => Some("replaced by another file"),
                Err(_) if st.st_nlink == 0 => Some("deleted"),
                Err(_) => Some("renamed away"),
            };
            if let Some(why) = why {
                error!(
                    file = %self.path.display(), why, size,
                    "file is gone; clients get what it held, then tailsrv exits"
                );
                self.published.set_phase(Phase::Draining);
                return Err(Outcome::FileGone);
            }
        }
        if !grew {
            return Ok(News::Nothing);
        }
        debug!(size, "file grew");
        Ok(News::Grew)
    }
}
