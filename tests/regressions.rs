//! Regression tests for faults tailsrv already survives: an append storm, an inotify queue
//! overflow, a suspended server, resume across a restart, SIGTERM mid catch-up, growth
//! through a hole, and a second server on the same port.

use crate::common::*;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Reads from `stream` until the connection ends or `len` bytes came, checking each byte
/// against `want(offset)` from `start` on. Returns the bytes read and how it ended (`None`
/// if it stopped at `len` bytes). `progress` counts bytes as they arrive.
#[track_caller]
fn read_checked(
    stream: &mut TcpStream,
    start: u64,
    len: Option<u64>,
    want: impl Fn(u64) -> u8,
    progress: &AtomicU64,
    timeout: Duration,
) -> (u64, Option<Ending>) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        if len.is_some_and(|l| got >= l) {
            return (got, None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {got} bytes from offset {start}"
        );
        stream.set_read_timeout(Some(left)).unwrap();
        let room = len.map_or(buf.len(), |l| (l - got).min(buf.len() as u64) as usize);
        let n = match stream.read(&mut buf[..room]) {
            Ok(0) => return (got, Some(Ending::Eof)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return (got, Some(Ending::Reset))
            }
            Err(e) => panic!("after {got} bytes from offset {start}: {e}"),
        };
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = start + got + i as u64;
            assert_eq!(b, want(at), "byte at offset {at} (client from {start})");
        }
        got += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[test]
fn a_storm_of_tiny_appends_reaches_every_client_exactly() {
    const APPENDS: usize = 300_000;
    let server = Server::builder()
        .in_process()
        .args(["--shards", "2"])
        .start();
    let early: Vec<Client> = (0..4).map(|_| server.connect(b"0\n")).collect();
    for c in &early {
        server.offset_of(c);
    }
    let path = server.path().to_path_buf();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    let mut rng = Rng::new(8);
    let mut size = 0u64;
    let mut late = Vec::new();
    let mut buf = [0u8; 4];
    for i in 0..APPENDS {
        let n = 1 + rng.below(4) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(size + k as u64);
        }
        // One write per append: each is its own inotify event, far more than the queue holds.
        file.write_all(&buf[..n]).unwrap();
        size += n as u64;
        if i % 100_000 == 50_000 {
            late.push(server.connect(b"-0\n"));
            late.push(server.connect(b"-100\n"));
        }
    }
    let total = size;
    let readers: Vec<_> = early
        .into_iter()
        .map(|c| (0, c))
        .chain(late.into_iter().map(|c| (server.offset_of(&c), c)))
        .map(|(offset, c)| {
            thread::spawn(move || {
                let mut stream = c.into_stream();
                let progress = AtomicU64::new(0);
                read_checked(
                    &mut stream,
                    offset,
                    Some(total - offset),
                    pattern,
                    &progress,
                    PATIENCE * 3,
                )
            })
        })
        .collect();
    for r in readers {
        assert_eq!(
            r.join().expect("reader").1,
            None,
            "a client's stream ended early"
        );
    }
}

#[test]
fn a_suspended_server_catches_up_after_sigcont() {
    const START: u64 = 10_000;
    // The binary: SIGSTOP stops a whole process.
    let server = Server::builder()
        .contents(&pattern_range(0, START as usize))
        .start();
    let mut before: Vec<Client> = (0..3).map(|_| server.connect(b"0\n")).collect();
    for c in &mut before {
        c.expect_pattern(0, START, PATIENCE);
    }
    server.signal(libc::SIGSTOP);
    let grown = 2 << 20;
    for at in (START..START + grown).step_by(64 << 10) {
        append_pattern(server.path(), at, 64 << 10);
    }
    // Connections made while it is stopped wait in the kernel's backlog.
    let mut during = vec![server.connect(b"0\n"), server.connect(b"-10\n")];
    server.signal(libc::SIGCONT);
    let size = START + grown;
    for c in &mut before {
        c.expect_pattern(START, grown, PATIENCE);
    }
    during[0].expect_pattern(0, size, PATIENCE);
    // The last ten bytes and, below, the next append: nothing before size - 10.
    during[1].expect_pattern(size - 10, 10, PATIENCE);
    append_pattern(server.path(), size, 100);
    for c in before.iter_mut().chain(&mut during) {
        c.expect_pattern(size, 100, PATIENCE);
    }
}

#[test]
fn an_inotify_queue_overflow_loses_no_growth() {
    // Why not just many appends? inotify merges an event identical to the one before it in
    // the queue, so a storm of appends to one file is a handful of events. Distinct names
    // are not merged: each file made and removed beside FILE is two events, and with the
    // server stopped nothing drains the queue, so it must overflow.
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384);
    // The binary: SIGSTOP stops a whole process.
    let server = Server::builder()
        .contents(&pattern_range(0, 1000))
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let mut client = server.connect(b"0\n");
    client.expect_pattern(0, 1000, PATIENCE);
    server.signal(libc::SIGSTOP);
    let dir = server.path().parent().expect("FILE has a directory");
    let mut size = 1000;
    for i in 0..queue {
        let noise = dir.join(format!("noise-{i}"));
        std::fs::File::create(&noise).unwrap();
        std::fs::remove_file(&noise).unwrap();
        if i % 1024 == 0 {
            append_pattern(server.path(), size, 100);
            size += 100;
        }
    }
    server.signal(libc::SIGCONT);
    // Beside two CPU hogs, about 1 run in 200 stopped at 1100 of 2600: the watcher
    // slept on with its inotify descriptor readable until the metrics request below woke it
    // (seen in /proc: no thread running, the bytes sent at once after). The watcher's quiet
    // look now sends such growth within a second; if this fails again, say what it saw.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        client.expect_pattern(1000, size - 1000, PATIENCE)
    }));
    if let Err(failure) = caught {
        let m = server.metrics();
        eprintln!(
            "the server saw: {} file events, {} deliveries, {} held, shard wake-ups {}, \
             bytes sent {}, growth found by the quiet look {}; its log:\n{}",
            m.sum("tailsrv_file_events_total"),
            m.sum("tailsrv_deliveries_total"),
            m.sum("tailsrv_deliveries_held_total"),
            m.sum("tailsrv_shard_wakeups_total"),
            m.sum("tailsrv_sent_bytes_total"),
            m.sum("tailsrv_watcher_unannounced_growth_total"),
            server.logs().dump()
        );
        std::panic::resume_unwind(failure);
    }
    // And the watcher still follows the file afterwards.
    append_pattern(server.path(), size, 5000);
    client.expect_pattern(size, 5000, PATIENCE);
    client.expect_silence(QUIET);
    // The queue did overflow: the watcher read fewer events than were made.
    let read = server.metrics().sum("tailsrv_file_events_total");
    assert!(
        read < 2 * queue as u64,
        "{read} events read of {} made",
        2 * queue
    );
}

#[test]
fn a_client_resumes_exactly_once_across_a_server_restart() {
    let dir = TempDir::new();
    let path = dir.join("kept.log");
    append_pattern(&path, 0, 1 << 20);
    let mut first = Server::builder().in_process().serve(&path).start();
    let mut client = first.connect(b"0\n");
    let kept = 300_001;
    client.expect_pattern(0, kept, PATIENCE);
    // The client goes away mid-stream; the file grows while it and the server are gone.
    drop(client);
    append_pattern(&path, 1 << 20, 50_000);
    first.sigterm();
    first.expect_exit(0, PATIENCE);
    append_pattern(&path, (1 << 20) + 50_000, 70_000);
    let size = (1 << 20) + 120_000;

    let second = Server::builder().in_process().serve(&path).start();
    for header in [format!("{kept}\n"), format!("+{kept}\n")] {
        let mut resumed = second.connect(header.as_bytes());
        assert_eq!(second.offset_of(&resumed), kept);
        resumed.expect_pattern(kept, size - kept, PATIENCE);
        resumed.expect_silence(QUIET);
    }
}

#[test]
fn sigterm_during_a_catch_up_storm_ends_every_client_with_a_fin_after_an_exact_prefix() {
    const SIZE: u64 = 24 << 20;
    const CLIENTS: usize = 40;
    let dir = TempDir::new();
    let path = dir.join("big.log");
    append_pattern(&path, 0, SIZE);
    let mut server = Server::builder().in_process().serve(&path).start();
    let progress = Arc::new(AtomicU64::new(0));
    // Why look bytes up rather than compute them? Forty readers computing each byte in an
    // unoptimised build took more CPU than the server they test.
    let file: Arc<[u8]> = pattern_range(0, SIZE as usize).into();
    let clients: Vec<Client> = (0..CLIENTS).map(|_| server.connect(b"0\n")).collect();
    for c in &clients {
        server.offset_of(c);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let (progress, file) = (progress.clone(), file.clone());
            thread::spawn(move || {
                let mut stream = c.into_stream();
                let want = |at: u64| file[at as usize];
                read_checked(&mut stream, 0, None, want, &progress, PATIENCE * 3)
            })
        })
        .collect();
    // Mid-storm: some bytes delivered, most not.
    assert!(
        poll_until(PATIENCE, || progress.load(Ordering::Relaxed) >= 4 << 20),
        "the catch-up did not start"
    );
    server.sigterm();
    // Why STOP_PATIENCE (20 s)? At a load average near 90 a shard once had not acted on the
    // stop 10 s on (slow or a lost wake-up: not known). A shard that never acts on it makes
    // the server give up after its own 15 s and exit 1, which fails here as before; one
    // that is merely slow no longer does.
    server.expect_exit(0, STOP_PATIENCE);
    let mut short = 0;
    for r in readers {
        let (got, ending) = r.join().expect("reader");
        assert_eq!(
            ending,
            Some(Ending::Eof),
            "a client was not closed with a FIN after {got} bytes"
        );
        short += usize::from(got < SIZE);
    }
    // Not a timing assertion: had every client finished, this test would test nothing.
    assert!(
        short > 0,
        "every client had the whole file before SIGTERM; grow SIZE"
    );
}

#[test]
fn growth_through_a_hole_sends_its_zeroes_then_the_data() {
    const START: u64 = 1000;
    const HOLE: u64 = 3 << 20;
    let server = Server::in_process(&pattern_range(0, START as usize));
    let mut from_start = server.connect(b"0\n");
    from_start.expect_pattern(0, START, PATIENCE);
    let inside = START + HOLE / 2;
    let mut in_hole = server.connect(format!("{inside}\n").as_bytes());
    assert_eq!(server.offset_of(&in_hole), inside);
    // Extending the file makes a hole (no blocks, reads as zeroes); then data after it.
    let file = OpenOptions::new().write(true).open(server.path()).unwrap();
    file.set_len(START + HOLE).unwrap();
    drop(file);
    let tail = pattern_range(START + HOLE, 5000);
    server.append(&tail);
    let want = |at: u64| if at < START + HOLE { 0 } else { pattern(at) };
    let progress = AtomicU64::new(0);
    for (c, from) in [(&mut from_start, START), (&mut in_hole, inside)] {
        let len = START + HOLE + 5000 - from;
        let (got, ended) = read_checked(
            &mut c.stream().try_clone().unwrap(),
            from,
            Some(len),
            want,
            &progress,
            PATIENCE,
        );
        assert_eq!((got, ended), (len, None));
        c.expect_silence(QUIET);
    }
}

#[test]
fn a_second_server_on_the_same_port_exits_1_and_the_first_keeps_every_client() {
    let first = Server::in_process(b"first\n");
    let port = first.port().to_string();
    let dir = TempDir::new();
    let other = dir.join("other.log");
    std::fs::write(&other, b"second\n").unwrap();
    // What "promptly" means on this machine now: the same start-up failing at the same
    // step for a reason that is never tried again (an address that is not this host's).
    // A loaded machine took 8 s to start a process and give up, so a fixed bound cannot
    // tell a slow machine from a retry loop; this can.
    let never_retried = run_to_exit(
        &["-p", &port, "--bind", "192.0.2.1", other.to_str().unwrap()],
        PATIENCE,
    );
    assert_eq!(never_retried.code, Some(1), "{}", never_retried.stderr);
    for args in [
        vec!["-p", &port, other.to_str().unwrap()],
        vec!["-p", &port, "--bind", "127.0.0.1", other.to_str().unwrap()],
    ] {
        let run = run_to_exit(&args, PATIENCE);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        // Its bind tries again for a quarter of a second (a port held by a process that
        // has just exited), no longer: a port that is really in use fails promptly.
        let prompt = never_retried.elapsed * 2 + Duration::from_secs(2);
        assert!(
            run.elapsed < prompt,
            "{args:?} took {:?} to give up, against {:?} for a failure never retried",
            run.elapsed,
            never_retried.elapsed
        );
        assert!(run.stderr.starts_with("tailsrv: error:"), "{}", run.stderr);
        assert!(!run.stderr.contains(" listening "), "{}", run.stderr);
    }
    // Every new client still reaches the first server: none was stolen by the second.
    let mut clients: Vec<Client> = (0..20).map(|_| first.connect(b"0\n")).collect();
    for c in &mut clients {
        c.expect_bytes(b"first\n", PATIENCE);
    }
    first.append(b"more\n");
    for c in &mut clients {
        c.expect_bytes(b"more\n", PATIENCE);
    }
}
