//! Doorbells: how one thread wakes a task on another thread's glommio executor.
//!
//! A doorbell is a Unix socket pair. The ringer writes one byte without blocking; the bell
//! side is a glommio socket whose task sleeps until a byte arrives, then drains them all.
//! Rings coalesce: a full socket means unanswered rings are already waiting, so a failed
//! write loses nothing. What changed travels separately, in atomics the woken task reads.
//!
//! Why not glommio's shared channels? They wake a sleeping executor through an eventfd
//! that glommio watches from its latency ring. Under load that wake-up was lost: with 200
//! clients on two shards and an append every 2 ms, a shard fell asleep with a doorbell
//! waiting in its channel in one run of three, and its clients saw nothing more until an
//! unrelated event (a new connection) woke it; the watcher's further `try_send`s found the
//! channel full and could not wake it either. A byte on a socket wakes the executor through
//! an ordinary io_uring poll completion, the same path every client socket uses, and the
//! same test never stalled.

use glommio::net::UnixStream as GlommioStream;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// The side that rings. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct Ringer(Arc<UnixStream>);

/// The side that is rung, before it is attached to an executor.
#[derive(Debug)]
pub struct Bell(UnixStream);

/// A doorbell: ring one end, wait on the other.
pub fn doorbell() -> io::Result<(Ringer, Bell)> {
    let (ringer, bell) = UnixStream::pair()?;
    ringer.set_nonblocking(true)?;
    Ok((Ringer(Arc::new(ringer)), Bell(bell)))
}

impl Ringer {
    /// Rings; never blocks. A full socket means earlier rings are still unanswered.
    pub fn ring(&self) {
        match (&*self.0).write(&[1]) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The bell's side is gone: its executor has stopped; nobody to wake.
            Err(_) => {}
        }
    }
}

impl From<UnixStream> for Bell {
    fn from(socket: UnixStream) -> Self {
        Bell(socket)
    }
}

impl Bell {
    /// Moves the bell onto the current executor. Call it from inside the executor.
    pub fn attach(self) -> AttachedBell {
        // SAFETY: a connected Unix stream socket we own; ownership moves to glommio.
        AttachedBell(unsafe { GlommioStream::from_raw_fd(self.0.into_raw_fd()) })
    }

    /// The bell as a plain blocking socket, for a thread outside any executor.
    pub fn into_blocking(self) -> UnixStream {
        self.0
    }
}

/// A bell owned by an executor's task.
pub struct AttachedBell(GlommioStream);

impl AttachedBell {
    /// Sleeps until rung, then takes every pending ring. `false` once every ringer is gone.
    pub async fn wait(&mut self) -> bool {
        use futures_lite::AsyncReadExt;
        let mut rings = [0u8; 256];
        matches!(self.0.read(&mut rings).await, Ok(n) if n > 0)
    }

    /// Answers on the same socket (for a ringer that waits for a reply).
    pub async fn answer(&mut self) -> io::Result<()> {
        use futures_lite::AsyncWriteExt;
        self.0.write_all(&[1]).await
    }
}

/// Waits on a blocking socket for one answer byte.
pub fn await_answer(socket: &mut UnixStream) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    Ok(socket.read(&mut byte)? == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_coalesce_and_never_block() {
        let (ringer, bell) = doorbell().unwrap();
        // Far more rings than the socket buffer holds: none may block or fail loudly.
        for _ in 0..1_000_000 {
            ringer.ring();
        }
        let mut bell = bell.into_blocking();
        bell.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while let Ok(n) = bell.read(&mut buf) {
            total += n;
        }
        assert!(total > 0 && total < 1_000_000, "{total} rings buffered");
    }

    #[test]
    fn a_bell_wakes_its_executor_and_sees_the_ringer_go() {
        let (ringer, bell) = doorbell().unwrap();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .spawn(move || async move {
                let mut bell = bell.attach();
                let mut woken = 0;
                while bell.wait().await {
                    woken += 1;
                }
                woken
            })
            .unwrap();
        ringer.ring();
        std::thread::sleep(std::time::Duration::from_millis(50));
        ringer.ring();
        drop(ringer);
        let woken = handle.join().unwrap();
        assert!((1..=2).contains(&woken), "woken {woken} times");
    }
}
