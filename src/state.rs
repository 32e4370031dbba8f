//! What the watcher and the shards share: the file's current generation and its size, the
//! server's phase, and the doorbells with which the watcher tells a shard that something
//! changed.
//!
//! Why a doorbell and not a queue of sizes? Shared channels are bounded and single-producer,
//! and the watcher must never wait on a slow shard. So the watcher stores the news in
//! [`Published`] (atomics any shard can read) and then `try_send`s a `()` on a channel of
//! capacity one per shard. A full channel means that shard has a ring it has not answered
//! yet; when it does, it reads the atomics and so sees this change too. Every shard always
//! ends up with the latest size, and the watcher never blocks.
//!
//! Why ring only some shards? Waking an executor is most of what an append costs: the wake
//! itself, then glommio's reactor pass and its memory barrier before it sleeps again. A shard
//! whose clients are all busy sending, or which has no clients at all, has nothing to do with
//! a new size, so each shard raises its [`Interest`] flag only while a client of its waits for
//! the file to grow, and the watcher rings for growth only the shards that raised it.
//!
//! Why does growth ring an eventfd rather than the channel? A glommio shared channel wakes
//! its *sender's* executor whenever the receiver takes an item while the sender sleeps (glommio
//! 0.9, `shared_channel.rs`: every successful receive calls the sender's sleep notifier).
//! Rung through the channel, every delivery woke the watcher a second time, for nothing, as
//! soon as a shard answered: measured with `strace -c -f`, one reader at 1,000 appends/s made
//! 2.6 executor sleeps (membarrier calls) per delivery, against 1.5 with the eventfd. So the
//! ring that comes with every append is an eventfd per shard ([`Interest`]), which the shard
//! awaits through its own io_uring and empties itself, with no way back to the watcher. The
//! channel stays for what every shard must hear and is rare: a new phase, a new file, a
//! question from the metrics or the watchdog.

use crate::file_id::FileId;
use glommio::channels::shared_channel::ConnectedSender;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What the shards need to know about the file and the server's state.
///
/// Why a generation behind a lock, when everything else here is an atomic? The file changes
/// only when FILE is rotated or truncated, a few times a day; the size changes on every
/// append. So the size lives in an atomic inside the [`Generation`], and the generation
/// itself is swapped under a mutex that a shard takes only when [`Published::epoch`] says
/// there is a new one to take: never on an append, never while it waits for the path.
#[derive(Debug, Default)]
pub struct Published {
    /// The file served under FILE's name now; `None` before it exists and between a
    /// rotation and the new file's appearing.
    current: Mutex<Option<Arc<Generation>>>,
    /// Bumped after every change of `current`.
    epoch: AtomicU64,
    phase: AtomicU8,
    /// Generations whose file is still open (held by a shard, a client or the watcher).
    open: Arc<AtomicU64>,
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// The file is gone (`--on-rotation exit`): accept nobody, let clients finish the bytes
    /// the file had, then close.
    Draining,
    /// Close every client now, in order (signal, or the end of the drain).
    Closing,
    /// Reset every client now: the file shrank, so bytes still queued in the kernel may no
    /// longer be the file's (see `client::abort`).
    Aborting,
}

impl Published {
    /// The generation served now, if the file exists.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes whenever [`Published::current`] does, or a generation's [`Ending`]: a shard
    /// compares it with the epoch it last took in and takes the lock only when they differ.
    ///
    /// Why sequentially consistent? The watcher stores the new generation (under the lock),
    /// then bumps the epoch, then rings; a shard that loads the new epoch and then takes the
    /// lock sees that generation or a later one, and with it every store the watcher made to
    /// the old one before (its final size and its state).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The current file's size as the watcher last saw it; 0 while there is none.
    pub fn size(&self) -> u64 {
        self.current().map_or(0, |g| g.size())
    }

    /// Generations whose file is still open: the current one and those with clients left.
    pub fn open_generations(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Closing,
            _ => Phase::Aborting,
        }
    }

    /// Makes `generation` the one new clients are served (`None`: there is no file now).
    /// The caller rings every shard afterwards.
    pub(crate) fn publish(&self, generation: Option<Arc<Generation>>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = generation;
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// A generation of `file`, counted among the open ones until it drops.
    ///
    /// Why an `Arc<File>`? A truncation starts a new generation of the same open file: it
    /// shares the descriptor rather than take another one.
    pub(crate) fn generation(&self, file: Arc<File>, id: FileId, size: u64) -> Arc<Generation> {
        self.open.fetch_add(1, Ordering::SeqCst);
        Arc::new(Generation {
            file,
            id,
            size: AtomicU64::new(size),
            state: AtomicU8::new(Ending::Live as u8),
            readers: AtomicU64::new(0),
            open: self.open.clone(),
        })
    }

    /// Says that a generation's [`Ending`] changed: shards take in the news as if a new
    /// generation had been published. The caller rings every shard afterwards.
    pub(crate) fn announce(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Moves the phase forward; it never goes back.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }
}

/// One file served under FILE's name, from when the watcher opened it (or saw it truncated)
/// until it was rotated away (or truncated again).
///
/// Every client reads one generation for its whole life, holding it by an `Arc`: a rotated
/// file stays open while clients still read its last bytes, and closes when the last of
/// them ends (or the shards and the watcher let go of it, if none read it).
#[derive(Debug)]
pub struct Generation {
    file: Arc<File>,
    id: FileId,
    size: AtomicU64,
    state: AtomicU8,
    /// Clients reading this generation now.
    readers: AtomicU64,
    open: Arc<AtomicU64>,
}

/// How a generation ends for the clients reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Ending {
    /// Still FILE: clients follow its growth.
    Live,
    /// Rotated away: clients get the bytes up to its final size, then an orderly end.
    Draining,
    /// The drain is over: close the clients still reading it, in order.
    Closed,
    /// Truncated: reset its clients (see `client::abort`).
    Reset,
}

impl Generation {
    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The open file itself, for a generation that follows this one on a truncation.
    pub(crate) fn shared_file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    /// The size the watcher last saw; final once the generation is no longer [`Ending::Live`].
    ///
    /// Why sequentially consistent? It pairs with [`Interest`]: see [`Bells::ring_waiting`].
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::SeqCst);
    }

    pub fn ending(&self) -> Ending {
        match self.state.load(Ordering::SeqCst) {
            0 => Ending::Live,
            1 => Ending::Draining,
            2 => Ending::Closed,
            _ => Ending::Reset,
        }
    }

    /// Moves the ending forward (never back); the caller then publishes and rings.
    pub(crate) fn end(&self, ending: Ending) {
        self.state.fetch_max(ending as u8, Ordering::SeqCst);
    }

    /// Clients reading this generation now.
    pub fn readers(&self) -> u64 {
        self.readers.load(Ordering::Relaxed)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A client's hold on the generation it reads: counts it among the readers until it drops.
pub struct Reader(Arc<Generation>);

impl Reader {
    pub fn new(generation: Arc<Generation>) -> Reader {
        generation.readers.fetch_add(1, Ordering::Relaxed);
        Reader(generation)
    }
}

impl std::ops::Deref for Reader {
    type Target = Generation;
    fn deref(&self) -> &Generation {
        &self.0
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A shard's wish to hear about growth: raised by the shard when a client of its starts
/// waiting for the file to grow, taken down by the watcher when it rings for growth. It
/// also counts the rings the watcher delivered, so that a test can tell when the shard has
/// answered every one (its `doorbells` count catches up).
#[derive(Debug)]
pub struct Interest {
    wish: AtomicBool,
    rung: AtomicU64,
    /// The growth bell: an eventfd the watcher adds to when it rings for growth, and the
    /// shard empties when it answers (see the module's "Why does growth ring an eventfd").
    growth: OwnedFd,
}

impl Interest {
    pub fn new() -> io::Result<Interest> {
        Ok(Interest {
            wish: AtomicBool::new(false),
            rung: AtomicU64::new(0),
            growth: crate::sys::eventfd()?,
        })
    }

    /// The shard's side: the growth bell, to await through the shard's io_uring.
    pub fn growth_bell(&self) -> BorrowedFd<'_> {
        self.growth.as_fd()
    }

    /// The shard's side: empties the growth bell. `None` if nobody rang it since the last
    /// answer; otherwise the growth rings it held (0 if it was only nudged, see
    /// [`Bells::ring_all`]). A ring made after this waits in the bell for the next look.
    pub fn answer_growth(&self) -> io::Result<Option<u64>> {
        let held = crate::sys::eventfd_take(self.growth.as_fd())?;
        Ok((held > 0).then_some(held % NUDGE))
    }

    /// The shard's side: ring me when the file grows. The shard must look at
    /// [`Generation::size`] again after this, for growth published just before it.
    pub fn raise(&self) {
        self.wish.store(true, Ordering::SeqCst);
    }

    /// The watcher's side: takes the wish down; whether it was up.
    fn take(&self) -> bool {
        self.wish.load(Ordering::SeqCst) && self.wish.swap(false, Ordering::SeqCst)
    }

    /// Rings delivered to the shard so far. A ring through the channel that found the last
    /// one still unanswered is not one: the shard hears both at once. Rings for growth all
    /// count, and the shard answers them all at once too (the eventfd adds them up).
    pub fn rings(&self) -> u64 {
        self.rung.load(Ordering::Relaxed)
    }
}

/// What a nudge adds to a growth bell: the counter's high half, so that the shard can tell
/// nudges (not counted as rings) from growth rings (the low half, counted).
const NUDGE: u64 = 1 << 32;

/// One shard as the watcher sees it: its doorbell and its interest in growth.
pub struct Bell {
    pub sender: ConnectedSender<()>,
    pub interest: Arc<Interest>,
}

impl Bell {
    /// Rings through the channel, without waiting; counts the ring if it was delivered.
    fn ring(&self) {
        if self.sender.try_send(()).is_ok() {
            self.interest.rung.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Nudges the growth bell: wakes the shard through its io_uring as a growth ring would,
    /// without counting as one (see [`Bells::ring_all`]).
    fn nudge(&self) {
        // Fails only if the counter would overflow, and the shard empties it on every answer.
        let _ = crate::sys::eventfd_add(self.interest.growth.as_fd(), NUDGE);
    }

    /// Rings the growth bell (one write to an eventfd, never blocks); counts the ring.
    fn ring_growth(&self) {
        // Fails only if the counter would overflow, and the shard empties it on every answer.
        if crate::sys::eventfd_bump(self.interest.growth.as_fd()).is_ok() {
            self.interest.rung.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The shards' doorbells, shared by the watcher's tasks.
pub struct Bells(pub Vec<Bell>);

impl Bells {
    /// Rings every shard; never waits. For what every shard must hear: a new phase, a file
    /// that appeared, a question from the metrics or the watchdog. A full channel means that
    /// shard has a ring it has not answered yet, and answering it will show it this change
    /// too; a closed one means the shard has stopped.
    ///
    /// Why also nudge the growth bell? Twice the same news, on two paths: the channel's ring
    /// travels through glommio's cross-thread wake-up (the shard's sleep notifier), the
    /// nudge through the kernel's completion of the poll the shard keeps on its growth bell.
    /// A shard once slept through a SIGTERM under load, its clients never closed (one full
    /// suite run in 22 beside two CPU hogs), as glommio 0.9 has been seen to lose a
    /// cross-thread wake-up before (docs/architecture.md, "Executors that do not stop").
    /// These rings are rare (a phase, a file, a question), so the second write costs
    /// nothing that matters, and the shard answers whichever comes first.
    pub fn ring_all(&self) {
        for bell in &self.0 {
            bell.ring();
            bell.nudge();
        }
    }

    /// Nudges every shard that has not answered its growth bell since it was last rung; says
    /// how many. For the watcher's quiet look, a second after its last wake-up: a ring that
    /// old should have been answered, unless the shard's wake-up was lost. The nudge writes
    /// the eventfd again, and a write wakes whatever polls it, as a new ring would, without
    /// counting as one.
    pub fn nudge_unanswered(&self) -> usize {
        let mut nudged = 0;
        for bell in &self.0 {
            if crate::sys::is_readable(bell.interest.growth.as_fd()).unwrap_or(false) {
                bell.nudge();
                nudged += 1;
            }
        }
        nudged
    }

    /// Rings the shards that have clients waiting for growth, after a new size was published.
    ///
    /// Why can no growth be missed? The watcher stores the size and then takes the interest
    /// flag; a shard raises the flag and then loads the size; all four are sequentially
    /// consistent, so at least one of the two sees the other's store: either the watcher
    /// sees the flag and rings, or the shard sees the new size itself.
    pub fn ring_waiting(&self) {
        for bell in &self.0 {
            if bell.interest.take() {
                bell.ring_growth();
            }
        }
    }
}

/// Whether anyone is connected, for the watcher: shards count their clients in and out here,
/// and the first to arrive and the last to leave ring the watcher's audience bell.
///
/// Why? With nobody connected, an append concerns nobody, yet inotify would wake the watcher
/// for each one (14 µs of CPU per append on a busy log that nobody watches). So the watcher
/// stops listening for modifications while the count is zero, and takes the file's size
/// again when the bell says someone came (see `watcher`). Why one count for all shards and
/// not a word per shard? The watcher needs only "anyone or nobody", and a count shared by
/// every shard turns 0 -> 1 once however the clients are spread; a connect costs one atomic
/// add, and only the two transitions cost a system call (an eventfd write).
#[derive(Debug)]
pub struct Audience {
    clients: AtomicU64,
    /// An eventfd, readable after the count went from 0 to 1 or from 1 to 0.
    bell: OwnedFd,
}

impl Audience {
    pub fn new() -> io::Result<Audience> {
        Ok(Audience {
            clients: AtomicU64::new(0),
            bell: crate::sys::eventfd()?,
        })
    }

    /// A client arrived; the first one rings the bell.
    pub fn arrive(&self) {
        if self.clients.fetch_add(1, Ordering::SeqCst) == 0 {
            self.ring();
        }
    }

    /// A client left; the last one rings the bell.
    pub fn leave(&self) {
        if self.clients.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.ring();
        }
    }

    fn ring(&self) {
        // Cannot fail short of a counter overflow, and the watcher empties it on every ring.
        let _ = crate::sys::eventfd_bump(self.bell.as_fd());
    }

    /// The watcher's side: empties the bell, then says whether anyone is connected.
    ///
    /// Why in that order? A client that arrives after the count was read rings after the
    /// bell was emptied, so the bell is readable again and the watcher looks once more: it
    /// can be late by one wake-up, never miss an arrival.
    pub(crate) fn answer(&self) -> io::Result<bool> {
        crate::sys::eventfd_take(self.bell.as_fd())?;
        Ok(self.anyone())
    }

    pub fn anyone(&self) -> bool {
        self.clients.load(Ordering::SeqCst) > 0
    }

    /// The bell, for the watcher to await.
    pub(crate) fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

/// How often a task waiting for the other end of a shared channel to connect looks again.
const CONNECT_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Awaits `connect` (a shared channel's `connect()`), polling it again every 10 ms as well
/// as whenever glommio wakes it.
///
/// Why? glommio 0.9 can lose the wake-up that tells one side the other has connected: on a
/// busy machine a watcher or a shard then slept in io_uring for good (seen in tests and
/// with 16 servers started at once on one CPU; attaching a debugger, which interrupts the
/// sleep, let start-up finish at once). The connection itself is recorded in memory both
/// sides read, so polling again is enough to see it; the timer only makes sure the
/// executor wakes to do so. It runs only until the channel is connected.
pub(crate) async fn connect_patiently<F: Future>(connect: F) -> F::Output {
    let mut connect = std::pin::pin!(connect);
    let mut tick = glommio::timer::Timer::new(CONNECT_TICK);
    futures_lite::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = connect.as_mut().poll(cx) {
            return std::task::Poll::Ready(out);
        }
        while std::pin::Pin::new(&mut tick).poll(cx).is_ready() {
            tick = glommio::timer::Timer::new(CONNECT_TICK);
            // Look again now: the tick fired, so a missed wake-up may be behind us.
            if let std::task::Poll::Ready(out) = connect.as_mut().poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_is_taken_once() {
        let interest = Interest::new().unwrap();
        assert!(!interest.take());
        interest.raise();
        interest.raise();
        assert!(interest.take());
        assert!(!interest.take());
    }

    fn generation(published: &Published) -> Arc<Generation> {
        let file = File::open("/proc/self/exe").unwrap();
        let id = FileId::of(&file).unwrap();
        published.generation(Arc::new(file), id, 7)
    }

    #[test]
    fn a_generation_is_counted_open_until_its_last_holder_lets_go() {
        let published = Published::default();
        let first = generation(&published);
        published.publish(Some(first.clone()));
        let reader = Reader::new(first.clone());
        assert_eq!((published.open_generations(), first.readers()), (1, 1));
        let epoch = published.epoch();
        let second = generation(&published);
        published.publish(Some(second));
        assert!(published.epoch() > epoch);
        drop(first);
        assert_eq!(
            published.open_generations(),
            2,
            "a reader still holds the first"
        );
        drop(reader);
        assert_eq!(published.open_generations(), 1);
        published.publish(None);
        assert_eq!((published.open_generations(), published.size()), (0, 0));
    }

    #[test]
    fn an_ending_only_moves_forward() {
        let published = Published::default();
        let g = generation(&published);
        assert_eq!(g.ending(), Ending::Live);
        g.end(Ending::Closed);
        g.end(Ending::Draining);
        assert_eq!(g.ending(), Ending::Closed);
        g.end(Ending::Reset);
        assert_eq!(g.ending(), Ending::Reset);
    }

    #[test]
    fn audience_rings_on_the_first_arrival_and_the_last_departure() {
        let audience = Audience::new().unwrap();
        let rung = |a: &Audience| crate::sys::is_readable(a.bell()).unwrap();
        assert!(!rung(&audience) && !audience.answer().unwrap());
        audience.arrive();
        assert!(rung(&audience));
        assert!(audience.answer().unwrap());
        assert!(!rung(&audience), "answering empties the bell");
        audience.arrive();
        audience.leave();
        assert!(
            !rung(&audience),
            "a second client came and went: still someone"
        );
        audience.leave();
        assert!(rung(&audience));
        assert!(!audience.answer().unwrap());
        // Nobody looked in between: one readable bell for both transitions, and the count
        // tells the truth when the watcher does look.
        audience.arrive();
        audience.leave();
        audience.arrive();
        assert!(rung(&audience) && audience.answer().unwrap());
    }

    #[test]
    fn phase_only_moves_forward() {
        let published = Published::default();
        assert_eq!(published.phase(), Phase::Running);
        published.set_phase(Phase::Closing);
        published.set_phase(Phase::Draining);
        assert_eq!(published.phase(), Phase::Closing);
        published.set_phase(Phase::Aborting);
        assert_eq!(published.phase(), Phase::Aborting);
    }
}
