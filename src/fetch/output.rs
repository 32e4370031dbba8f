//! Where fetched bytes go: stdout, or FILE (a copy of the server's file from byte 0).

use super::error::FetchError;
use crate::sys;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a write found.
pub enum Wrote {
    Ok,
    /// stdout's reader went away (EPIPE): a normal way to stop.
    Closed,
}

/// The stream's destination, which also knows the stream's position and what it holds.
pub enum Output {
    Stdout(StdoutOutput),
    File(FileOutput),
}

/// stdout, with the last bytes written kept in memory for the rotation check.
pub struct StdoutOutput {
    out: io::Stdout,
    position: u64,
    recent: VecDeque<u8>,
    keep: usize,
}

/// FILE, opened for appending and locked; its length is the position.
pub struct FileOutput {
    path: PathBuf,
    rotated: PathBuf,
    file: File,
    position: u64,
    fsync: Option<Duration>,
    synced_at: Instant,
    unsynced: bool,
}

impl Output {
    pub fn stdout(start: u64, keep: u64) -> Output {
        Output::Stdout(StdoutOutput {
            out: io::stdout(),
            position: start,
            recent: VecDeque::new(),
            keep: keep as usize,
        })
    }

    /// Opens (creating) and locks FILE; the position is its length.
    pub fn file(
        path: &Path,
        rotated: PathBuf,
        fsync: Option<Duration>,
    ) -> Result<Output, FetchError> {
        let file = open_locked(path)?;
        let position = file
            .metadata()
            .map_err(|e| FetchError::file(path, "reading the length of", e))?
            .len();
        Ok(Output::File(FileOutput {
            path: path.to_owned(),
            rotated,
            file,
            position,
            fsync,
            synced_at: Instant::now(),
            unsynced: false,
        }))
    }

    /// The offset in the server's file of the next byte to fetch.
    pub fn position(&self) -> u64 {
        match self {
            Output::Stdout(o) => o.position,
            Output::File(o) => o.position,
        }
    }

    /// Sets where the stream starts, before anything is written (stdout only).
    pub fn set_start(&mut self, at: u64) {
        if let Output::Stdout(o) = self {
            o.position = at;
            o.recent.clear();
        }
    }

    /// How many bytes just before the position are held and can be checked.
    pub fn checkable(&self) -> u64 {
        match self {
            Output::Stdout(o) => o.recent.len() as u64,
            Output::File(o) => o.position,
        }
    }

    /// The last `n` bytes held (`n <= checkable()`).
    pub fn tail(&self, n: u64) -> Result<Vec<u8>, FetchError> {
        match self {
            Output::Stdout(o) => Ok(o
                .recent
                .range(o.recent.len() - n as usize..)
                .copied()
                .collect()),
            Output::File(o) => {
                let mut buf = vec![0; n as usize];
                o.file
                    .read_exact_at(&mut buf, o.position - n)
                    .map_err(|e| FetchError::file(&o.path, "reading back", e))?;
                Ok(buf)
            }
        }
    }

    /// Appends the next bytes of the stream.
    pub fn write(&mut self, bytes: &[u8]) -> Result<Wrote, FetchError> {
        match self {
            Output::Stdout(o) => {
                // Why flush each chunk? The position must count bytes that reached the
                // reader, and a live stream must not sit in a buffer.
                match o.out.write_all(bytes).and_then(|()| o.out.flush()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Wrote::Closed),
                    Err(e) => {
                        return Err(FetchError::Io {
                            context: "writing stdout".into(),
                            source: e,
                        })
                    }
                }
                o.position += bytes.len() as u64;
                let keep_from = bytes.len().saturating_sub(o.keep);
                o.recent.extend(&bytes[keep_from..]);
                let excess = o.recent.len().saturating_sub(o.keep);
                o.recent.drain(..excess);
                Ok(Wrote::Ok)
            }
            Output::File(o) => {
                // Why count only after write_all? FILE's length is the resume point; a
                // kill between two writes leaves a length that is exactly what was kept.
                o.file
                    .write_all(bytes)
                    .map_err(|e| FetchError::file(&o.path, "writing", e))?;
                o.position += bytes.len() as u64;
                o.unsynced = true;
                o.sync_if_due()?;
                Ok(Wrote::Ok)
            }
        }
    }

    /// Periodic work while the stream is quiet: a due fsync.
    pub fn tick(&mut self) -> Result<(), FetchError> {
        match self {
            Output::File(o) => o.sync_if_due(),
            Output::Stdout(_) => Ok(()),
        }
    }

    /// The server's file is a new one: start the copy over from its byte 0. FILE is renamed
    /// to the rotated name first; returns that name.
    pub fn start_over(&mut self) -> Result<Option<PathBuf>, FetchError> {
        match self {
            Output::Stdout(o) => {
                o.position = 0;
                o.recent.clear();
                Ok(None)
            }
            Output::File(o) => {
                if o.fsync.is_some() {
                    o.file
                        .sync_data()
                        .map_err(|e| FetchError::file(&o.path, "flushing", e))?;
                }
                // Why rename first and create after? A crash in between leaves no FILE,
                // which the next run starts from byte 0: the right place either way.
                std::fs::rename(&o.path, &o.rotated)
                    .map_err(|e| FetchError::file(&o.path, "renaming", e))?;
                o.file = open_locked(&o.path)?;
                o.position = o
                    .file
                    .metadata()
                    .map_err(|e| FetchError::file(&o.path, "reading the length of", e))?
                    .len();
                if o.fsync.is_some() {
                    if let Some(dir) = o.path.parent() {
                        let dir = if dir.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            dir
                        };
                        File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(|e| FetchError::file(dir, "flushing the directory", e))?;
                    }
                }
                Ok(Some(o.rotated.clone()))
            }
        }
    }

    /// A last fsync before exiting, when fsync was asked for.
    /// Flushes FILE to disk now, whatever --fsync says (stdout: nothing to do).
    pub fn sync(&mut self) -> Result<(), FetchError> {
        if let Output::File(o) = self {
            o.file
                .sync_data()
                .map_err(|e| FetchError::file(&o.path, "flushing", e))?;
            o.unsynced = false;
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), FetchError> {
        if let Output::File(o) = self {
            if o.fsync.is_some() && o.unsynced {
                o.file
                    .sync_data()
                    .map_err(|e| FetchError::file(&o.path, "flushing", e))?;
            }
        }
        Ok(())
    }
}

impl FileOutput {
    fn sync_if_due(&mut self) -> Result<(), FetchError> {
        let Some(every) = self.fsync else {
            return Ok(());
        };
        if self.unsynced && self.synced_at.elapsed() >= every {
            self.file
                .sync_data()
                .map_err(|e| FetchError::file(&self.path, "flushing", e))?;
            self.synced_at = Instant::now();
            self.unsynced = false;
        }
        Ok(())
    }
}

/// Opens FILE for appending (creating it) and takes its lock.
///
/// Why a lock? Two fetchers appending to one FILE would interleave their streams and
/// corrupt the copy for good; the second one is refused instead.
fn open_locked(path: &Path) -> Result<File, FetchError> {
    let file = OpenOptions::new()
        .append(true)
        .read(true)
        .create(true)
        .open(path)
        .map_err(|e| FetchError::file(path, "opening", e))?;
    match sys::try_lock_exclusive(file.as_fd()) {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(FetchError::file(
            path,
            "locking",
            io::Error::other("another tailsrv-fetch is writing it"),
        )),
        Err(e) => Err(FetchError::file(path, "locking", e)),
    }
}
