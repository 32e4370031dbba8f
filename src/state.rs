//! What the watcher and the shards share: the file, its size, the server's phase, and the
//! doorbells with which the watcher tells a shard that something changed.
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

use glommio::channels::shared_channel::ConnectedSender;
use std::fs::File;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

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

    /// The served file's identity (see [`FileId`]), once it exists.
    pub fn file_id(&self) -> Option<FileId> {
        self.file().and_then(|f| FileId::of(f).ok())
    }

    /// The file's size as the watcher last saw it.
    ///
    /// Why sequentially consistent? It pairs with [`Interest`]: see [`Bells::ring_waiting`].
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Closing,
            _ => Phase::Aborting,
        }
    }

    /// Publishes the file the watcher opened (only the first call counts).
    pub(crate) fn set_file(&self, file: File) {
        let _ = self.file.set(file);
    }

    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::SeqCst);
    }

    /// Moves the phase forward; it never goes back.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }
}

/// Which file is served: the same across server restarts, different once the file is
/// replaced. Clients compare it for equality only (HTTP's `Tailsrv-File`, tailsrv-fetch's
/// rotation check); its text is otherwise opaque and may gain parts.
///
/// Why device, inode and birth time? Device and inode name the file while it exists, but a
/// file system reuses a deleted file's inode number, often at once (rotate, then recreate);
/// the birth time (statx) tells the new file from the old. Where the file system keeps no
/// birth time, that part is 0 and the identity is device and inode alone.
///
/// This is the one place the identity is made: whatever else should change it (a rotation
/// followed, a truncation) belongs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    /// Nanoseconds since the epoch; 0 when unknown.
    birth: u128,
}

impl FileId {
    /// The identity of an open file (one statx).
    pub fn of(file: &File) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        let birth = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            birth,
        })
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}-{:x}", self.dev, self.ino, self.birth)
    }
}

/// A shard's wish to hear about growth: raised by the shard when a client of its starts
/// waiting for the file to grow, taken down by the watcher when it rings for growth.
#[derive(Debug, Default)]
pub struct Interest(AtomicBool);

impl Interest {
    /// The shard's side: ring me when the file grows. The shard must look at
    /// [`Published::size`] again after this, for growth published just before it.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The watcher's side: takes the wish down; whether it was up.
    fn take(&self) -> bool {
        self.0.load(Ordering::SeqCst) && self.0.swap(false, Ordering::SeqCst)
    }
}

/// One shard as the watcher sees it: its doorbell and its interest in growth.
pub struct Bell {
    pub sender: ConnectedSender<()>,
    pub interest: Arc<Interest>,
}

/// The shards' doorbells, shared by the watcher's tasks.
pub struct Bells(pub Vec<Bell>);

impl Bells {
    /// Rings every shard; never waits. For what every shard must hear: a new phase, a file
    /// that appeared, a question from the metrics or the watchdog. A full channel means that
    /// shard has a ring it has not answered yet, and answering it will show it this change
    /// too; a closed one means the shard has stopped.
    pub fn ring_all(&self) {
        for bell in &self.0 {
            let _ = bell.sender.try_send(());
        }
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
                let _ = bell.sender.try_send(());
            }
        }
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
        let interest = Interest::default();
        assert!(!interest.take());
        interest.raise();
        interest.raise();
        assert!(interest.take());
        assert!(!interest.take());
    }

    #[test]
    fn file_id_is_stable_for_a_file_and_changes_when_it_is_replaced() {
        let dir = std::env::temp_dir().join(format!("tailsrv-fileid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"one").unwrap();
        let first = FileId::of(&File::open(&path).unwrap()).unwrap();
        // Reopened (as a restarted server would) and grown: the same file.
        std::fs::write(&path, b"one two").unwrap();
        assert_eq!(FileId::of(&File::open(&path).unwrap()).unwrap(), first);
        // Replaced by rename, with the old one kept open so its inode cannot be reused.
        let _old = File::open(&path).unwrap();
        std::fs::write(dir.join("g"), b"new").unwrap();
        std::fs::rename(dir.join("g"), &path).unwrap();
        let second = FileId::of(&File::open(&path).unwrap()).unwrap();
        assert_ne!(second, first);
        assert_ne!(second.to_string(), first.to_string());
        let text = first.to_string();
        assert_eq!(text.split('-').count(), 3, "{text}");
        assert!(
            text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
