//! Many clients and big files: a stuck client beside a fast one, hundreds of clients at
//! mixed offsets while the file grows, and both shards serving.

use crate::common::*;
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Bytes waiting unread in a socket's receive queue.
fn queued(stream: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer; the descriptor is a live socket.
    let ret = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(ret, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

#[test]
fn a_client_that_never_reads_does_not_hold_up_a_fast_reader() {
    const SIZE: u64 = 64 << 20;
    let server = Server::in_process(b"");
    append_pattern(server.path(), 0, SIZE);
    let mut stuck = server.connect(b"0\n");
    assert_eq!(server.offset_of(&stuck), 0);

    let mut reader = server.connect(b"0\n");
    let started = Instant::now();
    reader.expect_pattern(0, SIZE, Duration::from_secs(30));
    eprintln!("fast reader: {SIZE} bytes in {:?}", started.elapsed());
    let waiting = queued(stuck.stream());
    assert!(
        (waiting as u64) < SIZE,
        "the non-reading client already holds the whole file ({waiting} bytes): it was not stuck"
    );

    // While the other is still stuck, appends reach the reader at once.
    append_pattern(server.path(), SIZE, 4096);
    reader.expect_pattern(SIZE, 4096, PATIENCE);

    // The stuck client was only waiting: once it reads, it gets every byte, in order.
    stuck.expect_pattern(0, SIZE + 4096, Duration::from_secs(30));
    stuck.expect_silence(QUIET);
}

/// Where a client asked to start, and what that allows its resolved offset to be.
#[derive(Debug, Clone, Copy)]
enum Want {
    Exactly(u64),
    /// `-n` and `-0` resolve against the size when the header is processed: somewhere
    /// between what was written before the header was sent and the final size.
    Between(u64, u64),
}

struct LoadClient {
    stream: TcpStream,
    port: u16,
    header: String,
    want: Want,
    offset: Option<u64>,
    /// Bytes received before the offset was known, not yet checked.
    pending: Vec<u8>,
    /// Bytes received and checked from `offset` on.
    checked: u64,
}

impl LoadClient {
    fn connect(port: u16, header: String, want: Want, half_close: bool) -> LoadClient {
        let mut client = Client::connect(port);
        client.send(header.as_bytes());
        if half_close {
            client.shutdown_write();
        }
        let port = client.local_port();
        let stream = client.into_stream();
        stream.set_nonblocking(true).unwrap();
        LoadClient {
            stream,
            port,
            header,
            want,
            offset: None,
            pending: Vec::new(),
            checked: 0,
        }
    }

    fn received(&mut self, bytes: &[u8], content: &[u8]) {
        match self.offset {
            None => self.pending.extend_from_slice(bytes),
            Some(offset) => {
                let at = (offset + self.checked) as usize;
                assert!(
                    at + bytes.len() <= content.len(),
                    "client {:?} (offset {offset}) got {} bytes past the final size {}",
                    self.header,
                    at + bytes.len() - content.len(),
                    content.len()
                );
                let what = format!("client {:?} from offset {at}", self.header);
                assert_bytes(bytes, &content[at..at + bytes.len()], &what);
                self.checked += bytes.len() as u64;
            }
        }
    }

    fn resolved(&mut self, offset: u64, content: &[u8]) {
        let ok = match self.want {
            Want::Exactly(n) => offset == n,
            Want::Between(lo, hi) => (lo..=hi).contains(&offset),
        };
        assert!(
            ok,
            "client {:?} started at {offset}, want {:?}",
            self.header, self.want
        );
        self.offset = Some(offset);
        let pending = std::mem::take(&mut self.pending);
        self.received(&pending, content);
    }

    fn done(&self, size: u64) -> bool {
        self.offset.is_some_and(|o| o + self.checked == size)
    }
}

#[test]
fn hundreds_of_clients_at_mixed_offsets_get_exact_bytes_while_the_file_grows() {
    const CLIENTS: usize = 300;
    const INITIAL: u64 = 64 << 10;
    const GROWTH: u64 = 768 << 10;
    let mut rng = Rng::new(0x7a11_5e4f_0001);

    // The writer's plan is fixed up front, so the final size and content are known.
    let mut chunks = Vec::new();
    let mut size = INITIAL;
    while size < INITIAL + GROWTH {
        let max = if rng.below(10) == 0 { 64 << 10 } else { 4096 };
        let n = 1 + rng.below(max);
        chunks.push(n);
        size += n;
    }
    let final_size = size;
    let content = Arc::new(pattern_range(0, final_size as usize));
    let server = Server::in_process(&content[..INITIAL as usize]);
    let written = Arc::new(AtomicU64::new(INITIAL));

    let mut next_client = |i: usize| {
        let before = written.load(Ordering::SeqCst);
        let (header, want) = match i % 6 {
            0 => ("0".to_owned(), Want::Exactly(0)),
            1 => {
                let n = rng.below(INITIAL + 1);
                (format!("+{n}"), Want::Exactly(n))
            }
            2 => {
                let n = rng.below(final_size + 1);
                (n.to_string(), Want::Exactly(n))
            }
            3 => {
                let n = rng.below(2 * INITIAL);
                let want = Want::Between(before.saturating_sub(n), final_size.saturating_sub(n));
                (format!("-{n}"), want)
            }
            4 => ("-0".to_owned(), Want::Between(before, final_size)),
            _ => {
                // Past the end until near the last append, or exactly at the final size.
                let n = final_size - rng.below(1000);
                (n.to_string(), Want::Exactly(n))
            }
        };
        let line = if i % 7 == 0 {
            format!("{header}\r\n")
        } else {
            format!("{header}\n")
        };
        LoadClient::connect(server.port(), line, want, i % 11 == 0)
    };

    let mut clients: Vec<LoadClient> = (0..CLIENTS / 2).map(&mut next_client).collect();
    let writer = {
        let path = server.path().to_owned();
        let content = content.clone();
        let written = written.clone();
        thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            let mut at = INITIAL as usize;
            for n in chunks {
                file.write_all(&content[at..at + n as usize]).unwrap();
                at += n as usize;
                written.store(at as u64, Ordering::SeqCst);
                // Pacing, not synchronisation: spread the appends over a few hundred ms so
                // they interleave with connects and reads.
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    clients.extend((CLIENTS / 2..CLIENTS).map(&mut next_client));

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 64 << 10];
    let mut last_lookup: Option<Instant> = None;
    loop {
        let writer_done = writer.is_finished();
        if clients.iter().any(|c| c.offset.is_none())
            && last_lookup.is_none_or(|t| t.elapsed() >= Duration::from_millis(50))
        {
            last_lookup = Some(Instant::now());
            let streaming = server.streaming();
            for client in clients.iter_mut().filter(|c| c.offset.is_none()) {
                if let Some(s) = streaming.get(&client.port) {
                    client.resolved(s.offset, &content);
                }
            }
        }
        if writer_done && clients.iter().all(|c| c.done(final_size)) {
            break;
        }
        if Instant::now() >= deadline {
            let behind: Vec<String> = clients
                .iter()
                .filter(|c| !c.done(final_size))
                .take(10)
                .map(|c| format!("{:?} at {:?}+{}", c.header, c.offset, c.checked))
                .collect();
            let count = clients.iter().filter(|c| !c.done(final_size)).count();
            panic!("{count} clients incomplete at the deadline (final size {final_size}), e.g. {behind:?}");
        }
        poll_and_read(&mut clients, &mut buf, &content, Duration::from_millis(50));
    }
    writer.join().unwrap();

    // Nobody gets a byte more than the file holds.
    poll_and_read(&mut clients, &mut buf, &content, QUIET);
    for client in &clients {
        assert!(
            client.done(final_size),
            "client {:?} got more than the file",
            client.header
        );
    }
}

/// Waits up to `timeout` for any client to have input, then reads what each has.
fn poll_and_read(clients: &mut [LoadClient], buf: &mut [u8], content: &[u8], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
    let ready = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
    assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
    for (client, fd) in clients.iter_mut().zip(&fds) {
        if fd.revents == 0 {
            continue;
        }
        loop {
            match client.stream.read(buf) {
                Ok(0) => panic!("client {:?} got EOF from a running server", client.header),
                Ok(n) => client.received(&buf[..n], content),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("client {:?}: {e}", client.header),
            }
        }
    }
}

#[test]
fn both_shards_serve_clients() {
    const TEXT: &[u8] = b"served by either shard\n";
    let server = Server::builder()
        .in_process()
        .contents(TEXT)
        .arg("--shards")
        .arg("2")
        .start();
    assert_eq!(server.handle().shards(), 2);

    let mut clients: Vec<Client> = (0..40).map(|_| server.connect(b"0\n")).collect();
    for client in &mut clients {
        client.expect_bytes(TEXT, PATIENCE);
    }
    let mut shards = BTreeSet::new();
    for client in &clients {
        server.offset_of(client);
        let streaming = server.streaming();
        let s = &streaming[&client.local_port()];
        assert_eq!(s.offset, 0);
        shards.insert(s.shard);
    }
    let want: BTreeSet<usize> = [0, 1].into();
    assert_eq!(shards, want, "shards that served 40 clients");

    server.append(b"and more\n");
    for client in &mut clients {
        client.expect_bytes(b"and more\n", PATIENCE);
    }
}

/// Every append reaches every caught-up client, on every shard, however the appends and the
/// shards' sleeps interleave.
///
/// Why this shape? Small appends every 2 ms to 200 idle clients, with both cores kept busy,
/// make each shard fall asleep and be woken hundreds of times a second at random points of
/// its sleep path. With glommio's preemption timer at 1 ms, a shard lost one of those
/// wake-ups in about one run in three: it slept with appends pending, and its clients
/// never received the tail of the file.
#[test]
fn every_append_reaches_every_caught_up_client_on_every_shard() {
    const CLIENTS: usize = 200;
    const APPENDS: u64 = 1500;
    const RECORD: u64 = 16;
    const INITIAL: u64 = 1000;
    let final_size = INITIAL + APPENDS * RECORD;
    let content = Arc::new(pattern_range(0, final_size as usize));
    let server = Server::builder()
        .in_process()
        .contents(&content[..INITIAL as usize])
        .arg("--shards")
        .arg("2")
        .start();
    let mut clients: Vec<LoadClient> = (0..CLIENTS)
        .map(|_| LoadClient::connect(server.port(), "-0\n".into(), Want::Exactly(INITIAL), false))
        .collect();
    assert!(
        poll_until(PATIENCE, || server.streaming().len() == CLIENTS),
        "not every client was streaming"
    );
    let streaming = server.streaming();
    for client in &mut clients {
        client.resolved(streaming[&client.port].offset, &content);
    }
    let shards: std::collections::HashSet<usize> = streaming.values().map(|s| s.shard).collect();
    assert_eq!(shards.len(), 2, "both shards must have clients");

    let writer = {
        let (path, content) = (server.path().to_owned(), content.clone());
        thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            for i in 0..APPENDS {
                let at = (INITIAL + i * RECORD) as usize;
                file.write_all(&content[at..at + RECORD as usize]).unwrap();
                // Pacing, not synchronisation: one small append every 2 ms.
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // Keep both cores busy meanwhile, so the shards' threads are preempted at random points
    // of their sleep and wake-up paths, as on a loaded machine.
    let spinning = Arc::new(AtomicBool::new(true));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let spinning = spinning.clone();
            thread::spawn(move || {
                while spinning.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut buf = vec![0u8; 64 << 10];
    while !writer.is_finished() {
        poll_and_read(&mut clients, &mut buf, &content, Duration::from_millis(50));
    }
    writer.join().unwrap();
    spinning.store(false, Ordering::Relaxed);
    spinners.into_iter().for_each(|s| s.join().unwrap());
    let deadline = Instant::now() + PATIENCE;
    while !clients.iter().all(|c| c.done(final_size)) && Instant::now() < deadline {
        poll_and_read(&mut clients, &mut buf, &content, Duration::from_millis(50));
    }
    let behind: Vec<(usize, u64)> = clients
        .iter()
        .filter(|c| !c.done(final_size))
        .map(|c| (streaming[&c.port].shard, c.checked))
        .collect();
    assert!(
        behind.is_empty(),
        "{} clients (shard, bytes) stopped short of {} bytes: {:?}",
        behind.len(),
        final_size - INITIAL,
        &behind[..behind.len().min(10)]
    );
}
