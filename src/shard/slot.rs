//! A client's place in its shard ([`ClientSlot`]): what the shard knows about it, how it
//! waits for growth, the phase or room on its socket, and the shard's set of full sockets
//! that wakes it when its socket drains.

use super::Shard;
use crate::pace::CHUNK;
use crate::state::{Generation, Phase};
use crate::stats::{ClientStart, ShardStats};
use crate::sys;
use futures_lite::future;
use glommio::timer::Timer;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
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
    /// The socket of a client waiting for growth that the doorbell may send to directly.
    pub(super) direct: Option<RawFd>,
    /// Woken when the client's full socket has room again.
    pub(super) room: Option<Waker>,
    /// The client's socket and its tag, once in the shard's room set.
    pub(super) in_room: Option<(RawFd, u32)>,
    /// Whether the client's start is recorded in the shard's stats.
    pub(super) started: bool,
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
    let (Some(sock), Some(file), Some(offset)) = (slot.direct, file, slot.offset) else {
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
            slot.offset = Some(offset + n as u64);
            *sent += n as u64;
            n as u64 == due
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
    /// Why through the shard's epoll set? See [`wake_drained`]. The socket joins the set the
    /// first time it is full and stays until the client goes; an edge that arrived before this
    /// call is stale (the socket filled since) and is not counted, as nothing is registered
    /// to hear it. The caller must call this right after the send that found the socket full,
    /// without yielding in between, or it could sleep through the edge it waits for.
    pub async fn until_room(&self, socket: RawFd, generation: Option<&Generation>) {
        if let Err(e) = self.join_room(socket) {
            // Without the set (it takes kernel memory per socket), look again soon: slow for
            // this client, harmless to the others.
            debug!(shard = self.shard.index, client = self.id(), error = %e, "cannot put the socket in the room set; polling it");
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
    fn join_room(&self, socket: RawFd) -> io::Result<()> {
        let mut slots = self.shard.slots.borrow_mut();
        let slot = &mut slots[self.index];
        if slot.in_room.is_some_and(|(fd, _)| fd == socket) {
            return Ok(());
        }
        let tag = self.id() as u32;
        sys::epoll_add_room(self.shard.room.as_fd(), socket, room_key(self.index, tag))?;
        slot.in_room = Some((socket, tag));
        Ok(())
    }

    /// Takes the client's socket out of the shard's room set; call before closing it.
    pub fn forget_room(&self) {
        let in_room = self.shard.slots.borrow_mut()[self.index].in_room.take();
        if let Some((socket, _)) = in_room {
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
