//! Full sockets: a client that reads slower than tailsrv sends waits without losing a byte,
//! each wait ends in a real piece of the file (not a byte at a time), and a crowd of clients
//! catching up at once all reach the end.

use crate::common::*;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Long enough for any of these transfers on a loaded CI machine; they take about a second.
const TRANSFER: Duration = Duration::from_secs(60);

/// How long a reader may go without a byte before the test calls it stuck.
///
/// Why a limit on silence rather than on the whole transfer? What these tests catch is a
/// client left waiting for room that never comes: it gets nothing, ever again. A machine
/// loaded far beyond its cores only slows every byte down (128 readers once took over 60 s
/// there), and a deadline on the whole transfer failed on that instead.
const STALL: Duration = Duration::from_secs(30);

/// Reads `want.len()` bytes from `stream`, `piece` bytes at a time with `pause` after each
/// read, and compares them with `want`; returns how many bytes matched before the first
/// difference, EOF, or [`STALL`] without a byte.
fn read_pattern(stream: &mut TcpStream, want: &[u8], piece: usize, pause: Duration) -> u64 {
    let len = want.len();
    let mut buf = vec![0u8; piece];
    let mut at = 0;
    if stream.set_read_timeout(Some(STALL)).is_err() {
        return 0;
    }
    while at < len {
        let room = (len - at).min(piece);
        let n = match stream.read(&mut buf[..room]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Why compare with a copy of the file rather than compute each byte? The crowd
        // checks 512 MiB: computed byte by byte in the unoptimised test build, its test took
        // 9.8 s on an idle machine, 0.9 s compared this way; the readers' CPU starved the
        // server they test on a loaded one.
        if buf[..n] != want[at..at + n] {
            let bad = (0..n)
                .find(|&i| buf[i] != want[at + i])
                .expect("a difference");
            return (at + bad) as u64;
        }
        at += n;
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
    at as u64
}

#[test]
fn a_slow_reader_gets_every_byte_and_each_wait_ends_in_a_real_piece() {
    const SIZE: u64 = 32 << 20;
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append_pattern(&path, 0, SIZE);
    let server = InProcess::start(&path, &[]);
    let handle = server.handle.clone();

    let mut client = Client::connect(server.port());
    client.send(b"0\n");
    let mut stream = client.into_stream();
    // 64 KiB reads with a pause: the server fills the socket and waits, again and again.
    let want = pattern_range(0, SIZE as usize);
    let got = read_pattern(&mut stream, &want, 64 << 10, Duration::from_micros(300));
    assert_eq!(got, SIZE, "the slow reader got {got} good bytes of {SIZE}");
    assert!(
        poll_until(PATIENCE, || handle.bytes_sent() == SIZE),
        "sent {} of {SIZE}",
        handle.bytes_sent()
    );

    // Why count the waits? A wait that a too-early wake-up ends sends little or nothing,
    // and the client waits again: the data still arrives, but at a cost in CPU that only
    // the count shows. (An earlier design sent one byte per wake-up in that state.) Each
    // wait should end when the kernel has room for a good part of the send buffer, many KiB;
    // 4 KiB per wait on average is far below that and far above a byte.
    let waits = handle.full_waits();
    assert!(
        waits > 0,
        "the socket was never full: the test did not test waiting"
    );
    assert!(
        SIZE / waits >= 4096,
        "{waits} waits for {SIZE} bytes: {} bytes per wait",
        SIZE / waits
    );
    assert_eq!(handle.blocked(), 0, "a client still counted as blocked");
}

#[test]
fn a_crowd_catching_up_at_once_all_reach_the_end() {
    // Why many clients at once, with two shards? Sends cut short early in a connection,
    // while the kernel grows the socket's buffer, once left clients waiting for room that
    // never came; it took dozens of fresh connections sending at full speed to see it.
    const SIZE: u64 = 4 << 20;
    const CLIENTS: usize = 128;
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append_pattern(&path, 0, SIZE);
    let mut server = InProcess::with_shards(&path, 2, &[]);
    let handle = server.handle.clone();
    let port = server.port();

    let want: Arc<[u8]> = pattern_range(0, SIZE as usize).into();
    let readers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = Client::connect(port);
            client.send(b"0\n");
            let mut stream = client.into_stream();
            // Some read in big gulps, some in small sips, a few pause: the sockets fill and
            // drain at different times.
            let piece = [1 << 20, 64 << 10, 4 << 10][i % 3];
            let pause = if i % 8 == 0 {
                Duration::from_micros(200)
            } else {
                Duration::ZERO
            };
            let want = want.clone();
            thread::spawn(move || read_pattern(&mut stream, &want, piece, pause))
        })
        .collect();
    let got: Vec<u64> = readers
        .into_iter()
        .map(|r| r.join().expect("reader panicked"))
        .collect();
    let short: Vec<(usize, u64)> = got
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, n)| n != SIZE)
        .collect();
    assert!(
        short.is_empty(),
        "{} of {CLIENTS} clients did not get all {SIZE} bytes right (client, good bytes): {short:?}; \
         still blocked: {}",
        short.len(),
        handle.blocked()
    );
    assert!(
        poll_until(PATIENCE, || handle.bytes_sent() == SIZE * CLIENTS as u64),
        "sent {} of {}",
        handle.bytes_sent(),
        SIZE * CLIENTS as u64
    );
    server.stop.fire();
    server.finish();
}

#[test]
fn a_full_socket_drains_while_the_server_has_no_descriptor_to_spare() {
    // Why? Waiting for room goes through a shard's epoll set, awaited through io_uring with a
    // duplicate descriptor; a server at its descriptor limit must still wake a client whose
    // socket drains, and must not treat the shortage as the set failing.
    const SIZE: u64 = 16 << 20;
    let server = Server::builder()
        .nofile(64)
        .args(["--shards", "2", "--max-clients", "1000"])
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    append_pattern(server.path(), 0, SIZE);
    let mut reader = server.connect(b"0\n");
    // It reads nothing yet: its socket fills and it waits for room.
    assert!(
        poll_until(PATIENCE, || server.metrics().sum("tailsrv_clients_blocked")
            == 1),
        "the reader never waited for room: {:?}",
        server.metrics()
    );
    // Idle clients until the server has no descriptor left; the last ones wait in the
    // listen backlog.
    let _idle: Vec<Client> = (0..64).map(|_| server.connect(b"-0\n")).collect();
    server
        .logs()
        .wait_for("the start of the shortage", PATIENCE, |l| {
            l.contains("WARN") && l.contains("out of descriptors:")
        });

    reader.expect_pattern(0, SIZE, TRANSFER);
    let log = server.logs().dump();
    assert!(
        !log.contains("waiting for full sockets to drain")
            && !log.contains("collecting sockets with room"),
        "the room set failed: {log}"
    );
}
