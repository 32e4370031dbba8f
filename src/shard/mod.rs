//! A shard: one executor pinned to a core, its SO_REUSEPORT listener, and what its clients
//! share: the file's size and phase as the shard knows them, who waits for what, and the
//! wake-ups (doorbell, direct sends). Each client's place is in [`slot`]. Nothing here is shared with other shards except [`Published`] (and the
//! [`Generation`]s it hands out) and the stats.

use crate::pace::take_turns;
use crate::state::{Audience, Generation, Interest, Phase, Published};
use crate::stats::ShardStats;
use crate::sys;
use futures_lite::future;
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use glommio::timer::Timer;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tracing::error;

mod slot;

use slot::{send_direct, wake_drained, Slot};
pub use slot::{ClientSlot, Connection};

/// How long clients may keep reading after the file is gone (or rotated away) before they
/// are closed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long a shard waits for its clients to close on shutdown before it stops anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// How long to wait before looking at the growth bell again after it failed.
const BELL_RETRY: Duration = Duration::from_millis(10);

/// What woke a shard's doorbell task.
enum Ring {
    /// The watcher rang, through the channel (a new phase or file, or a question: one ring)
    /// or the growth bell (the growth rings it held, 0 if it was only nudged).
    Rang(u64),
    /// Growth the shard found itself (see [`Shard::found_news`]).
    Found,
}
/// What one shard starts with, made on the main thread.
pub struct ShardSetup {
    pub index: usize,
    pub listener: OwnedFd,
    pub doorbell: SharedReceiver<()>,
    /// Raised while a client waits for growth, so that the watcher rings for it.
    pub interest: Arc<Interest>,
    /// Rung when clients come or go, if systemd wants status lines.
    pub status: Option<SharedSender<()>>,
    pub stats: Arc<ShardStats>,
    /// An empty epoll set, for the shard's sockets that wait for room (see [`wake_drained`]).
    pub room: OwnedFd,
    /// Whether the HTTP face is on (`--no-http` turns it off).
    pub http: bool,
    /// The web page `GET /` sends a browser (`web::page`), made once for every shard.
    pub page: Arc<str>,
}

/// The shard's view of the world, shared by its tasks (one thread, so `Cell`s suffice).
pub struct Shard {
    pub index: usize,
    pub stats: Arc<ShardStats>,
    pub header_timeout: Duration,
    /// Whether clients may speak HTTP.
    pub http: bool,
    /// The web page, as `ShardSetup::page`.
    pub page: Arc<str>,
    published: Arc<Published>,
    /// Every shard's clients, counted for the watcher (see [`Audience`]).
    audience: Arc<Audience>,
    interest: Arc<Interest>,
    /// Whether this shard has raised its interest since the watcher last rang.
    interested: Cell<bool>,
    /// Clients waiting for the file to grow (slots with a growth waker).
    waiting: Cell<usize>,
    /// The size of `current` this shard knows of.
    size: Cell<u64>,
    /// The generation new clients read, as this shard last took it in.
    current: RefCell<Option<Arc<Generation>>>,
    /// The [`Published::epoch`] that `current` was taken in at.
    epoch: Cell<u64>,
    phase: Cell<Phase>,
    /// Bumped whenever the size, the generation or the phase changes.
    changes: Cell<u64>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    clients: Cell<usize>,
    next_id: Cell<u64>,
    idle: RefCell<Option<Waker>>,
    /// Growth the shard found itself while raising its interest, for the doorbell task.
    found_news: Cell<bool>,
    /// The doorbell task, while it waits.
    bell_task: RefCell<Option<Waker>>,
    status_bell: Option<ConnectedSender<()>>,
    /// The epoll set of sockets that have been full (see [`wake_drained`]).
    room: OwnedFd,
}

impl Shard {
    fn new(
        index: usize,
        stats: Arc<ShardStats>,
        published: Arc<Published>,
        audience: Arc<Audience>,
        interest: Arc<Interest>,
        header_timeout: Duration,
        room: OwnedFd,
    ) -> Self {
        Shard {
            index,
            stats,
            header_timeout,
            http: true,
            page: Arc::from(""),
            published,
            audience,
            interest,
            interested: Cell::new(false),
            waiting: Cell::new(0),
            size: Cell::new(0),
            current: RefCell::default(),
            // Never an epoch the watcher published: the first look takes whatever is there.
            epoch: Cell::new(u64::MAX),
            phase: Cell::new(Phase::Running),
            changes: Cell::new(0),
            slots: RefCell::default(),
            free: RefCell::default(),
            clients: Cell::new(0),
            next_id: Cell::new(0),
            idle: RefCell::default(),
            found_news: Cell::new(false),
            bell_task: RefCell::default(),
            status_bell: None,
            room,
        }
    }

    /// Tells the watcher the client count changed, if it wants to know.
    fn clients_changed(&self) {
        if let Some(bell) = &self.status_bell {
            // Full means the watcher has not looked yet; it will see this change too.
            let _ = bell.try_send(());
        }
    }

    /// The size of the current generation this shard knows of.
    pub fn size(&self) -> u64 {
        self.size.get()
    }

    /// The generation new clients read, as this shard last took it in.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.borrow().clone()
    }

    /// Whether `generation` is the one this shard serves to new clients.
    pub fn is_current(&self, generation: &Generation) -> bool {
        self.current
            .borrow()
            .as_deref()
            .is_some_and(|c| std::ptr::eq(c, generation))
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Bumped whenever the size, the generation or the phase changes.
    pub fn changes(&self) -> u64 {
        self.changes.get()
    }

    /// The current file's size right now, from the file itself rather than the last doorbell.
    ///
    /// Why not the published size? `-n` means the last n bytes at the moment the header is
    /// processed; the watcher may not have seen the latest append yet. And why look at the
    /// epoch first? A header that arrives while FILE is switched to a new file (it appeared,
    /// was rotated or truncated) with the doorbell still on its way must be answered
    /// against the new file, which the watcher has already published.
    pub fn fresh_size(&self) -> u64 {
        if self.published.epoch() != self.epoch.get() {
            self.refresh();
        }
        let current = self.current.borrow();
        let Some(generation) = current.as_deref() else {
            return self.size();
        };
        match sys::fstat(generation.file()) {
            Ok(st) => {
                let size = st.st_size as u64;
                drop(current);
                if size > self.size() {
                    // The bytes exist, so everyone may have them now. Wake the waiting
                    // clients here: the doorbell that follows will find nothing new.
                    self.size.set(size);
                    self.bump(false);
                }
                size
            }
            Err(_) => self.size(),
        }
    }

    /// Answers the doorbell: takes in the news, then asks to hear of growth again if
    /// clients still wait for it.
    fn refresh(&self) {
        self.take_news();
        self.raise_interest();
    }

    /// Asks the watcher to ring when the file grows, if any client waits for that and the
    /// shard has not asked since the last ring.
    fn raise_interest(&self) {
        if self.interested.get() || self.waiting.get() == 0 {
            return;
        }
        self.interested.set(true);
        self.interest.raise();
        // Growth the watcher published before it saw the flag rings nobody: the shard must
        // take it in itself. See `Bells::ring_waiting`. (A new generation is always rung.)
        let published = self.current.borrow().as_ref().map_or(0, |g| g.size());
        if published > self.size.get() {
            self.found_news();
        }
    }

    /// Hands growth the shard found itself to the doorbell task, as if the watcher had rung.
    ///
    /// Why not take it in here and now? This runs when a client starts waiting, and right
    /// after the shard has sent an append to its clients. While the file grows faster than
    /// the shard can send it around, there is always new growth by then: taking it in at
    /// once, in a loop, would keep the shard from ever looking at its reactor again (new
    /// connections, headers, drained sockets). The doorbell task takes a turn first.
    fn found_news(&self) {
        self.found_news.set(true);
        if let Some(waker) = self.bell_task.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves when the shard has found growth by itself (see [`Shard::found_news`]).
    fn until_found_news(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            if self.found_news.replace(false) {
                return Poll::Ready(());
            }
            *self.bell_task.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Resolves when the watcher has rung the growth bell, with the rings it holds.
    async fn growth_rung(&self) -> Option<Ring> {
        loop {
            match self.interest.answer_growth() {
                Ok(None) => {}
                Ok(Some(rings)) => return Some(Ring::Rang(rings)),
                Err(e) => {
                    // Cannot happen to an eventfd of ours short of a kernel bug; the channel
                    // and the shard's own look still bring news, so say it and carry on.
                    error!(shard = self.index, error = %e, "reading the growth bell");
                    Timer::new(BELL_RETRY).await;
                }
            }
            if let Err(e) = sys::readable_or_soon(self.interest.growth_bell()).await {
                error!(shard = self.index, error = %e, "waiting for the growth bell");
                Timer::new(BELL_RETRY).await;
            }
        }
    }

    /// Takes in what the watcher published and wakes the clients it concerns.
    fn take_news(&self) {
        // The watcher took the interest flag down if it rang for growth.
        self.interested.set(false);
        // Why compare epochs before taking the lock? The epoch changes a few times a day,
        // the size on every append: the lock is taken only for the former.
        let epoch = self.published.epoch();
        let switched = epoch != self.epoch.get();
        if switched {
            self.epoch.set(epoch);
            let current = self.published.current();
            self.size.set(current.as_ref().map_or(0, |g| g.size()));
            // The generation this replaces closes here, if no client of this shard reads it.
            *self.current.borrow_mut() = current;
        }
        let published = self.current.borrow().as_ref().map_or(0, |g| g.size());
        let size = published.max(self.size.get());
        let grew = size > self.size.get();
        self.size.set(size);
        self.advance(self.published.phase());
        if switched {
            // Every client looks again: at the new file, or at how its own generation ends.
            self.bump(true);
        } else if grew {
            self.bump(false);
        }
        if let Some(asked) = self.stats.heartbeat.pending() {
            let slots = self.slots.borrow();
            let lags = slots
                .iter()
                .filter_map(|s| s.offset)
                .map(|o| size.saturating_sub(o));
            self.stats.lag.store(lags);
            self.stats.heartbeat.answer(asked);
        }
    }

    /// Moves the shard's phase forward (never back) and wakes everyone if it changed.
    fn advance(&self, phase: Phase) {
        if phase > self.phase.get() {
            self.phase.set(phase);
            self.bump(true);
        }
    }

    /// Something changed: sends new bytes straight to the clients that can take them, and
    /// wakes every other client waiting for growth (and, if the phase or the generation
    /// changed, every task waiting on the phase).
    ///
    /// Why send from here rather than wake each client's task? For a caught-up client the
    /// whole job of an append is one sendfile. Doing it here, back to back for every such
    /// client, skips a task wake-up and a poll per client per append, and the sockets get
    /// their bytes in one burst, as a single-thread epoll server would send them. A client
    /// whose socket takes less than is due, or fails, is left to its task, which knows what
    /// to do about it.
    fn bump(&self, phase_changed: bool) {
        self.changes.set(self.changes.get() + 1);
        let size = self.size.get();
        let current = self.current.borrow();
        let file = current.as_deref().map(Generation::file);
        let mut sent = 0u64;
        let mut wakers = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            for slot in slots.iter_mut() {
                if slot.growth.is_some()
                    && !phase_changed
                    && send_direct(slot, file, size, &mut sent)
                {
                    continue;
                }
                if let Some(waker) = slot.growth.take() {
                    self.waiting.set(self.waiting.get() - 1);
                    slot.direct = None;
                    wakers.push(waker);
                }
                if phase_changed {
                    wakers.extend(slot.phase.take());
                }
            }
        }
        drop(current);
        if sent > 0 {
            ShardStats::add(&self.stats.bytes_sent, sent);
        }
        // Wake outside the borrow: a waker may run code that registers again.
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Wakes the clients behind `keys`, whose sockets have room again (or an error to show).
    fn room_ready(&self, keys: &[u64]) {
        let mut wakers = Vec::with_capacity(keys.len());
        {
            let mut slots = self.slots.borrow_mut();
            for &key in keys {
                let (index, tag) = ((key >> 32) as usize, key as u32);
                // Why the tag? A slot is reused by the next client; an edge for the one
                // before must not wake it (harmless, but a wasted send).
                if let Some(slot) = slots.get_mut(index) {
                    if slot.in_room == Some(tag) {
                        wakers.extend(slot.room.take());
                    }
                }
            }
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    fn alloc_slot(self: &Rc<Self>, id: Option<u64>) -> ClientSlot {
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        ClientSlot {
            shard: self.clone(),
            index,
            id,
        }
    }

    /// Registers a new client; it is counted until the returned guard drops.
    pub fn attach(self: &Rc<Self>) -> ClientSlot {
        self.clients.set(self.clients.get() + 1);
        ShardStats::add(&self.stats.connected, 1);
        self.audience.arrive();
        self.clients_changed();
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.alloc_slot(Some(id))
    }

    /// Resolves once the shard's phase is at least `phase`.
    pub fn until_phase(self: &Rc<Self>, phase: Phase) -> impl Future<Output = ()> + 'static {
        let shard = self.clone();
        let slot = shard.attach_task();
        future::poll_fn(move |cx| {
            if shard.phase() >= phase {
                return Poll::Ready(());
            }
            slot.wait_phase(cx.waker());
            Poll::Pending
        })
    }

    /// A slot that is not a client: for the shard's own tasks that wait on the phase.
    fn attach_task(self: &Rc<Self>) -> ClientSlot {
        self.alloc_slot(None)
    }

    /// Resolves once no client is connected.
    async fn until_no_clients(&self) {
        future::poll_fn(|cx| {
            if self.clients.get() == 0 {
                return Poll::Ready(());
            }
            *self.idle.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A shard that is up: its state, shared by its tasks, and its listener, for the accept
/// loop ([`crate::accept`]).
pub struct Started {
    pub shard: Rc<Shard>,
    pub listener: glommio::net::TcpListener,
    /// A second descriptor for the listening socket, to stop it listening once the shard
    /// stops accepting; glommio's listener gives no access to its own.
    pub listening: io::Result<OwnedFd>,
}

/// Starts one shard on its executor: adopts its listener, connects to its doorbell, and
/// starts the tasks that follow the doorbell and wake clients whose sockets drained.
pub async fn start(
    setup: ShardSetup,
    published: Arc<Published>,
    audience: Arc<Audience>,
    header_timeout: Duration,
) -> Started {
    let ShardSetup {
        index,
        listener,
        doorbell,
        interest,
        status,
        stats,
        room,
        http,
        page,
    } = setup;
    let listening = listener.try_clone();
    let listener = sys::adopt_listener(listener);
    let doorbell = crate::state::connect_patiently(doorbell.connect()).await;
    let status_bell = match status {
        Some(status) => Some(crate::state::connect_patiently(status.connect()).await),
        None => None,
    };
    let shard = Rc::new(Shard {
        status_bell,
        http,
        page,
        ..Shard::new(
            index,
            stats,
            published,
            audience,
            interest,
            header_timeout,
            room,
        )
    });
    shard.refresh();

    let room_shard = shard.clone();
    let closing = shard.until_phase(Phase::Closing);
    glommio::spawn_local(future::or(wake_drained(room_shard), closing)).detach();

    let bell_shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            let next = future::or(
                async { doorbell.recv().await.map(|()| Ring::Rang(1)) },
                future::or(bell_shard.growth_rung(), async {
                    bell_shard.until_found_news().await;
                    Some(Ring::Found)
                }),
            );
            futures_lite::pin!(next);
            // Why look before waiting? A ring that is already there came while the shard
            // was sending the last one around: the file grows faster than the shard can
            // send it. Taking it at once, again and again, would keep the shard from its
            // reactor for as long as that lasts, and new connections would sit unaccepted
            // (docs/benchmarks.md, "A busy shard that never looked at its reactor"). So such
            // a ring, like growth the shard found itself, waits for a turn through the
            // reactor first.
            let (ring, waited) = match future::poll_once(&mut next).await {
                Some(ring) => (ring, false),
                None => (next.await, true),
            };
            let turn_first = match ring {
                None => break,
                Some(Ring::Rang(rings)) => {
                    ShardStats::add(&bell_shard.stats.doorbells, rings);
                    !waited
                }
                Some(Ring::Found) => true,
            };
            if turn_first {
                take_turns().await;
            }
            bell_shard.refresh();
        }
        // The watcher is gone: nobody will tell us about the file any more. If it left us
        // draining, the drain runs its course; otherwise it stopped unexpectedly: close.
        bell_shard.refresh();
        if bell_shard.phase() == Phase::Running {
            bell_shard.advance(Phase::Closing);
        }
    })
    .detach();

    Started {
        shard,
        listener,
        listening,
    }
}

impl Shard {
    /// Once the shard has stopped accepting: lets a drain run its course (at most
    /// [`DRAIN_GRACE`]), then gives its clients [`CLOSE_GRACE`] to close.
    pub async fn wind_down(&self) {
        if self.phase() == Phase::Draining {
            future::or(self.until_no_clients(), async {
                Timer::new(DRAIN_GRACE).await;
            })
            .await;
            self.advance(Phase::Closing);
        }
        let closed = future::or(
            async {
                self.until_no_clients().await;
                true
            },
            async {
                Timer::new(CLOSE_GRACE).await;
                false
            },
        )
        .await;
        if !closed {
            error!(
                shard = self.index,
                clients = self.clients.get(),
                "clients still open after shutdown grace"
            );
        }
    }
}
