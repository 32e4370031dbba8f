//! The server's life: a file that appears late, is deleted, renamed, replaced or truncated;
//! signals; freeing closed clients; and refusing to start.

use crate::common::*;
use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use tailsrv::{Outcome, Rotation};

const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog\n";

/// The option that keeps the old behaviour these tests pin down: exit 3 when FILE goes, 4
/// when it shrinks (by default tailsrv follows the name: see tests/rotation.rs).
const EXIT: [&str; 2] = ["--on-rotation", "exit"];

/// A server (in-process) on a file holding `contents` that exits when FILE is rotated.
#[track_caller]
fn start_exiting(contents: &[u8]) -> Server {
    Server::builder()
        .in_process()
        .contents(contents)
        .args(EXIT)
        .start()
}

/// How long the server may take to exit once it has decided to: clients that read promptly
/// are drained at once, and the drain grace is 2 s.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

#[test]
fn a_file_created_after_startup_is_served() {
    let server = Server::builder().in_process().no_file().start();
    assert!(!server.path().exists());
    // A typo in FILE must be visible: a warning with the full path.
    let dir = server.dir().path().canonicalize().unwrap();
    let full = dir.join("served.log").display().to_string();
    let line = server
        .logs()
        .wait_for("warning of the missing file", PATIENCE, |l| {
            l.contains("WARN") && l.contains("file does not exist; waiting for it to appear")
        });
    assert_eq!(field(&line, "file"), Some(full.as_str()), "{line}");
    let mut whole = server.connect(b"0\n");
    let mut new_only = server.connect(b"-0\n");
    let mut from_five = server.connect(b"5\n");
    assert_eq!(server.offset_of(&whole), 0);
    assert_eq!(server.offset_of(&new_only), 0);
    assert_eq!(server.offset_of(&from_five), 5);
    whole.expect_silence(QUIET);

    server.append(TEXT);
    whole.expect_bytes(TEXT, PATIENCE);
    new_only.expect_bytes(TEXT, PATIENCE);
    from_five.expect_bytes(&TEXT[5..], PATIENCE);

    let mut late = server.connect(b"-4\n");
    late.expect_bytes(&TEXT[TEXT.len() - 4..], PATIENCE);
    server.append(b"more\n");
    for client in [&mut whole, &mut new_only, &mut from_five, &mut late] {
        client.expect_bytes(b"more\n", PATIENCE);
    }
}

/// Clients of a file of [`BODY`] bytes about to go away: one caught up, one that has not
/// read its last 1000 bytes yet, one waiting past the end. Each test then appends [`TAIL`]
/// bytes just before the file goes, which the first two are owed as well.
struct Audience {
    caught_up: Client,
    lagging: Client,
    waiting: Client,
}

const BODY: u64 = 256 << 10;
const TAIL: u64 = 5000;

fn audience(server: &Server) -> Audience {
    let mut caught_up = server.connect(b"0\n");
    caught_up.expect_pattern(0, BODY, PATIENCE);
    let lagging = server.connect(b"-1000\n");
    let waiting = server.connect(format!("{}\n", 10 * BODY).as_bytes());
    assert_eq!(server.offset_of(&lagging), BODY - 1000);
    assert_eq!(server.offset_of(&waiting), 10 * BODY);
    Audience {
        caught_up,
        lagging,
        waiting,
    }
}

/// After the file went away: everyone gets exactly what it held, then an orderly EOF.
fn assert_drained(mut a: Audience) {
    a.caught_up.expect_pattern(BODY, TAIL, PATIENCE);
    a.caught_up.expect_eof(PATIENCE);
    a.lagging.expect_pattern(BODY - 1000, 1000 + TAIL, PATIENCE);
    a.lagging.expect_eof(PATIENCE);
    a.waiting.expect_eof(PATIENCE);
}

/// Waits until the server has counted the file as gone for the reason `why` (its `Handle`
/// counts rotations by kind), and for no other reason.
#[track_caller]
fn assert_gone_because(server: &Server, why: Rotation) {
    let handle = server.handle();
    assert!(
        poll_until(PATIENCE, || handle.rotations(why) == 1),
        "the server did not see the file {why:?}"
    );
    for other in [
        Rotation::Deleted,
        Rotation::Renamed,
        Rotation::Replaced,
        Rotation::Truncated,
    ] {
        if other != why {
            assert_eq!(handle.rotations(other), 0, "{other:?} too");
        }
    }
}

#[test]
fn a_deleted_file_is_drained_to_clients_then_the_server_exits_3() {
    let mut server = start_exiting(&pattern_range(0, BODY as usize));
    let clients = audience(&server);
    append_pattern(server.path(), BODY, TAIL);
    fs::remove_file(server.path()).unwrap();
    assert_gone_because(&server, Rotation::Deleted);
    assert_drained(clients);
    server.expect_exit(3, EXIT_WITHIN);
}

#[test]
fn a_file_renamed_away_is_drained_to_clients_then_the_server_exits_3() {
    let mut server = start_exiting(&pattern_range(0, BODY as usize));
    let clients = audience(&server);
    append_pattern(server.path(), BODY, TAIL);
    fs::rename(server.path(), server.dir().join("rotated.log")).unwrap();
    assert_gone_because(&server, Rotation::Renamed);
    assert_drained(clients);
    server.expect_exit(3, EXIT_WITHIN);
}

#[test]
fn a_file_replaced_by_another_is_drained_then_the_server_exits_3() {
    let mut server = start_exiting(&pattern_range(0, BODY as usize));
    let clients = audience(&server);
    append_pattern(server.path(), BODY, TAIL);
    // The replacement's bytes must never reach anyone: it is a different file.
    let next = server.dir().join("next.log");
    fs::write(&next, vec![b'N'; 2 * (BODY + TAIL) as usize]).unwrap();
    // `mv next FILE` unlinks the served file as `rm` would; it is still "replaced".
    fs::rename(&next, server.path()).unwrap();
    assert_gone_because(&server, Rotation::Replaced);
    assert_drained(clients);
    server.expect_exit(3, EXIT_WITHIN);
}

/// Truncation: the server exits 4 and resets every client, so that what it had queued from
/// the shrinking file is dropped rather than delivered.
///
/// What cannot be tested here, because no server can promise it: bytes the kernel already
/// sent before the truncation. On loopback those sit in the client's receive buffer as
/// references to the file's cached pages, and the truncation zeroes the page that straddles
/// the new end in place. So the stuck client below starts past that page: everything it
/// receives must be the file's original bytes, and its stream must end in a reset.
#[test]
fn a_truncated_file_stops_the_server_with_4_and_resets_clients() {
    const SIZE: u64 = 16 << 20;
    const STUCK_AT: u64 = 8 << 20;
    let mut server = start_exiting(b"");
    append_pattern(server.path(), 0, SIZE);
    let mut caught_up = server.connect(b"0\n");
    caught_up.expect_pattern(0, SIZE, Duration::from_secs(30));
    // Never reads until the end: the server is stuck mid-file on it when the file shrinks.
    let mut stuck = server.connect(format!("{STUCK_AT}\n").as_bytes());
    let mut new_only = server.connect(b"-0\n");
    assert_eq!(server.offset_of(&stuck), STUCK_AT);
    assert_eq!(server.offset_of(&new_only), SIZE);
    let file = OpenOptions::new().write(true).open(server.path()).unwrap();
    file.set_len(100).unwrap();
    drop(file);
    server.expect_exit(4, EXIT_WITHIN);

    assert_eq!(
        caught_up.expect_closed_without_data(PATIENCE),
        Ending::Reset
    );
    assert_eq!(new_only.expect_closed_without_data(PATIENCE), Ending::Reset);
    let (got, ending) = stuck.read_to_end(PATIENCE);
    assert_eq!(
        ending,
        Ending::Reset,
        "the stuck client's stream must not end cleanly"
    );
    assert!(
        got.len() as u64 <= SIZE - STUCK_AT,
        "stuck client got {} bytes",
        got.len()
    );
    assert_bytes(
        &got,
        &pattern_range(STUCK_AT, got.len()),
        "stuck client's bytes",
    );
}

/// Clients in each state a signal can find them in: caught up, waiting for growth, waiting
/// past the end, and not yet through their header.
///
/// Why a 60 s header timeout? The client without a header must be closed because of the
/// signal, not because its timeout ran out; with the timeout far beyond PATIENCE, the test
/// can give the close all the slack a loaded machine needs and still tell the two apart.
fn assert_signal_closes_everyone(signal: i32) {
    // The binary: the point is the signal.
    let mut server = Server::builder()
        .contents(TEXT)
        .args(["--header-timeout", "60", "--metrics", "127.0.0.1:0"])
        .start();
    let mut caught_up = server.connect(b"0\n");
    caught_up.expect_bytes(TEXT, PATIENCE);
    let mut new_only = server.connect(b"-0\n");
    let mut past_end = server.connect(b"1000\n");
    // All three are past their header (where each starts, protocol.rs checks).
    assert!(
        poll_until(PATIENCE, || server
            .metrics()
            .sum("tailsrv_clients_streaming")
            == 3),
        "{:?}",
        server.metrics()
    );
    let mut no_header = server.connect(b"12");

    server.signal(signal);
    caught_up.expect_eof(PATIENCE);
    new_only.expect_eof(PATIENCE);
    past_end.expect_eof(PATIENCE);
    no_header.expect_closed_without_data(PATIENCE);
    server.expect_exit(0, PATIENCE);
}

#[test]
fn sigterm_closes_clients_with_fin_and_exits_0() {
    assert_signal_closes_everyone(libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_fin_and_exits_0() {
    assert_signal_closes_everyone(libc::SIGINT);
}

#[test]
fn closed_clients_are_freed() {
    // The binary, whose descriptors are its own to count; the metrics say who is connected.
    let server = Server::builder()
        .contents(TEXT)
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let connected = || server.metrics().sum("tailsrv_clients_connected");
    // Warm up: serve and close one client, so anything made lazily already exists.
    let mut warm = server.connect(b"0\n");
    warm.expect_bytes(TEXT, PATIENCE);
    drop(warm);
    server.append(b"warm-up\n");
    assert!(
        poll_until(PATIENCE, || connected() == 0),
        "warm-up client never finished"
    );
    let baseline = settled_fd_count(&server);

    let file_now = fs::read(server.path()).unwrap();
    let mut clients: Vec<Client> = (0..20).map(|_| server.connect(b"0\n")).collect();
    for client in &mut clients {
        client.expect_bytes(&file_now, PATIENCE);
    }
    let during = server.fd_count();
    assert!(
        during >= baseline + 20,
        "{during} descriptors with 20 clients, {baseline} before"
    );

    drop(clients);
    server.append(b"after the clients left\n");
    let mut now = during;
    let freed = poll_until(PATIENCE, || {
        now = server.fd_count();
        now <= baseline
    });
    assert!(
        freed,
        "server still holds {now} descriptors, {baseline} before 20 clients came and went"
    );
    assert_eq!(connected(), 0, "clients still counted");
}

/// The server's descriptor count once it holds still: the metrics requests just made close
/// their connections a moment after the answer has gone out.
fn settled_fd_count(server: &Server) -> usize {
    let mut last = server.fd_count();
    let deadline = Instant::now() + PATIENCE;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.fd_count();
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Asserts a run failed cleanly: the status, one `tailsrv: error:` line, no panic.
#[track_caller]
fn assert_fatal(run: &Finished, code: i32) {
    assert_eq!(run.code, Some(code), "exit status; stderr:\n{}", run.stderr);
    assert!(
        !run.stderr.contains("panicked"),
        "panicked:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(" listening "),
        "started listening:\n{}",
        run.stderr
    );
}

#[test]
fn a_port_in_use_exits_1_with_a_one_line_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = TempDir::new();
    let file = dir.join("served.log");
    fs::write(&file, TEXT).unwrap();
    let run = run_to_exit(
        &["--bind", "127.0.0.1", "-p", &port, file.to_str().unwrap()],
        PATIENCE,
    );
    assert_fatal(&run, 1);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "want a one-line error, got:\n{}",
        run.stderr
    );
    assert!(lines[0].starts_with("tailsrv: error:"), "{}", lines[0]);
    assert!(
        lines[0].contains(&port),
        "the error does not name the port: {}",
        lines[0]
    );
}

#[test]
fn a_directory_as_file_exits_1_at_once() {
    let dir = TempDir::new();
    let sub = dir.join("a-directory");
    fs::create_dir(&sub).unwrap();
    for path in [sub.to_str().unwrap(), "/"] {
        let run = run_to_exit(&["-p", "0", path], PATIENCE);
        assert_fatal(&run, 1);
        assert!(
            run.stderr.lines().any(|l| l.starts_with("tailsrv: error:")),
            "{path}: no error line:\n{}",
            run.stderr
        );
        assert!(
            run.elapsed < Duration::from_secs(5),
            "{path}: took {:?}",
            run.elapsed
        );
    }
}

#[test]
fn a_missing_parent_directory_exits_1_at_once() {
    let dir = TempDir::new();
    let path = dir.join("no-such-dir").join("served.log");
    let run = run_to_exit(&["-p", "0", path.to_str().unwrap()], PATIENCE);
    assert_fatal(&run, 1);
    assert!(
        run.stderr.lines().any(|l| l.starts_with("tailsrv: error:")),
        "no error line:\n{}",
        run.stderr
    );
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn bad_command_lines_exit_2() {
    let dir = TempDir::new();
    let file = dir.join("served.log");
    fs::write(&file, TEXT).unwrap();
    let file = file.to_str().unwrap();
    let cases: [&[&str]; 9] = [
        &["-p", "0", "--shards", "0", file],
        &[file],
        &["-p", "70000", file],
        &["-p", "0", "--header-timeout", "0", file],
        &["-p", "0", "--header-timeout", "soon", file],
        &["-p", "0", "--bind", "not/a/host", file],
        &["-p", "0"],
        &["-p", "0", "--no-such-option", file],
        &[],
    ];
    for args in cases {
        let run = run_to_exit(args, PATIENCE);
        assert_eq!(run.code, Some(2), "{args:?}: stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains("error"),
            "{args:?}: no error message:\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("panicked"),
            "{args:?} panicked:\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_port_given_without_p_is_called_missing() {
    let dir = TempDir::new();
    let file = dir.join("served.log");
    let file = file.to_str().unwrap();
    let run = run_to_exit(&["4321", file], PATIENCE);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let first = run.stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "error: the port is missing: it is given with -p (did you mean `tailsrv -p 4321 {file}`?)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("unexpected argument"),
        "{}",
        run.stderr
    );
}

#[test]
fn sighup_closes_clients_with_fin_and_exits_0() {
    assert_signal_closes_everyone(libc::SIGHUP);
}

/// Pattern bytes large enough that a client that never reads cannot take them all: its
/// receive buffer and the server's send buffer fill long before (a few MiB on loopback).
const FLOOD: u64 = 32 << 20;

/// Asserts that a client which stopped reading a [`FLOOD`] from byte 0 got a true prefix of
/// it, cut short, then an orderly end.
#[track_caller]
fn expect_cut_short_then_eof(stalled: &mut Client) {
    let (got, ending) = stalled.read_to_end(PATIENCE);
    assert!(
        (got.len() as u64) < FLOOD,
        "the stalled client got the whole file"
    );
    assert_bytes(
        &got,
        &pattern_range(0, got.len()),
        "the stalled client's bytes",
    );
    assert_eq!(ending, Ending::Eof);
}

#[test]
fn the_drain_gives_a_client_that_stopped_reading_2_s_then_closes_it() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append_pattern(&path, 0, FLOOD);
    let mut server = InProcess::start(&path, &EXIT);
    let mut reader = Client::connect(server.port());
    reader.send(b"0\n");
    reader.expect_pattern(0, FLOOD, Duration::from_secs(60));
    // Never reads (until the end of the test): the server is stuck mid-file on it.
    let mut stalled = Client::connect(server.port());
    stalled.send(b"0\n");
    assert!(
        poll_until(PATIENCE, || server.handle.blocked() == 1),
        "the stalled client's socket never filled"
    );

    let removed = Instant::now();
    fs::remove_file(&path).unwrap();
    reader.expect_eof(PATIENCE);
    assert_eq!(server.finish(), Outcome::FileGone);
    let drained = removed.elapsed();
    // The drain waits 2 s for the stalled client (the lower bound cannot be broken by a slow
    // machine), then closes it instead of waiting for ever (finish has a deadline).
    assert!(
        drained >= Duration::from_millis(1900),
        "the server stopped {drained:?} after the file went, before the 2 s drain limit"
    );
    // What the stalled client got is a true prefix of the file, cut short, then an orderly
    // end.
    expect_cut_short_then_eof(&mut stalled);
}

#[test]
fn sigterm_while_a_clients_socket_is_full_closes_it_and_exits_0() {
    let mut server = Server::in_process(&pattern_range(0, FLOOD as usize));
    let mut stalled = server.connect(b"0\n");
    let mut caught_up = server.connect(b"-0\n");
    assert_eq!(server.offset_of(&caught_up), FLOOD);
    assert_eq!(server.offset_of(&stalled), 0);
    // The stalled client's socket is full: its task waits for room.
    assert!(
        poll_until(PATIENCE, || server.handle().blocked() == 1),
        "the stalled client's socket never filled ({} blocked)",
        server.handle().blocked()
    );
    server.sigterm();
    caught_up.expect_eof(PATIENCE);
    // The full socket does not hold the server up: it exits, after a grace of 0.5 s at most.
    server.expect_exit(0, PATIENCE);
    // The client waiting for room was woken and closed by the shutdown, not abandoned when
    // its shard gave up on it (a task dropped mid-wait never counts itself unblocked).
    assert_eq!(
        server.handle().blocked(),
        0,
        "the full socket's client was abandoned"
    );
    expect_cut_short_then_eof(&mut stalled);
}

#[test]
fn appends_to_a_file_renamed_away_are_not_sent() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, TEXT);
    let mut server = InProcess::start(&path, &EXIT);
    let mut client = Client::connect(server.port());
    client.send(b"0\n");
    client.expect_bytes(TEXT, PATIENCE);
    let rotated = dir.join("rotated.log");
    fs::rename(&path, &rotated).unwrap();
    assert!(
        poll_until(PATIENCE, || server.handle.stopping()),
        "the server did not notice the rename"
    );
    // The writer still has the old file open and carries on: none of it may be sent.
    append(&rotated, b"written after the rename\n");
    let (rest, ending) = client.read_to_end(PATIENCE);
    assert_bytes(&rest, b"", "bytes after the rename");
    assert_eq!(ending, Ending::Eof);
    assert_eq!(server.finish(), Outcome::FileGone);
    assert_eq!(server.handle.file_size(), TEXT.len() as u64);
}

#[test]
fn a_directory_removed_before_the_file_exists_stops_the_server_with_3() {
    let mut server = Server::builder().in_process().no_file().start();
    let mut waiting = server.connect(b"0\n");
    assert_eq!(server.offset_of(&waiting), 0);
    fs::remove_dir(server.dir().path()).unwrap();
    waiting.expect_eof(PATIENCE);
    server.expect_exit(3, PATIENCE);
}
