//! A shard: one executor pinned to a core, its SO_REUSEPORT listener, and the clients it
//! accepted. Nothing here is shared with other shards except [`Published`] (and the
//! [`Generation`]s it hands out) and the stats.

use crate::admission::{Admission, Backoff};
use crate::client;
use crate::state::{Audience, Generation, Interest, Phase, Published};
use crate::stats::{ClientStart, ShardStats};
use crate::sys;
use futures_lite::future;
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use glommio::timer::Timer;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tracing::{debug, error};

/// How long clients may keep reading after the file is gone (or rotated away) before they
/// are closed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long a shard waits for its clients to close on shutdown before it stops anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// How long to pause accepting after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a full socket waits before trying again when it cannot join the room set.
const ROOM_RETRY: Duration = Duration::from_millis(1);

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
    /// An empty epoll set, for the shard's sockets that wait for room (see [`watch_room`]).
    pub room: OwnedFd,
    /// Whether the HTTP face is on (`--no-http` turns it off).
    pub http: bool,
    /// The web page `GET /` sends a browser (`web::page`), made once for every shard.
    pub page: Arc<str>,
}

#[derive(Default)]
struct Slot {
    /// Woken when the file grows, the phase changes or a new generation is taken in (a
    /// caught-up client).
    growth: Option<Waker>,
    /// Woken when the phase changes or a new generation is taken in (a client waiting on
    /// its socket).
    phase: Option<Waker>,
    /// Where the client is in the file, once its header is read.
    offset: Option<u64>,
    /// The socket of a client waiting for growth that the doorbell may send to directly.
    direct: Option<RawFd>,
    /// Woken when the client's full socket has room again.
    room: Option<Waker>,
    /// The client's socket and its tag, once in the shard's room set.
    watched: Option<(RawFd, u32)>,
    /// Whether the client's start is recorded in the shard's stats.
    started: bool,
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
    /// The epoll set of sockets that have been full (see [`watch_room`]).
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
                    if slot.watched.is_some_and(|(_, t)| t == tag) {
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
        let slot = shard.attach_watcher();
        future::poll_fn(move |cx| {
            if shard.phase() >= phase {
                return Poll::Ready(());
            }
            slot.wait_phase(cx.waker());
            Poll::Pending
        })
    }

    /// A slot that is not a client: for the shard's own tasks that watch the phase.
    fn attach_watcher(self: &Rc<Self>) -> ClientSlot {
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

/// The key a client's socket has in the room set: its slot, and a tag from its id.
fn room_key(index: usize, tag: u32) -> u64 {
    (index as u64) << 32 | u64::from(tag)
}

/// Wakes the shard's clients whose full sockets have room again, until the shard closes.
///
/// Why an epoll set, in a server built on io_uring? glommio 0.9 has no public way to await a
/// socket's writability: its `poll_write` always tries a `send` first. And a small `send`
/// is a poor test of room for `sendfile`: a full TCP socket still takes a byte or two into
/// the last packet it queued while it refuses the new packet `sendfile` needs, so a one-byte
/// probe in its place spun, a byte per turn, until the peer acknowledged more
/// (docs/benchmarks.md, "Full sockets: the probe that spun"). The set holds each socket of
/// the shard that has ever been full, edge-triggered on room: an edge is the kernel's own
/// "writable" (a third of the buffer free), the one a single-thread epoll server waits for.
/// The set's descriptor is awaited through the shard's io_uring like any other, and one
/// wake-up collects every socket that drained meanwhile. A socket joins once, the first time
/// it is full; after that a stall costs no system call of its own.
async fn watch_room(shard: Rc<Shard>) {
    let mut keys = [0u64; 64];
    loop {
        if let Err(e) = sys::readable_or_soon(shard.room.as_fd()).await {
            error!(shard = shard.index, error = %e, "waiting for full sockets to drain");
            Timer::new(ROOM_RETRY).await;
        }
        loop {
            match sys::epoll_ready(shard.room.as_fd(), &mut keys) {
                Ok(n) => {
                    shard.room_ready(&keys[..n]);
                    if n < keys.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error!(shard = shard.index, error = %e, "collecting sockets with room");
                    break;
                }
            }
        }
    }
}

/// Sends a waiting client everything up to `size`, if it has a direct socket and the socket
/// takes it all; adds what went out to `sent`. `false` means the client's task must run.
fn send_direct(slot: &mut Slot, file: Option<BorrowedFd<'_>>, size: u64, sent: &mut u64) -> bool {
    let (Some(sock), Some(file), Some(offset)) = (slot.direct, file, slot.offset) else {
        return false;
    };
    if offset >= size {
        // Nothing new for this one: it keeps waiting.
        return true;
    }
    let due = size - offset;
    let count = usize::try_from(due).map_or(client::CHUNK, |d| d.min(client::CHUNK));
    match crate::sys::sendfile(sock, file, offset, count) {
        Ok(n) => {
            slot.offset = Some(offset + n as u64);
            *sent += n as u64;
            n as u64 == due
        }
        Err(_) => false,
    }
}

/// A client's place in its shard; dropping it forgets the client.
pub struct ClientSlot {
    shard: Rc<Shard>,
    index: usize,
    /// `None` for the shard's own tasks, which are not counted as clients.
    id: Option<u64>,
}

impl ClientSlot {
    /// Records where the client starts streaming, for [`crate::Handle::client_starts`].
    pub fn started(&self, start: ClientStart) {
        self.shard.slots.borrow_mut()[self.index].started = true;
        self.shard.stats.started(self.index, start);
    }

    /// A number naming this client in logs, unique within its shard.
    pub fn id(&self) -> u64 {
        self.id.unwrap_or(u64::MAX)
    }

    /// Wake this task when the file grows or the phase changes. With `direct`, the client's
    /// socket, the shard may instead send the new bytes itself and leave the task asleep
    /// (see `Shard::bump`); the task then finds its offset moved on. Only a client reading
    /// the shard's current generation may ask for that: the shard sends from that file.
    pub fn wait_growth(&self, waker: &Waker, direct: Option<RawFd>) {
        {
            let mut slots = self.shard.slots.borrow_mut();
            let slot = &mut slots[self.index];
            if slot.growth.replace(waker.clone()).is_none() {
                self.shard.waiting.set(self.shard.waiting.get() + 1);
            }
            slot.phase = Some(waker.clone());
            slot.direct = direct;
        }
        self.shard.raise_interest();
    }

    /// Forgets the task's wish to hear about growth, and with it any direct sending.
    pub fn stop_waiting(&self) {
        let mut slots = self.shard.slots.borrow_mut();
        let slot = &mut slots[self.index];
        if slot.growth.take().is_some() {
            self.shard.waiting.set(self.shard.waiting.get() - 1);
        }
        slot.direct = None;
    }

    /// Where the client is: what it last set, or where direct sends have taken it since.
    pub fn offset(&self) -> Option<u64> {
        self.shard.slots.borrow()[self.index].offset
    }

    /// Wake this task when the phase changes.
    pub fn wait_phase(&self, waker: &Waker) {
        self.shard.slots.borrow_mut()[self.index].phase = Some(waker.clone());
    }

    /// Resolves when `socket`, which was just found full, has room again (or the server is
    /// closing, or the generation it reads has ended, or the socket failed: the next send
    /// says which).
    ///
    /// Why through the shard's epoll set? See [`watch_room`]. The socket joins the set the
    /// first time it is full and stays until the client goes; an edge that arrived before this
    /// call is stale (the socket filled since) and is not counted, as nothing is registered
    /// to hear it. The caller must call this right after the send that found the socket full,
    /// without yielding in between, or it could sleep through the edge it waits for.
    pub async fn until_room(&self, socket: RawFd, generation: Option<&Generation>) {
        if let Err(e) = self.watch_room(socket) {
            // Without the set (it takes kernel memory per socket), look again soon: slow for
            // this client, harmless to the others.
            debug!(shard = self.shard.index, client = self.id(), error = %e, "cannot watch the socket for room; polling it");
            Timer::new(ROOM_RETRY).await;
            return;
        }
        let mut registered = false;
        future::poll_fn(|cx| {
            let mut slots = self.shard.slots.borrow_mut();
            let slot = &mut slots[self.index];
            let ended = generation.is_some_and(|g| g.ending() >= crate::state::Ending::Closed);
            if self.shard.phase() >= Phase::Closing || ended {
                slot.room = None;
                return Poll::Ready(());
            }
            if registered && slot.room.is_none() {
                // The room task took the waker: the socket has news.
                return Poll::Ready(());
            }
            registered = true;
            slot.room = Some(cx.waker().clone());
            slot.phase = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Puts the client's socket in the shard's room set, if it is not there yet.
    fn watch_room(&self, socket: RawFd) -> io::Result<()> {
        let mut slots = self.shard.slots.borrow_mut();
        let slot = &mut slots[self.index];
        if slot.watched.is_some_and(|(fd, _)| fd == socket) {
            return Ok(());
        }
        let tag = self.id() as u32;
        sys::epoll_watch_room(self.shard.room.as_fd(), socket, room_key(self.index, tag))?;
        slot.watched = Some((socket, tag));
        Ok(())
    }

    /// Takes the client's socket out of the shard's room set; call before closing it.
    pub fn forget_room(&self) {
        let watched = self.shard.slots.borrow_mut()[self.index].watched.take();
        if let Some((socket, _)) = watched {
            // Closing the socket would take it out too, unless another reference to it lives
            // on (a pending io_uring operation); the explicit delete leaves no doubt.
            let _ = sys::epoll_forget(self.shard.room.as_fd(), socket);
        }
    }

    /// Records where the client is, for the lag report.
    pub fn set_offset(&self, offset: u64) {
        self.shard.slots.borrow_mut()[self.index].offset = Some(offset);
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let shard = &self.shard;
        let slot = std::mem::take(&mut shard.slots.borrow_mut()[self.index]);
        if slot.growth.is_some() {
            shard.waiting.set(shard.waiting.get() - 1);
        }
        if slot.started {
            shard.stats.ended(self.index);
        }
        shard.free.borrow_mut().push(self.index);
        if self.id.is_none() {
            return;
        }
        shard.clients.set(shard.clients.get() - 1);
        ShardStats::sub(&shard.stats.connected, 1);
        shard.audience.leave();
        shard.clients_changed();
        if shard.clients.get() == 0 {
            if let Some(waker) = shard.idle.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// Runs one shard until shutdown: adopts its listener, follows the doorbell, accepts clients.
pub async fn run(
    setup: ShardSetup,
    published: Arc<Published>,
    audience: Arc<Audience>,
    header_timeout: Duration,
    admission: Arc<Admission>,
    ready: impl FnOnce(),
) {
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
    // A second descriptor for the same socket, to stop it listening once the shard stops
    // accepting (see below); glommio's listener gives no access to its own.
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
    glommio::spawn_local(future::or(watch_room(room_shard), closing)).detach();

    let bell_shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            let next = future::or(async { doorbell.recv().await.map(|()| true) }, async {
                bell_shard.until_found_news().await;
                Some(false)
            });
            futures_lite::pin!(next);
            // Why look before waiting? A ring that is already there came while the shard
            // was sending the last one around: the file grows faster than the shard can
            // send it. Taking it at once, again and again, would keep the shard from its
            // reactor for as long as that lasts, and new connections would sit unaccepted
            // (docs/benchmarks.md, "A busy shard that never looked at its reactor"). So such
            // a ring, like growth the shard found itself, waits for a turn through the
            // reactor first.
            let (rang, waited) = match future::poll_once(&mut next).await {
                Some(rang) => (rang, false),
                None => (next.await, true),
            };
            let turn_first = match rang {
                None => break,
                Some(true) => {
                    ShardStats::add(&bell_shard.stats.doorbells, 1);
                    !waited
                }
                Some(false) => true,
            };
            if turn_first {
                client::take_turns().await;
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

    ready();
    debug!(shard = index, "accepting");
    let stop = shard.until_phase(Phase::Draining);
    futures_lite::pin!(stop);
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            (&mut stop).await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                ShardStats::add(&shard.stats.accepted, 1);
                // Why decide before reading anything? A peer that may not connect, or that
                // would go over a limit, then costs one accept and one close, and never a
                // task or a header timer.
                let peer = stream.peer_addr().ok();
                match admission.admit(peer.map(|p| p.ip())) {
                    Ok(ticket) => {
                        glommio::spawn_local(client::serve(shard.clone(), stream, ticket)).detach();
                    }
                    Err(why) => {
                        let peer = peer.map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()));
                        let peer = peer.map_or("unknown".to_string(), |p| p.to_string());
                        admission.refused(index, &shard.stats, peer, why);
                        drop(stream);
                    }
                }
            }
            Some(Err(e)) => {
                // Out of descriptors or memory: the connection waits in the backlog; pause
                // rather than spin on it. The admission state logs it without flooding.
                let e = io::Error::from(e);
                let backoff = admission.accept_failed(index, &shard.stats, &e);
                if backoff == Backoff::Start {
                    glommio::spawn_local(admission.clone().watch_shortage()).detach();
                }
                if backoff != Backoff::No {
                    Timer::new(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    // Why not just drop the listener? Its last accept was queued in the shard's io_uring,
    // and the kernel keeps a reference to the socket until that accept is cancelled, which
    // can be after the process has exited (the ring is torn down in the background), so a
    // server restarted at once could not bind the port. Shutting the socket down takes it
    // out of LISTEN now, whoever still holds it (docs/benchmarks.md, "Where the constants
    // come from").
    match &listening {
        Ok(fd) => {
            if let Err(e) = sys::stop_listening(fd.as_fd()) {
                error!(shard = index, error = %e, "cannot stop listening");
            }
        }
        Err(e) => error!(shard = index, error = %e, "cannot stop listening: no descriptor for it"),
    }
    drop(listener);
    drop(listening);

    if shard.phase() == Phase::Draining {
        future::or(shard.until_no_clients(), async {
            Timer::new(DRAIN_GRACE).await;
        })
        .await;
        shard.advance(Phase::Closing);
    }
    let closed = future::or(
        async {
            shard.until_no_clients().await;
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
            shard = index,
            clients = shard.clients.get(),
            "clients still open after shutdown grace"
        );
    }
}
