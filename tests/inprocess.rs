//! A whole server inside the test process, through the library's seam: bind on port 0, serve
//! on a thread, read the server's state from its `Handle`, stop it with a future or the handle.

use crate::common::*;
use std::thread;
use tailsrv::cli::Options;
use tailsrv::{Outcome, Server};

#[test]
fn in_process_server_streams_and_reports_its_state() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, b"hello");
    let mut server = InProcess::start(&path, &[]);
    let handle = server.handle.clone();
    assert_eq!(handle.shards(), 1);
    assert_eq!(handle.file_size(), 5);
    assert!(handle.file_open());
    assert_eq!(handle.clients(), 0);

    let mut client = Client::connect(server.port());
    client.send(b"0\n");
    client.expect_bytes(b"hello", PATIENCE);
    assert!(
        poll_until(PATIENCE, || handle.clients() == 1),
        "clients: {}",
        handle.clients()
    );
    assert_eq!(handle.accepted(), 1);

    append(&path, b", world");
    client.expect_bytes(b", world", PATIENCE);
    assert!(
        poll_until(PATIENCE, || handle.file_size() == 12),
        "size: {}",
        handle.file_size()
    );
    assert!(
        poll_until(PATIENCE, || handle.bytes_sent() == 12),
        "sent: {}",
        handle.bytes_sent()
    );

    // A second client that resets: the count goes back down at once. (One that only sends
    // a FIN is kept: it may be a half-closed client still reading.)
    let mut other = Client::connect(server.port());
    other.send(b"-5\n");
    other.expect_bytes(b"world", PATIENCE);
    assert!(poll_until(PATIENCE, || handle.clients() == 2));
    other.reset();
    assert!(
        poll_until(PATIENCE, || handle.clients() == 1),
        "clients: {}",
        handle.clients()
    );

    assert!(!handle.stopping());
    server.stop.fire();
    client.expect_eof(PATIENCE);
    assert_eq!(server.finish(), Outcome::Signalled);
    assert!(handle.stopping());
    assert_eq!(handle.clients(), 0);
}

#[test]
fn handle_shutdown_stops_a_server_that_waits() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, b"x");
    let server = bind_in_process(&path, &["--shards", "2"]);
    let handle = server.handle();
    assert_eq!(handle.shards(), 2);
    let mut client = Client::connect(server.local_addr().port());
    client.send(b"0\n");
    let waiting = thread::spawn(move || server.wait());
    client.expect_bytes(b"x", PATIENCE);
    handle.shutdown();
    client.expect_eof(PATIENCE);
    assert!(
        poll_until(PATIENCE, || waiting.is_finished()),
        "wait did not return"
    );
    assert_eq!(waiting.join().unwrap().unwrap(), Outcome::Signalled);
}

#[test]
fn in_process_server_ends_when_the_file_is_removed() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, b"abc");
    let mut server = InProcess::start(&path, &["--on-rotation", "exit"]);
    let mut client = Client::connect(server.port());
    client.send(b"0\n");
    client.expect_bytes(b"abc", PATIENCE);
    std::fs::remove_file(&path).unwrap();
    client.expect_eof(PATIENCE);
    assert_eq!(server.finish(), Outcome::FileGone);
}

#[test]
fn dropping_an_unserved_server_stops_it_and_frees_the_port() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    let server = bind_in_process(&path, &["--shards", "1"]);
    let addr = server.local_addr();
    let handle = server.handle();
    assert!(!handle.file_open(), "no file yet");
    drop(server);
    assert!(handle.stopping());
    // Nothing listens any more: a new listener can take the exact port. (Not at once: the
    // kernel lets go of a listener with an io_uring accept pending when it cancels that
    // accept, which it does in the background as the shard's ring is torn down.)
    let mut last = None;
    let rebound = poll_until(PATIENCE, || match std::net::TcpListener::bind(addr) {
        Ok(_) => true,
        Err(e) => {
            last = Some(e);
            false
        }
    });
    assert!(rebound, "rebinding {addr}: {last:?}");
}

#[test]
fn bind_reports_a_missing_directory_as_an_error() {
    let dir = TempDir::new();
    let path = dir.join("no-such-dir/served.log");
    let opts = Options::try_parse_from_args(&["tailsrv", "-p", "0", path.to_str().unwrap()]);
    let err = Server::bind(&opts).err().expect("binding must fail");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn join_within_leaves_a_thread_that_does_not_finish_and_says_so() {
    // What the harness's drops rely on to fail a test, rather than hang the test binary,
    // when a stopped server never returns from `serve`.
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let stuck = thread::spawn(move || blocked.recv().is_ok());
    assert!(join_within(stuck, std::time::Duration::from_millis(50)).is_none());
    // The detached thread is still running: it ends only when let go.
    release.send(()).expect("the stuck thread is still waiting");
    let done = thread::spawn(|| 7);
    assert_eq!(join_within(done, PATIENCE).map(|r| r.unwrap()), Some(7));
    let panicked = thread::spawn(|| panic!("on purpose"));
    assert!(join_within(panicked, PATIENCE).is_some_and(|r| r.is_err()));
}
