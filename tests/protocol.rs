//! The client protocol end to end: every header form, half-close, trailing input, every kind
//! of bad header, and offsets past 4 GiB.

use crate::common::*;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

/// The file the header tests start from: 44 distinct-enough bytes.
const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog\n";

/// `TEXT.len()` as an offset.
fn text_len() -> u64 {
    TEXT.len() as u64
}

#[test]
fn zero_sends_the_whole_file_then_what_is_appended() {
    let server = Server::in_process(TEXT);
    let mut client = server.connect(b"0\n");
    client.expect_bytes(TEXT, PATIENCE);
    assert_eq!(server.offset_of(&client), 0);
    server.append(b"second line\n");
    client.expect_bytes(b"second line\n", PATIENCE);
    client.expect_silence(QUIET);
}

#[test]
fn plus_n_starts_at_byte_n() {
    let server = Server::in_process(TEXT);
    let mut client = server.connect(b"+10\n");
    client.expect_bytes(&TEXT[10..], PATIENCE);
    assert_eq!(server.offset_of(&client), 10);
    server.append(b"more\n");
    client.expect_bytes(b"more\n", PATIENCE);
}

#[test]
fn bare_n_starts_at_byte_n() {
    let server = Server::in_process(TEXT);
    let mut client = server.connect(b"7\n");
    client.expect_bytes(&TEXT[7..], PATIENCE);
    assert_eq!(server.offset_of(&client), 7);
    server.append(b"more\n");
    client.expect_bytes(b"more\n", PATIENCE);
}

#[test]
fn n_equal_to_the_size_sends_only_new_data() {
    let server = Server::in_process(TEXT);
    let mut client = server.connect(format!("{}\n", text_len()).as_bytes());
    assert_eq!(server.offset_of(&client), text_len());
    client.expect_silence(QUIET);
    server.append(b"new\n");
    client.expect_bytes(b"new\n", PATIENCE);
}

#[test]
fn minus_n_sends_the_last_n_bytes() {
    let server = Server::in_process(TEXT);
    let mut client = server.connect(b"-5\n");
    client.expect_bytes(&TEXT[TEXT.len() - 5..], PATIENCE);
    assert_eq!(server.offset_of(&client), text_len() - 5);
    server.append(b"more\n");
    client.expect_bytes(b"more\n", PATIENCE);
}

#[test]
fn minus_zero_sends_only_new_data() {
    let server = Server::in_process(TEXT);
    let mut client = server.connect(b"-0\n");
    // The offset is fixed when the header is processed; append only after that.
    assert_eq!(server.offset_of(&client), text_len());
    client.expect_silence(QUIET);
    server.append(b"only this\n");
    client.expect_bytes(b"only this\n", PATIENCE);
    client.expect_silence(QUIET);
}

#[test]
fn minus_n_counts_back_from_the_size_when_the_header_arrives() {
    let server = Server::in_process(TEXT);
    server.append(b"0123456789");
    // The watcher may not have seen the append yet; the header must still count from it.
    let mut client = server.connect(b"-4\n");
    client.expect_bytes(b"6789", PATIENCE);
    assert_eq!(server.offset_of(&client), text_len() + 6);
}

#[test]
fn minus_n_beyond_the_size_is_clamped_to_the_start() {
    let server = Server::in_process(TEXT);
    let mut big = server.connect(b"-1000\n");
    let mut min = server.connect(b"-9223372036854775808\n");
    big.expect_bytes(TEXT, PATIENCE);
    min.expect_bytes(TEXT, PATIENCE);
    assert_eq!(server.offset_of(&big), 0);
    assert_eq!(server.offset_of(&min), 0);
    server.append(b"more\n");
    big.expect_bytes(b"more\n", PATIENCE);
    min.expect_bytes(b"more\n", PATIENCE);
}

#[test]
fn whitespace_and_crlf_around_the_header_are_ignored() {
    let server = Server::in_process(TEXT);
    let cases: [(&[u8], u64); 6] = [
        (b"  \t12\t \r\n", 12),
        (b"+3\r\n", 3),
        (b"\t-4 \r\n", text_len() - 4),
        (b" -0\r\n", text_len()),
        (b"\r\r 0 \r\r\n", 0),
        (b"007\n", 7),
    ];
    let mut clients: Vec<(Client, u64)> = cases
        .iter()
        .map(|&(header, offset)| (server.connect(header), offset))
        .collect();
    for ((client, offset), (header, _)) in clients.iter_mut().zip(cases) {
        let header = String::from_utf8_lossy(header);
        assert_eq!(
            server.offset_of(client),
            *offset,
            "offset for header {header:?}"
        );
        client.expect_bytes(&TEXT[*offset as usize..], PATIENCE);
    }
    server.append(b"appended\n");
    for (client, _) in &mut clients {
        client.expect_bytes(b"appended\n", PATIENCE);
    }
}

#[test]
fn every_append_reaches_a_caught_up_client_in_order() {
    let server = Server::in_process(b"");
    let mut client = server.connect(b"0\n");
    assert_eq!(server.offset_of(&client), 0);
    let mut rng = Rng::new(7);
    let mut at = 0u64;
    for _ in 0..50 {
        let n = 1 + rng.below(3000) as usize;
        let bytes = pattern_range(at, n);
        server.append(&bytes);
        client.expect_bytes(&bytes, PATIENCE);
        at += n as u64;
    }
    client.expect_silence(QUIET);
}

#[test]
fn a_start_past_the_end_waits_then_gets_bytes_from_its_offset() {
    let server = Server::in_process(&pattern_range(0, 10));
    let mut client = server.connect(b"100\n");
    assert_eq!(server.offset_of(&client), 100);
    client.expect_silence(QUIET);
    // Growing, but not yet to the client's offset: still nothing.
    append_pattern(server.path(), 10, 50);
    client.expect_silence(QUIET);
    // Past it: exactly the bytes from offset 100 on.
    append_pattern(server.path(), 60, 90);
    client.expect_bytes(&pattern_range(100, 50), PATIENCE);
    append_pattern(server.path(), 150, 1000);
    client.expect_bytes(&pattern_range(150, 1000), PATIENCE);
    client.expect_silence(QUIET);
}

#[test]
fn a_half_closed_client_keeps_receiving() {
    // In-process, so the test can wait for the server's liveness check of the half-closed
    // client (about a second after data is sent to it) instead of sleeping and hoping it
    // has happened: the client must survive that check.
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, TEXT);
    let server = InProcess::start(&path, &[]);
    let mut client = Client::connect(server.port());
    client.send(b"0\n");
    client.shutdown_write();
    client.expect_bytes(TEXT, PATIENCE);
    append(&path, b"first append\n");
    client.expect_bytes(b"first append\n", PATIENCE);
    let checked = poll_until(PATIENCE, || server.handle.liveness_checks() >= 1);
    assert!(checked, "no liveness check within {PATIENCE:?}");
    assert_eq!(
        server.handle.clients(),
        1,
        "the half-closed client was dropped"
    );
    append(&path, b"second append\n");
    client.expect_bytes(b"second append\n", PATIENCE);
}

#[test]
fn a_closed_client_is_dropped_by_the_liveness_check() {
    // The counterpart of the test above: the check does drop a client that is gone.
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, TEXT);
    let server = InProcess::start(&path, &[]);
    let mut client = Client::connect(server.port());
    client.send(b"0\n");
    client.expect_bytes(TEXT, PATIENCE);
    assert!(poll_until(PATIENCE, || server.handle.clients() == 1));
    let checks = server.handle.liveness_checks();
    drop(client);
    // The server cannot tell a closed client from a half-closed one until it sends to it:
    // closing alone must not drop it.
    client_still_counted(&server.handle);
    append(&path, b"to nobody\n");
    let dropped = poll_until(PATIENCE, || server.handle.clients() == 0);
    assert!(
        dropped,
        "closed client still counted ({} checks)",
        server.handle.liveness_checks()
    );
    // And it was the check that found it gone.
    assert!(
        server.handle.liveness_checks() > checks,
        "the client went without a liveness check"
    );
}

/// Asserts that the one client is still counted a moment after it closed: the server
/// cannot know yet that it is gone.
#[track_caller]
fn client_still_counted(handle: &tailsrv::Handle) {
    let deadline = std::time::Instant::now() + QUIET;
    while std::time::Instant::now() < deadline {
        assert_eq!(
            handle.clients(),
            1,
            "dropped before anything was sent to it"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_header_ended_by_half_close_without_newline_is_accepted() {
    let server = Server::in_process(TEXT);
    let mut plain = server.connect(b"3");
    plain.shutdown_write();
    let mut negative = server.connect(b" -4 ");
    negative.shutdown_write();
    plain.expect_bytes(&TEXT[3..], PATIENCE);
    negative.expect_bytes(&TEXT[TEXT.len() - 4..], PATIENCE);
    assert_eq!(server.offset_of(&plain), 3);
    assert_eq!(server.offset_of(&negative), text_len() - 4);
    server.append(b"more\n");
    plain.expect_bytes(b"more\n", PATIENCE);
    negative.expect_bytes(b"more\n", PATIENCE);
}

#[test]
fn bytes_sent_after_the_header_are_ignored() {
    let server = Server::in_process(TEXT);
    // Junk in the same segment as the header, including things that look like headers.
    let mut client = server.connect(b"0\n5\n-1\nGARBAGE\xff\xfe no newline");
    client.expect_bytes(TEXT, PATIENCE);
    assert_eq!(server.offset_of(&client), 0);
    // A lot more junk while streaming, interleaved with appends.
    let junk = vec![b'x'; 256 << 10];
    for round in 0..4u8 {
        client.send(&junk);
        client.send(b"\n-0\n");
        let line = format!("append {round}\n");
        server.append(line.as_bytes());
        client.expect_bytes(line.as_bytes(), PATIENCE);
    }
    client.expect_silence(QUIET);
}

/// Connects a good client, then one that sends `bad`; asserts the bad one is closed with no
/// data and a warning naming it, and the good one (and a later one) are served as usual.
fn assert_refused(server: &Server, bad: &[u8]) {
    let mut good = server.connect(b"0\n");
    let mut refused = server.connect(bad);
    let port = refused.local_port();
    refused.expect_closed_without_data(PATIENCE);
    server.expect_bad_header_warning(port);
    assert!(
        !server.streaming().contains_key(&port),
        "the refused client {bad:?} was streamed to"
    );
    good.expect_bytes(&std::fs::read(server.path()).unwrap(), PATIENCE);
    let line = format!("after refusing {:?}\n", String::from_utf8_lossy(bad));
    server.append(line.as_bytes());
    good.expect_bytes(line.as_bytes(), PATIENCE);
    let mut later = server.connect(format!("-{}\n", line.len()).as_bytes());
    later.expect_bytes(line.as_bytes(), PATIENCE);
}

#[test]
fn malformed_headers_are_refused() {
    let server = Server::in_process(TEXT);
    for bad in [
        &b"abc\n"[..],
        b"1 2\n",
        b"--1\n",
        b"0x10\n",
        b"+-1\n",
        b"-\n",
        b"1.5\n",
    ] {
        assert_refused(&server, bad);
    }
}

#[test]
fn overflowing_headers_are_refused() {
    let server = Server::in_process(TEXT);
    for bad in [
        &b"9223372036854775808\n"[..],
        b"-9223372036854775809\n",
        b"99999999999999999999999\n",
    ] {
        assert_refused(&server, bad);
    }
}

#[test]
fn non_ascii_headers_are_refused() {
    let server = Server::in_process(TEXT);
    for bad in ["\u{ff11}\n".as_bytes(), b"1\xe9\n", b"\xff\n"] {
        assert_refused(&server, bad);
    }
}

#[test]
fn a_header_too_long_without_newline_is_refused() {
    let server = Server::in_process(TEXT);
    let digits = "1".repeat(70);
    assert_refused(&server, digits.as_bytes());
    // Padding counts too: a valid number after 64 spaces is still too long.
    assert_refused(&server, format!("{}1\n", " ".repeat(64)).as_bytes());
}

#[test]
fn an_empty_header_line_is_refused() {
    let server = Server::in_process(TEXT);
    for bad in [&b"\n"[..], b" \t\r\n", b"\n0\n"] {
        assert_refused(&server, bad);
    }
}

#[test]
fn a_client_without_a_complete_header_in_time_is_closed() {
    let server = Server::builder()
        .in_process()
        .contents(TEXT)
        .arg("--header-timeout")
        .arg("0.5")
        .start();
    let mut good = server.connect(b"0\n");
    good.expect_bytes(TEXT, PATIENCE);

    let started = Instant::now();
    let mut silent = server.connect(b"");
    let mut partial = server.connect(b"12");
    let ports = [silent.local_port(), partial.local_port()];
    silent.expect_closed_without_data(PATIENCE);
    partial.expect_closed_without_data(PATIENCE);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}, before the 0.5 s header timeout"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed after {waited:?}: --header-timeout 0.5 was not honoured"
    );
    for port in ports {
        server.expect_bad_header_warning(port);
    }

    // A slow client that completes its header in time is served.
    let mut slow = server.connect(b"-");
    std::thread::sleep(Duration::from_millis(100));
    slow.send(b"5\n");
    slow.expect_bytes(&TEXT[TEXT.len() - 5..], PATIENCE);

    server.append(b"still serving\n");
    good.expect_bytes(b"still serving\n", PATIENCE);
    slow.expect_bytes(b"still serving\n", PATIENCE);
}

#[test]
fn offsets_beyond_4_gib_are_served() {
    const FIVE_GIB: u64 = 5 << 30;
    const MARKER: &[u8] = b"marker at five GiB\n";
    let server = Server::in_process(b"");
    let mut file = OpenOptions::new().write(true).open(server.path()).unwrap();
    // Sparse: the 5 GiB of zeroes take no disk space.
    file.set_len(FIVE_GIB).unwrap();
    file.seek(SeekFrom::Start(FIVE_GIB)).unwrap();
    file.write_all(MARKER).unwrap();
    drop(file);

    let mut at = server.connect(format!("{FIVE_GIB}\n").as_bytes());
    at.expect_bytes(MARKER, PATIENCE);
    assert_eq!(server.offset_of(&at), FIVE_GIB);

    let mut inside = server.connect(format!("+{}\n", FIVE_GIB + 7).as_bytes());
    inside.expect_bytes(&MARKER[7..], PATIENCE);

    let mut tail = server.connect(b"-3\n");
    tail.expect_bytes(&MARKER[MARKER.len() - 3..], PATIENCE);
    assert_eq!(server.offset_of(&tail), FIVE_GIB + MARKER.len() as u64 - 3);

    let mut straddling = server.connect(format!("-{}\n", MARKER.len() + 5).as_bytes());
    let mut want = vec![0u8; 5];
    want.extend_from_slice(MARKER);
    straddling.expect_bytes(&want, PATIENCE);

    server.append(b"end\n");
    for client in [&mut at, &mut inside, &mut tail, &mut straddling] {
        client.expect_bytes(b"end\n", PATIENCE);
    }
}

#[test]
fn the_header_timeout_is_a_deadline_not_an_idle_timer() {
    let server = Server::builder()
        .in_process()
        .contents(TEXT)
        .arg("--header-timeout")
        .arg("1")
        .start();
    let mut trickler = server.connect(b"");
    let port = trickler.local_port();
    // A byte of padding every 200 ms: never idle for the 1 s timeout, never a whole header,
    // and for 8 s in all (40 bytes, within the 64-byte header limit).
    const TRICKLE: Duration = Duration::from_secs(8);
    let mut writer = trickler.stream().try_clone().expect("cloning the socket");
    let trickling = std::thread::spawn(move || {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(200));
            if std::io::Write::write_all(&mut writer, b" ").is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    trickler.expect_closed_without_data(PATIENCE);
    let closed = started.elapsed();
    // An idle timer would close only after the trickle stops, at 9 s.
    assert!(
        closed < TRICKLE,
        "closed after {closed:?}: the timeout was reset by each byte"
    );
    server.expect_bad_header_warning(port);
    trickling.join().unwrap();
}

#[test]
fn a_client_that_resets_is_dropped_at_once() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, TEXT);
    let server = InProcess::start(&path, &[]);
    // One caught up, one waiting past the end, one mid-header: nothing will be sent to any
    // of them, so only their resets can tell the server they are gone.
    let mut caught_up = Client::connect(server.port());
    caught_up.send(b"0\n");
    caught_up.expect_bytes(TEXT, PATIENCE);
    let mut past_end = Client::connect(server.port());
    past_end.send(b"100000\n");
    let mut mid_header = Client::connect(server.port());
    mid_header.send(b"12");
    let mut stays = Client::connect(server.port());
    stays.send(b"-0\n");
    assert!(poll_until(PATIENCE, || server.handle.clients() == 4));
    for client in [caught_up, past_end, mid_header] {
        client.reset();
    }
    let dropped = poll_until(PATIENCE, || server.handle.clients() == 1);
    assert!(
        dropped,
        "{} clients still counted after three reset",
        server.handle.clients()
    );
    append(&path, b"still serving\n");
    stays.expect_bytes(b"still serving\n", PATIENCE);
}
