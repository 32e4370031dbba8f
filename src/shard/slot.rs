//! A client's place in its shard ([`ClientSlot`]) and its [`Connection`]: what the shard
//! knows about it, how it waits for growth, the phase or room on its socket, and the
//! shard's set of full sockets that wakes it when its socket drains.

use super::Shard;
use crate::pace::CHUNK;
use crate::state::{Generation, Phase};
use crate::stats::{ClientStart, ShardStats};
use crate::sys;
use futures_lite::future;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tracing::{debug, error};

/// How long a full socket waits before trying again when it cannot join the room set.
const ROOM_RETRY: Duration = Duration::from_millis(1);

#[derive(Default)]
pub(super) struct Slot {
    /// Woken when the file grows, the phase changes or a new generation is taken in (a
    /// caught-up client).
    pub(super) growth: Option<Waker>,
    /// Woken when the phase changes or a new generation is taken in (a client waiting on
    /// its socket).
    pub(super) phase: Option<Waker>,
    /// Where the client is in the file, once its header is read.
    pub(super) offset: Option<u64>,
    /// The socket of a client waiting for growth that the doorbell may send to directly,
    /// lent by its [`Connection`] (see [`Slot::direct_socket`]).
    pub(super) direct: Option<RawFd>,
    /// Woken when the client's full socket has room again.
    pub(super) room: Option<Waker>,
    /// The tag of the client's socket in the shard's room set, once it is there.
    pub(super) in_room: Option<u32>,
    /// Whether the client's start is recorded in the shard's stats.
    pub(super) started: bool,
}

impl Slot {
    /// The socket a client waiting for growth lent for direct sends, borrowed while the
    /// slot is.
    ///
    /// Why a raw descriptor and not a duplicate? Ten thousand waiting clients would hold
    /// twenty thousand descriptors. The client's [`Connection`] owns the socket; the slot
    /// only names it, for as long as the connection lends it.
    #[allow(unsafe_code)]
    fn direct_socket(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: `direct` is set only by `Connection::wait_growth`, to the descriptor of the
        // connection's own stream, and it is cleared by `stop_waiting`, by `Shard::bump` when
        // it wakes the task, and by `ClientSlot::drop`, which takes the whole slot first
        // thing. A `Connection` drops its `ClientSlot` before its stream (field order), and
        // hands out no `&mut` to the stream that could replace it, so the stream closes
        // the socket only after `direct` is cleared: while `direct` holds a descriptor, it is
        // the client's open socket. The borrow lives no longer than the borrow of the slot,
        // within one synchronous pass on the shard's thread, during which no connection
        // drops.
        self.direct.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }
}

/// The key a client's socket has in the room set: its slot, and a tag from its id.
pub(super) fn room_key(index: usize, tag: u32) -> u64 {
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
pub(super) async fn wake_drained(shard: Rc<Shard>) {
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
pub(super) fn send_direct(
    slot: &mut Slot,
    file: Option<BorrowedFd<'_>>,
    size: u64,
    sent: &mut u64,
) -> bool {
    let (Some(sock), Some(file), Some(offset)) = (slot.direct_socket(), file, slot.offset) else {
        return false;
    };
    if offset >= size {
        // Nothing new for this one: it keeps waiting.
        return true;
    }
    let due = size - offset;
    let count = usize::try_from(due).map_or(CHUNK, |d| d.min(CHUNK));
    match crate::sys::sendfile(sock, file, offset, count) {
        Ok(n) => {
            let n = n as u64;
            slot.offset = Some(offset + n);
            *sent += n;
            n == due
        }
        Err(_) => false,
    }
}

/// A client's place in its shard; dropping it forgets the client.
pub struct ClientSlot {
    pub(super) shard: Rc<Shard>,
    pub(super) index: usize,
    /// `None` for the shard's own tasks, which are not counted as clients.
    pub(super) id: Option<u64>,
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

    /// Wake this task when the file grows or the phase changes; `direct` as
    /// [`Connection::wait_growth`] lends it, the only caller.
    fn wait_growth(&self, waker: &Waker, direct: Option<RawFd>) {
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

    /// Records where the client is, for the lag report.
    pub fn set_offset(&self, offset: u64) {
        self.shard.slots.borrow_mut()[self.index].offset = Some(offset);
    }
}

/// A client's connection: its place in the shard, and its socket, which the shard may send
/// to directly while the client's task sleeps (see `Shard::bump`).
///
/// Why one value for both? The shard names the socket by its raw descriptor while the
/// client waits for growth ([`Slot::direct_socket`]); that is sound only if the slot forgets
/// it before the socket closes. Fields drop in the order they are declared: the slot
/// first, then the stream, which closes the socket. And nothing outside gets a `&mut` to
/// the stream, which could swap it for another.
pub struct Connection {
    slot: ClientSlot,
    stream: TcpStream,
}

impl Connection {
    /// The client in `slot`, connected by `stream`.
    pub fn new(slot: ClientSlot, stream: TcpStream) -> Self {
        Connection { slot, stream }
    }

    /// The client's stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The client's socket.
    pub fn socket(&self) -> BorrowedFd<'_> {
        sys::stream_fd(&self.stream)
    }

    /// Reads what the client sent, through glommio (which waits for it).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        use futures_lite::AsyncRead;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }

    /// Wake this task when the file grows or the phase changes. With `direct`, the shard may
    /// instead send the new bytes to the socket itself and leave the task asleep (see
    /// `Shard::bump`); the task then finds its offset moved on. Only a client reading the
    /// shard's current generation may ask for that: the shard sends from that file.
    pub fn wait_growth(&self, waker: &Waker, direct: bool) {
        let socket = direct.then(|| self.stream.as_raw_fd());
        self.slot.wait_growth(waker, socket);
    }

    /// Resolves when the socket, which was just found full, has room again (or the server is
    /// closing, or the generation it reads has ended, or the socket failed: the next send
    /// says which). The client counts as blocked meanwhile.
    ///
    /// Why through the shard's epoll set? See [`wake_drained`]. The socket joins the set the
    /// first time it is full and stays until the client goes; an edge that arrived before this
    /// call is stale (the socket filled since) and is not counted, as nothing is registered
    /// to hear it. The caller must call this right after the send that found the socket full,
    /// without yielding in between, or it could sleep through the edge it waits for.
    pub async fn until_room(&self, generation: Option<&Generation>) {
        let stats = &self.slot.shard.stats;
        ShardStats::add(&stats.full_waits, 1);
        ShardStats::add(&stats.blocked, 1);
        self.wait_for_room(generation).await;
        ShardStats::sub(&stats.blocked, 1);
    }

    /// [`Connection::until_room`], without the counting.
    async fn wait_for_room(&self, generation: Option<&Generation>) {
        if let Err(e) = self.join_room() {
            // Without the set (it takes kernel memory per socket), look again soon: slow for
            // this client, harmless to the others.
            debug!(shard = self.slot.shard.index, client = self.id(), error = %e, "cannot put the socket in the room set; polling it");
            Timer::new(ROOM_RETRY).await;
            return;
        }
        let mut registered = false;
        future::poll_fn(|cx| {
            let mut slots = self.slot.shard.slots.borrow_mut();
            let slot = &mut slots[self.slot.index];
            let ended = generation.is_some_and(|g| g.ending() >= crate::state::Ending::Closed);
            if self.slot.shard.phase() >= Phase::Closing || ended {
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
    fn join_room(&self) -> io::Result<()> {
        let mut slots = self.slot.shard.slots.borrow_mut();
        let slot = &mut slots[self.slot.index];
        if slot.in_room.is_some() {
            return Ok(());
        }
        let tag = self.id() as u32;
        let key = room_key(self.slot.index, tag);
        sys::epoll_add_room(self.slot.shard.room.as_fd(), self.socket(), key)?;
        slot.in_room = Some(tag);
        Ok(())
    }

    /// Takes the client's socket out of the shard's room set; call before closing it.
    pub fn forget_room(&self) {
        let in_room = self.slot.shard.slots.borrow_mut()[self.slot.index]
            .in_room
            .take();
        if in_room.is_some() {
            // Closing the socket would take it out too, unless another reference to it lives
            // on (a pending io_uring operation); the explicit delete leaves no doubt.
            let _ = sys::epoll_forget(self.slot.shard.room.as_fd(), self.socket());
        }
    }
}

impl Deref for Connection {
    type Target = ClientSlot;

    fn deref(&self) -> &ClientSlot {
        &self.slot
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
