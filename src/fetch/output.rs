//! Where fetched bytes go: stdout, or FILE (a copy of the server's file from byte 0).

use super::error::FetchError;
use crate::sys;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What [`Output::copy_from`] did.
pub enum Moved {
    /// More of the stream is held now, and counted in the position.
    Bytes,
    /// The server closed the stream.
    End,
    /// stdout's reader went away.
    Closed,
    /// Reading the socket failed, or its read timeout expired (`WouldBlock`).
    Socket(io::Error),
}

/// How much one splice moves at most, and the pipe's capacity (where the system allows).
const SPLICE_CHUNK: usize = 1 << 20;

/// FILE's zero-copy path: a pipe, and a second descriptor of FILE that is not in append mode.
///
/// Why splice through a pipe rather than read and write? A relay catching up copies the
/// origin's whole file; through user space every byte is copied twice by the CPU (socket
/// to buffer, buffer to page cache), which held a new relay to about 1.1 GiB/s with the
/// fetcher at 90% of a CPU. splice(2) moves the socket's pages into the pipe and from there
/// into FILE's page cache inside the kernel. Why a second descriptor? splice refuses a file
/// opened for appending (EINVAL); this one writes at the position, which is FILE's length.
struct Splicer {
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
    /// The pipe's capacity: the most one splice from the socket asks for, so that it never
    /// waits for room in a pipe that only this thread empties.
    capacity: usize,
    file: File,
}

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
    identity: Option<String>,
}

/// FILE, opened for appending and locked; its length is the position.
pub struct FileOutput {
    path: PathBuf,
    /// Where the identity of the server's file the copy comes from is kept (see
    /// [`identity_path`]).
    id_path: PathBuf,
    identity: Option<String>,
    rotated: PathBuf,
    file: File,
    position: u64,
    fsync: Option<Duration>,
    synced_at: Instant,
    unsynced: bool,
    /// The zero-copy path, opened on first use.
    splicer: Option<Splicer>,
    /// The kernel refused to splice here: read and write from now on.
    splice_refused: bool,
}

impl Output {
    pub fn stdout(start: u64, keep: u64) -> Output {
        Output::Stdout(StdoutOutput {
            out: io::stdout(),
            position: start,
            recent: VecDeque::new(),
            keep: keep as usize,
            identity: None,
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
        let id_path = identity_path(path);
        let identity = match std::fs::read_to_string(&id_path) {
            Ok(text) => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(FetchError::file(&id_path, "reading", e)),
        };
        Ok(Output::File(FileOutput {
            path: path.to_owned(),
            id_path,
            identity,
            rotated,
            file,
            position,
            fsync,
            synced_at: Instant::now(),
            unsynced: false,
            splicer: None,
            splice_refused: false,
        }))
    }

    /// Takes the next bytes of the stream from `sock` and holds them: one read (or splice)
    /// of what is there, waiting as long as the socket's read timeout allows.
    ///
    /// FILE takes them through a pipe, inside the kernel ([`Splicer`]); stdout, and FILE
    /// where splice is refused, through `buf`.
    pub fn copy_from(&mut self, sock: &mut TcpStream, buf: &mut [u8]) -> Result<Moved, FetchError> {
        if let Output::File(o) = self {
            if let Some(moved) = o.splice_from(sock)? {
                return Ok(moved);
            }
        }
        let n = match sock.read(buf) {
            Ok(0) => return Ok(Moved::End),
            Ok(n) => n,
            Err(e) => return Ok(Moved::Socket(e)),
        };
        Ok(match self.write(&buf[..n])? {
            Wrote::Ok => Moved::Bytes,
            Wrote::Closed => Moved::Closed,
        })
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

    /// The identity (`Tailsrv-File`) of the server's file the bytes held came from, if known.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Output::Stdout(o) => o.identity.as_deref(),
            Output::File(o) => o.identity.as_deref(),
        }
    }

    /// Records the identity of the server's file the next bytes come from. With FILE it is
    /// kept beside it (see [`identity_path`]), written before any of those bytes, so that
    /// a restarted fetcher knows it too.
    pub fn set_identity(&mut self, id: Option<&str>) -> Result<(), FetchError> {
        if self.identity() == id {
            return Ok(());
        }
        match self {
            Output::Stdout(o) => o.identity = id.map(str::to_string),
            Output::File(o) => {
                match id {
                    Some(id) => {
                        // Why write and rename? A crash mid-write must not leave half an
                        // identity, which would read as another file's.
                        let mut tmp = o.id_path.clone().into_os_string();
                        tmp.push(".tmp");
                        std::fs::write(&tmp, format!("{id}\n"))
                            .and_then(|()| std::fs::rename(&tmp, &o.id_path))
                            .map_err(|e| FetchError::file(&o.id_path, "writing", e))?;
                    }
                    None => remove_if_there(&o.id_path)?,
                }
                o.identity = id.map(str::to_string);
            }
        }
        Ok(())
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
                o.identity = None;
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
                // The new copy's identity is recorded once the server names it.
                remove_if_there(&o.id_path)?;
                o.identity = None;
                o.file = open_locked(&o.path)?;
                // The splicer's descriptor is the renamed copy's: open a new one on first use.
                o.splicer = None;
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
    /// One splice from the socket into the pipe, then all of it into FILE at the position.
    /// `None` when splicing is not possible here and nothing was taken from the socket: the
    /// caller reads instead.
    ///
    /// Why is the resume point still exact? The position, like FILE's length, counts only
    /// what reached FILE. Bytes taken from the socket but still in the pipe when the fetcher
    /// is killed were never counted, so the next run asks for them again.
    fn splice_from(&mut self, sock: &TcpStream) -> Result<Option<Moved>, FetchError> {
        if self.splicer.is_none() {
            match self.open_splicer() {
                Ok(s) => self.splicer = Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot splice into the copy; reading and writing");
                    return Ok(None);
                }
            }
        }
        let Some(sp) = self.splicer.as_ref() else {
            return Ok(None);
        };
        let taken = match sys::splice(sock.as_fd(), None, sp.pipe_write.as_fd(), None, sp.capacity)
        {
            Ok(0) => return Ok(Some(Moved::End)),
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                tracing::debug!(error = %e, "cannot splice from the socket; reading and writing");
                self.splicer = None;
                self.splicer_refused();
                return Ok(None);
            }
            Err(e) => return Ok(Some(Moved::Socket(e))),
        };
        let mut left = taken;
        while left > 0 {
            let Some(sp) = self.splicer.as_ref() else {
                break;
            };
            match sys::splice(
                sp.pipe_read.as_fd(),
                None,
                sp.file.as_fd(),
                Some(self.position),
                left,
            ) {
                Ok(0) => {
                    return Err(FetchError::file(
                        &self.path,
                        "writing",
                        io::Error::from(io::ErrorKind::WriteZero),
                    ))
                }
                Ok(n) => {
                    left -= n;
                    self.position += n as u64;
                    self.unsynced = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    // FILE's file system takes no splice: empty the pipe by hand, then read
                    // and write from now on.
                    tracing::debug!(error = %e, "cannot splice into the copy; reading and writing");
                    self.drain_pipe_by_hand(left)?;
                    left = 0;
                }
                Err(e) => return Err(FetchError::file(&self.path, "writing", e)),
            }
        }
        self.sync_if_due()?;
        Ok(Some(Moved::Bytes))
    }

    /// Opens the pipe and FILE's second descriptor.
    fn open_splicer(&self) -> io::Result<Splicer> {
        if self.splice_refused {
            return Err(io::Error::other("refused before"));
        }
        let (pipe_read, pipe_write, capacity) = sys::pipe(SPLICE_CHUNK)?;
        let file = OpenOptions::new().write(true).open(&self.path)?;
        Ok(Splicer {
            pipe_read,
            pipe_write,
            capacity,
            file,
        })
    }

    fn splicer_refused(&mut self) {
        self.splice_refused = true;
    }

    /// Moves the `left` bytes still in the pipe into FILE through memory, and stops splicing.
    fn drain_pipe_by_hand(&mut self, mut left: usize) -> Result<(), FetchError> {
        let Some(sp) = self.splicer.take() else {
            return Ok(());
        };
        self.splice_refused = true;
        let mut pipe = File::from(sp.pipe_read);
        let mut buf = vec![0u8; left.min(SPLICE_CHUNK)];
        while left > 0 {
            let want = left.min(buf.len());
            pipe.read_exact(&mut buf[..want])
                .map_err(|e| FetchError::file(&self.path, "reading back the pipe for", e))?;
            self.file
                .write_all(&buf[..want])
                .map_err(|e| FetchError::file(&self.path, "writing", e))?;
            self.position += want as u64;
            self.unsynced = true;
            left -= want;
        }
        Ok(())
    }

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

/// Where the identity of the server's file is kept beside FILE: `FILE.tailsrv-id`.
///
/// Why a file of its own? It must survive tailsrv-fetch's restarts with FILE, and FILE
/// itself must stay a byte-for-byte copy (a relay serves it).
pub fn identity_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tailsrv-id");
    PathBuf::from(name)
}

fn remove_if_there(path: &Path) -> Result<(), FetchError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FetchError::file(path, "removing", e)),
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
