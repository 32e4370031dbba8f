//! What the served file holds, and how a client checks what it receives against it.
//!
//! - Catch-up content is pseudo-random bytes in which the first 8 bytes of every 4 KiB page
//!   are that page's offset, so a server that sends the right bytes from the wrong place is
//!   caught as surely as one that sends garbage.
//! - Live records are [`RECORD`] bytes each and carry the writer's CLOCK_MONOTONIC stamp.
//! - [`FileView`] maps the file so that a client compares every received byte with the byte
//!   at the same offset of the file (a memcmp, cheaper than any hash).

use crate::sys::{self, Mapping};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub const PAGE: u64 = 4096;
/// The random block the content repeats, every page of it stamped with its own offset.
const BLOCK: usize = 1 << 20;
/// Bytes written per write(2) when filling a file.
const CHUNK: usize = 4 << 20;

/// Size of one live record: stamp (8, LE), sequence number (8, LE), kind (1), filler, `\n`.
pub const RECORD: usize = 64;

/// What a live record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Measured: its latency goes into the histogram and it is counted.
    Timed = 0,
    /// Sent before measuring, until every client has seen one: proves that each client is
    /// streaming, so that the first timed record is not delayed by a header still in flight.
    Warmup = 1,
}

pub fn record(stamp: u64, seq: u64, kind: Kind) -> [u8; RECORD] {
    let mut rec = [b'.'; RECORD];
    rec[..8].copy_from_slice(&stamp.to_le_bytes());
    rec[8..16].copy_from_slice(&seq.to_le_bytes());
    rec[16] = kind as u8;
    rec[RECORD - 1] = b'\n';
    rec
}

/// The stamp and kind of a record.
pub fn parse_record(rec: &[u8]) -> (u64, Kind) {
    let stamp = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
    let kind = if rec[16] == Kind::Warmup as u8 {
        Kind::Warmup
    } else {
        Kind::Timed
    };
    (stamp, kind)
}

/// The catch-up content generator.
pub struct Content {
    block: Vec<u8>,
}

impl Content {
    pub fn new() -> Content {
        // xorshift64*: fast, and nothing like the page stamps.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = Vec::with_capacity(BLOCK);
        while block.len() < BLOCK {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            block.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        Content { block }
    }

    /// Fills `buf` with the content at `[offset, offset + buf.len())`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            let at = ((offset + pos as u64) % BLOCK as u64) as usize;
            let n = (BLOCK - at).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&self.block[at..at + n]);
            pos += n;
        }
        let end = offset + buf.len() as u64;
        let mut page = offset / PAGE * PAGE;
        while page < end {
            for (j, byte) in page.to_le_bytes().into_iter().enumerate() {
                let at = page + j as u64;
                if at >= offset && at < end {
                    buf[(at - offset) as usize] = byte;
                }
            }
            page += PAGE;
        }
    }

    /// Appends `size` bytes of content to `file`, continuing from its current end.
    pub fn append(&self, file: &mut File, size: u64) -> io::Result<()> {
        let mut offset = file.metadata()?.len();
        let end = offset + size;
        let mut buf = vec![0u8; CHUNK];
        while offset < end {
            let n = (end - offset).min(CHUNK as u64) as usize;
            self.fill(offset, &mut buf[..n]);
            file.write_all(&buf[..n])?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Creates (or empties) `path` and fills it with `size` bytes of content.
    pub fn create(&self, path: &Path, size: u64) -> io::Result<()> {
        let mut file = File::create(path)?;
        self.append(&mut file, size)
    }
}

/// Opens `path` for appending records.
pub fn appender(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).open(path)
}

/// How far beyond the file's size at open the mapping reaches: room for everything a sweep
/// appends. It is address space only (MAP_NORESERVE, nothing touched).
const MAP_SLACK: u64 = 64 << 30;

/// A client-side view of the served file, shared by all client threads.
pub struct FileView {
    file: File,
    map: Mapping,
    /// The file size last seen: bytes below it exist and can be compared.
    known: AtomicU64,
}

impl FileView {
    pub fn open(path: &Path) -> io::Result<FileView> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let len = (size + MAP_SLACK).div_ceil(PAGE) * PAGE;
        let map = Mapping::new(file.as_raw_fd(), len as usize)?;
        Ok(FileView {
            file,
            map,
            known: AtomicU64::new(size),
        })
    }

    /// Whether `[0, end)` is in the file (and in the mapping), looking again if need be.
    fn covers(&self, end: u64) -> bool {
        if end <= self.known.load(Ordering::Relaxed) {
            return true;
        }
        let size = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return false,
        };
        self.known.fetch_max(size, Ordering::Relaxed);
        end <= size && end <= self.map.len() as u64
    }

    /// The file's bytes `[offset, offset + len)`, if the file has them.
    pub fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        if !self.covers(offset + len as u64) {
            return None;
        }
        // SAFETY: `covers` checked the range is within the file and the mapping; the harness
        // only ever appends to the file.
        Some(unsafe { self.map.bytes(offset as usize, len) })
    }

    /// Checks that `data`, received for file offset `offset`, is what the file holds there.
    pub fn check(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        let Some(expected) = self.bytes(offset, data.len()) else {
            return Err(format!(
                "received {} bytes at offset {offset}, past the end of the file",
                data.len()
            ));
        };
        if expected == data {
            return Ok(());
        }
        let at = expected
            .iter()
            .zip(data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Err(format!(
            "received byte at offset {} differs from the file",
            offset + at as u64
        ))
    }
}

/// Writes one record with the current time as its stamp, in one write(2).
///
/// Why one write? A record must become visible whole or not at all for its stamp to mean
/// "appended at"; a 64-byte O_APPEND write is one copy under the inode lock.
pub fn append_record(file: &mut File, seq: u64, kind: Kind) -> io::Result<()> {
    let rec = record(sys::monotonic_ns(), seq, kind);
    file.write_all(&rec)
}
