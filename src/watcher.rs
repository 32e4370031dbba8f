//! The watcher executor: follows FILE with inotify, publishes its generation, its size and
//! the server's phase ([`crate::state`]), and rings the shards that need to hear about it.
//!
//! Why does the watcher, and not a shard, open the file again after a rotation? Opening
//! walks the path, which may block on a slow filesystem; the watcher has nothing else to
//! do, while a shard has clients waiting. Shards only ever take an open file from
//! [`Published`], so none of them ever blocks on the path.

use crate::admission::Limits;
use crate::cli::OnRotation;
use crate::control::View;
use crate::error::{Error, Outcome};
use crate::file_id::FileId;
use crate::linger::Linger;
use crate::notify::Notifier;
use crate::state::{Audience, Bell, Bells, Generation, Interest, Phase, Published};
use crate::stats::{ShardStats, WatcherStats};
use crate::sys;
use crate::{metrics, systemd};
use futures_lite::future;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

mod rotation;

use rotation::end_drain;

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

/// How often the watcher looks at the file's size while nobody is connected and it does not
/// hear appends: a file truncated meanwhile is noticed within this (see [`Audience`]).
pub const IDLE_LOOK: Duration = Duration::from_secs(1);

/// How long the watcher waits for news, while someone is connected, before it looks at the
/// file's size itself.
///
/// Why look when inotify tells of every append? Because the wake-up that carries the news
/// can be lost: under heavy load, a watcher stopped and continued (SIGSTOP, SIGCONT) slept on
/// with its inotify descriptor readable, in 1 of about 150 runs of
/// `regressions::an_inotify_queue_overflow_loses_no_growth`, until something else woke it.
/// Where it is lost (glommio's sleep, or io_uring's poll of the descriptor) is not found.
/// The look bounds the harm to this long; a busy file never sees it (every wake-up starts
/// the wait again), and a calm one pays one wake-up a second. It also nudges any shard that
/// has not answered a growth ring in that second, for the same harm on the shard's side.
pub const QUIET_LOOK: Duration = Duration::from_secs(1);

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
    /// The generation served now (also in `published`), if the file exists.
    current: Option<Arc<Generation>>,
    on_rotation: OnRotation,
    published: Arc<Published>,
    stats: Arc<WatcherStats>,
    /// Who is connected: appends are heard only while someone is.
    audience: Arc<Audience>,
    /// Whether the file's watch includes IN_MODIFY now.
    following: bool,
    linger: Linger,
}

/// Why the watcher woke.
enum Wake {
    /// inotify has events (or the linger window ended: events may have come meanwhile).
    Events,
    /// The first client came or the last one left.
    Audience,
    /// The slow timer while nobody is connected, or the quiet look while someone is.
    Look,
    /// Asked to stop.
    Stop,
}

/// What a batch of file events means for the shards.
enum News {
    Nothing,
    /// The file grew: shards with clients waiting for growth must hear of it.
    Grew,
    /// A new generation, or none, is published (the file appeared, was rotated or was
    /// truncated): every shard must take it in. A generation rotated away comes along, for
    /// the end of its drain.
    Switched(Option<Weak<Generation>>),
    /// The watch is over: the file is gone or shrank (with `--on-rotation exit`), and the
    /// server stops with this outcome. Not an error: it is how a watch ends in order.
    Ended(Outcome),
}

impl Watch {
    /// Watches `path`; `linger` is the `--linger` window.
    pub fn new(path: &Path, on_rotation: OnRotation, linger: Duration) -> Result<Watch, Error> {
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
            current: None,
            on_rotation,
            published: Arc::new(Published::default()),
            stats: Arc::new(WatcherStats::default()),
            audience: Arc::new(
                Audience::new().map_err(|e| Error::io("creating the audience bell", e))?,
            ),
            following: false,
            linger: Linger::new(linger),
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

    /// The client count the shards keep for the watcher.
    pub fn audience(&self) -> Arc<Audience> {
        self.audience.clone()
    }

    /// Opens the file if it is there, watches it and publishes it as a new generation.
    fn open(&mut self) -> io::Result<FileId> {
        let file = File::open(&self.path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        let id = FileId::of(&file)?;
        // Watch first, size second: an append between the two is then never missed.
        self.file_wd = Some(self.inotify.watches().add(&self.path, FILE_EVENTS)?);
        self.set_following(true);
        let size = sys::fstat(file.as_fd())?.st_size as u64;
        let generation = self.published.generation(Arc::new(file), id, size);
        self.current = Some(generation.clone());
        self.published.publish(Some(generation));
        Ok(id)
    }

    /// Stops watching the file served until now: its events are no longer FILE's.
    fn forget_file(&mut self) {
        self.current = None;
        if let Some(wd) = self.file_wd.take() {
            // Fails only if the watch is gone already (the file was freed).
            let _ = self.inotify.watches().remove(wd);
        }
    }

    /// Runs on the watcher executor until `stop` (an eventfd) becomes readable, or the file
    /// is gone or truncated.
    pub async fn run(
        mut self,
        stop: Arc<OwnedFd>,
        doorbells: Vec<(SharedSender<()>, Arc<Interest>)>,
        jobs: SideJobs,
    ) -> Result<Outcome, Error> {
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
        // Why race the stop flag? A shard whose executor failed to start never connects, and
        // the server then stops the watcher it did start: without the race it waited here
        // until the server gave up on it (15 s).
        let connect = async {
            let mut bells = Vec::with_capacity(doorbells.len());
            for (sender, interest) in doorbells {
                let sender = crate::state::connect_patiently(sender.connect()).await;
                bells.push(Bell { sender, interest });
            }
            Ok(Some(bells))
        };
        let stopped = async { stop.as_mut().await.map(|()| None) };
        let Some(bells) = future::or(connect, stopped).await? else {
            info!("asked to stop before every shard had started");
            self.published.set_phase(Phase::Closing);
            return Ok(Outcome::Signalled);
        };
        let bells = Rc::new(Bells(bells));
        let view = Rc::new(View {
            stats: jobs.stats,
            watcher: self.stats.clone(),
            published: self.published.clone(),
            label: jobs.label,
            limits: jobs.limits,
        });
        // As a shard's listener (see accept::run): stopped listening on the way out, so that
        // the port is free once the process has exited.
        let mut metrics_listening = None;
        if let Some(listener) = jobs.metrics {
            let listener = OwnedFd::from(listener);
            metrics_listening = listener.try_clone().ok();
            let listener = sys::adopt_listener(listener);
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

        let audience = self.audience.clone();
        // Why kept across wake-ups? Each wait costs a duplicate descriptor and an io_uring
        // poll; the bell rings only when the first client comes or the last one leaves.
        let mut arrival = Box::pin(sys::readable_or_soon(audience.bell()));
        bells.ring_all();
        // First look at the audience: with nobody connected yet, stop hearing appends now.
        let mut wake = Wake::Audience;
        let outcome = loop {
            let before = self.size();
            let news = match wake {
                Wake::Events => self.take_events()?,
                Wake::Audience => self.follow_audience()?,
                Wake::Look if self.following => {
                    ShardStats::add(&self.stats.quiet_looks, 1);
                    let nudged = bells.nudge_unanswered();
                    if nudged > 0 {
                        // A shard busy for a second may be slow rather than deaf; the nudge
                        // is harmless either way, so this is not a warning.
                        debug!(
                            nudged,
                            "shards had not answered a ring for a second; nudged them"
                        );
                    }
                    let news = self.evaluate(false, false);
                    if let News::Grew = news {
                        ShardStats::add(&self.stats.unannounced_growth, 1);
                        warn!(
                            size = self.size(),
                            "growth found by the quiet look, not by a file event: a wake-up \
                             was lost (or an append came at that very moment); sending it now"
                        );
                    }
                    news
                }
                Wake::Look => {
                    ShardStats::add(&self.stats.idle_looks, 1);
                    self.evaluate(false, false)
                }
                Wake::Stop => {
                    info!("asked to stop; closing all clients");
                    self.published.set_phase(Phase::Closing);
                    break Outcome::Signalled;
                }
            };
            match news {
                News::Nothing => {
                    if let Wake::Events = wake {
                        self.linger.found_nothing();
                    }
                }
                News::Grew => {
                    // Counted first: a test that sees the bytes arrive sees the count too.
                    self.delivered(self.size().saturating_sub(before));
                    bells.ring_waiting();
                }
                News::Switched(rotated) => {
                    bells.ring_all();
                    if let Some(rotated) = rotated {
                        let end = end_drain(rotated, self.published.clone(), bells.clone());
                        glommio::spawn_local(end).detach();
                    }
                    // A new file's watch hears appends; with nobody connected, stop that.
                    match self.follow(audience.anyone())? {
                        News::Grew => bells.ring_waiting(),
                        News::Ended(outcome) => break outcome,
                        _ => {}
                    }
                }
                News::Ended(outcome) => break outcome,
            }
            wake = self.next_wake(stop.as_mut(), arrival.as_mut()).await?;
            match wake {
                Wake::Events => ShardStats::add(&self.stats.wakeups, 1),
                // The bell was heard: wait for its next ring from here on.
                Wake::Audience => arrival.set(sys::readable_or_soon(audience.bell())),
                Wake::Look | Wake::Stop => {}
            }
        };
        notifier.stopping(outcome.status());
        bells.ring_all();
        if let Some(fd) = metrics_listening {
            if let Err(e) = sys::stop_listening(fd.as_fd()) {
                warn!(error = %e, "cannot stop listening for metrics requests");
            }
        }
        Ok(outcome)
    }

    /// The size of the generation served now (0 without one).
    fn size(&self) -> u64 {
        self.current.as_ref().map_or(0, |g| g.size())
    }

    /// Counts a delivery of `grown` bytes, for the metrics and the linger window.
    fn delivered(&mut self, grown: u64) {
        ShardStats::add(&self.stats.deliveries, 1);
        ShardStats::add(&self.stats.delivered_bytes, grown);
        if self.linger.delivered(Instant::now()) {
            ShardStats::add(&self.stats.held, 1);
        }
    }

    /// Waits for the next reason to look at something: file events (no sooner than the linger
    /// window allows), the audience bell, the slow timer while nobody is connected, or stop.
    async fn next_wake<S, A>(
        &mut self,
        mut stop: Pin<&mut S>,
        mut arrival: Pin<&mut A>,
    ) -> Result<Wake, Error>
    where
        S: Future<Output = Result<(), Error>>,
        A: Future<Output = io::Result<()>>,
    {
        // Nobody connected: the slow timer is how growth and truncation are seen. Someone
        // connected: the quiet look, in case a wake-up was lost.
        let look_after = match (self.current.is_some(), self.following) {
            (false, _) => None,
            (true, false) => Some(IDLE_LOOK),
            (true, true) => Some(QUIET_LOOK),
        };
        let wake = {
            let events = async {
                sys::readable_or_soon(self.inotify.as_fd())
                    .await
                    .map_err(|e| Error::io("waiting for file events", e))?;
                Ok(Wake::Events)
            };
            let look = async {
                let Some(after) = look_after else {
                    return future::pending().await;
                };
                glommio::timer::Timer::new(after).await;
                Ok(Wake::Look)
            };
            let others = interrupted(stop.as_mut(), arrival.as_mut());
            future::or(events, future::or(others, look)).await?
        };
        if let Wake::Events = wake {
            // Growth heard soon after the last delivery waits for the window's end.
            if let Some(until) = self.linger.hold(Instant::now()) {
                if let Some(wake) = until_or(until, stop.as_mut(), arrival.as_mut()).await? {
                    return Ok(wake);
                }
                self.linger.held();
            }
        }
        Ok(wake)
    }

    /// Answers the audience bell: hears appends again if someone came, stops if everyone left.
    fn follow_audience(&mut self) -> Result<News, Error> {
        let anyone = self
            .audience
            .answer()
            .map_err(|e| Error::io("reading the audience bell", e))?;
        self.follow(anyone)
    }

    /// Puts IN_MODIFY in the file's watch, or takes it out; coming back, takes the size again.
    ///
    /// Why only IN_MODIFY? Deletion, renames and the link count (IN_ATTRIB) must be heard
    /// whoever is connected; they are rare, and cost nothing while nothing happens. Why watch
    /// first and size second when coming back? An append before the watch is in the size;
    /// one after it raises an event: the first client cannot miss growth. A truncation while
    /// nobody listened shows as a size below the last one published, as any other.
    fn follow(&mut self, anyone: bool) -> Result<News, Error> {
        if anyone == self.following || self.current.is_none() {
            return Ok(News::Nothing);
        }
        let mask = if anyone {
            FILE_EVENTS
        } else {
            FILE_EVENTS.difference(WatchMask::MODIFY)
        };
        if let Err(e) = self.rewatch(mask) {
            if !anyone {
                // Harmless: the watcher keeps hearing appends it could have ignored.
                debug!(error = %e, "cannot stop hearing appends; hearing them on");
                return Ok(News::Nothing);
            }
            return Err(Error::io("watching the file for appends again", e));
        }
        self.set_following(anyone);
        if !anyone {
            return Ok(News::Nothing);
        }
        Ok(self.evaluate(false, false))
    }

    /// Replaces the served file's watch mask.
    ///
    /// Why through /proc/self/fd? inotify watches what a path names when it is added; the path
    /// may name another file by now (a rotation the watcher has not read yet), while the open
    /// descriptor is the file being served. Adding a watch on an inode that has one already
    /// replaces its mask and returns the same watch descriptor, which is checked.
    fn rewatch(&mut self, mask: WatchMask) -> io::Result<()> {
        let Some(current) = self.current.as_ref() else {
            return Ok(());
        };
        let by_fd = format!("/proc/self/fd/{}", current.file().as_raw_fd());
        let wd = self.inotify.watches().add(&by_fd, mask)?;
        if Some(&wd) != self.file_wd.as_ref() {
            let _ = self.inotify.watches().remove(wd);
            return Err(io::Error::other(
                "the served file's watch descriptor changed",
            ));
        }
        Ok(())
    }

    fn set_following(&mut self, following: bool) {
        self.following = following;
        self.stats.following.store(following, Ordering::Relaxed);
    }

    /// Reads every pending inotify event and looks at the file if any came; says what the
    /// shards need to hear, or why to stop.
    fn take_events(&mut self) -> Result<News, Error> {
        let mut buffer = [0u8; 4096];
        let mut look_at_path = false;
        let mut dir_gone = false;
        let mut any = false;
        // Why one read? A read takes every event that fits, and the buffer holds hundreds;
        // if more are left, the descriptor is still readable and the next wait returns at
        // once. Reading again until EAGAIN would cost a system call on every append.
        let events = match self.inotify.read_events(&mut buffer) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(News::Nothing),
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
            return Ok(News::Nothing);
        }
        Ok(self.evaluate(look_at_path, dir_gone))
    }
}

/// Resolves when the server is asked to stop or the audience bell rings.
async fn interrupted<S, A>(stop: Pin<&mut S>, arrival: Pin<&mut A>) -> Result<Wake, Error>
where
    S: Future<Output = Result<(), Error>>,
    A: Future<Output = io::Result<()>>,
{
    future::or(async { stop.await.map(|()| Wake::Stop) }, async {
        arrival
            .await
            .map_err(|e| Error::io("waiting for the audience bell", e))?;
        Ok(Wake::Audience)
    })
    .await
}

/// Sleeps until `until`; `Some` if stop or the audience bell came first.
async fn until_or<S, A>(
    until: Instant,
    stop: Pin<&mut S>,
    arrival: Pin<&mut A>,
) -> Result<Option<Wake>, Error>
where
    S: Future<Output = Result<(), Error>>,
    A: Future<Output = io::Result<()>>,
{
    let sleep = async {
        glommio::timer::Timer::new(until.saturating_duration_since(Instant::now())).await;
        Ok(None)
    };
    future::or(sleep, async { interrupted(stop, arrival).await.map(Some) }).await
}
