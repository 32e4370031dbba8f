//! The reference server: the simplest fast server for this job, to measure tailsrv against.
//!
//! One thread, one epoll, edge-triggered sockets, inotify on the file, and sendfile until
//! EAGAIN: when the file grows, every client that is not waiting on its socket is sent all it
//! is due before the loop looks at anything else. No sharding, no fairness bound, no timers.
//! It runs as a child process (the bench executable started with `--serve-reference FILE`)
//! so that its CPU, memory and descriptors are read from /proc exactly as tailsrv's are.

use crate::sys::{self, Epoll, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};
use inotify::{Inotify, WatchMask};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

const LISTENER: u64 = u64::MAX;
const INOTIFY: u64 = u64::MAX - 1;
const MAX_HEADER: usize = 64;

struct Client {
    sock: OwnedFd,
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Next file offset to send, once the header is in.
    offset: Option<u64>,
    /// The socket was full: wait for EPOLLOUT.
    blocked: bool,
    /// The client half-closed; stop reading from it.
    input_closed: bool,
}

/// Serves `path` on `addr` until killed.
pub fn serve(path: &Path, addr: SocketAddr) -> io::Result<()> {
    let _ = sys::raise_nofile(1 << 16);
    let file = File::open(path)?;
    let fd = file.as_fd();
    let mut inotify = Inotify::init()?;
    inotify.watches().add(path, WatchMask::MODIFY)?;
    // tailsrv's own listener set-up (one socket of a SO_REUSEPORT group), made non-blocking
    // for the edge-triggered accept loop below.
    let (local, mut listeners) = tailsrv::sys::bind_listeners(addr, 1, 4096)?;
    let listener = listeners
        .pop()
        .expect("bind_listeners returns `count` sockets");
    tailsrv::sys::set_nonblocking(listener.as_fd())?;
    let epoll = Epoll::new()?;
    epoll.add(listener.as_raw_fd(), EPOLLIN, LISTENER)?;
    epoll.add(inotify.as_raw_fd(), EPOLLIN, INOTIFY)?;
    eprintln!(
        "fanout-reference listening addr={local} port={}",
        local.port()
    );

    let mut size = file.metadata()?.len();
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut raw = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut events = Vec::with_capacity(raw.len());
    let mut inotify_buf = [0u8; 4096];
    loop {
        epoll.wait(&mut raw, &mut events, -1)?;
        for &(ev, token) in &events {
            match token {
                LISTENER => {
                    while let Some(sock) = sys::accept(listener.as_raw_fd())? {
                        let _ = sys::set_nodelay(sock.as_fd());
                        let slot = free.pop().unwrap_or_else(|| {
                            clients.push(None);
                            clients.len() - 1
                        });
                        epoll.add(
                            sock.as_raw_fd(),
                            EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                            slot as u64,
                        )?;
                        clients[slot] = Some(Client {
                            sock,
                            header: [0; MAX_HEADER],
                            header_len: 0,
                            offset: None,
                            blocked: false,
                            input_closed: false,
                        });
                    }
                }
                INOTIFY => {
                    loop {
                        match inotify.read_events(&mut inotify_buf) {
                            Ok(events) => {
                                if events.count() == 0 {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    size = size.max(file.metadata()?.len());
                    for (slot, entry) in clients.iter_mut().enumerate() {
                        let Some(c) = entry else { continue };
                        let due = !c.blocked && c.offset.is_some_and(|o| o < size);
                        if due && !pump(c, fd, size) {
                            *entry = None;
                            free.push(slot);
                        }
                    }
                }
                slot => {
                    let slot = slot as usize;
                    let Some(client) = clients.get_mut(slot).and_then(Option::as_mut) else {
                        continue;
                    };
                    let mut keep = ev & (EPOLLERR | EPOLLHUP) == 0;
                    if keep && ev & (EPOLLIN | EPOLLRDHUP) != 0 && !client.input_closed {
                        keep = if client.offset.is_none() {
                            read_header(client, &file, &mut size)
                        } else {
                            discard_input(client)
                        };
                    }
                    if keep && ev & EPOLLOUT != 0 && client.blocked {
                        client.blocked = false;
                        keep = pump(client, fd, size);
                    }
                    if !keep {
                        clients[slot] = None;
                        free.push(slot);
                    }
                }
            }
        }
    }
}

/// Sends the client everything up to `size` until the socket is full. False: drop it.
fn pump(client: &mut Client, file: BorrowedFd<'_>, size: u64) -> bool {
    let Some(mut offset) = client.offset else {
        return true;
    };
    while offset < size {
        let count = usize::try_from(size - offset).unwrap_or(usize::MAX);
        match tailsrv::sys::sendfile(client.sock.as_fd(), file, offset, count) {
            Ok(0) => break,
            Ok(n) => offset += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                client.blocked = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    client.offset = Some(offset);
    true
}

/// Reads header bytes until the newline (or the client's half-close). False: drop it.
fn read_header(client: &mut Client, file: &File, size: &mut u64) -> bool {
    loop {
        let got =
            tailsrv::sys::recv_now(client.sock.as_fd(), &mut client.header[client.header_len..]);
        let at_eof = match got {
            Ok(0) => true,
            Ok(n) => {
                client.header_len += n;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        let text = &client.header[..client.header_len];
        let line = match text.iter().position(|&b| b == b'\n') {
            Some(end) => &text[..end],
            None if at_eof => text,
            None if client.header_len == MAX_HEADER => return false,
            None => continue,
        };
        let Some(start) = parse_header(line) else {
            return false;
        };
        // `-n` counts from the end as it is now, not as inotify last said.
        if let Ok(meta) = file.metadata() {
            *size = (*size).max(meta.len());
        }
        client.offset = Some(match start {
            Start::At(n) => n,
            Start::FromEnd(n) => size.saturating_sub(n),
        });
        client.input_closed = at_eof;
        return pump(client, file.as_fd(), *size) && (at_eof || discard_input(client));
    }
}

/// Drops whatever the client sent after its header. False: it is gone.
fn discard_input(client: &mut Client) -> bool {
    loop {
        match tailsrv::sys::discard_input(client.sock.as_fd()) {
            Ok(0) => {
                // A half-close: the client may still be reading, so keep sending.
                client.input_closed = true;
                return true;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

enum Start {
    At(u64),
    FromEnd(u64),
}

fn parse_header(line: &[u8]) -> Option<Start> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_matches([' ', '\t', '\r']);
    match text.strip_prefix('-') {
        Some(n) => n.parse().ok().map(Start::FromEnd),
        None => text
            .strip_prefix('+')
            .unwrap_or(text)
            .parse()
            .ok()
            .map(Start::At),
    }
}
