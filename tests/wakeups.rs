//! Which shards the watcher wakes: a file that grows with nobody waiting wakes no shard, and
//! with one client waiting only that client's shard is woken. Run in-process through the
//! library's seam, so the counts come from the server's state, not from its log.

use crate::common::*;
use std::fs::OpenOptions;
use std::io::Write;
use tailsrv::Handle;

/// Appends made with no client connected, one write(2) each.
const APPENDS: usize = 1000;
/// Appends made one at a time while a client follows.
const LOCKSTEP: usize = 200;
const RECORD: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";

/// Appends `APPENDS` records, one write each, and waits until the watcher has published the
/// new size and read at least one event for them.
fn append_records(handle: &Handle, path: &std::path::Path) {
    let events = handle.file_events();
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    for _ in 0..APPENDS {
        file.write_all(RECORD).unwrap();
    }
    let size = file.metadata().unwrap().len();
    assert!(
        poll_until(PATIENCE, || handle.file_size() == size
            && handle.file_events() > events),
        "the watcher never saw the appends: size {} of {size}",
        handle.file_size()
    );
}

#[test]
fn growth_wakes_only_the_shards_with_clients_waiting() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, b"start\n");
    let server = InProcess::with_shards(&path, 2, &[]);
    let handle = server.handle.clone();
    // Every shard hears the watcher once at start.
    assert!(
        poll_until(PATIENCE, || handle.shard_wakeups().iter().all(|&n| n >= 1)),
        "shards never woke at start: {:?}",
        handle.shard_wakeups()
    );

    // Nobody connected: the file grows, no shard wakes.
    let before = handle.shard_wakeups();
    append_records(&handle, &path);
    assert_eq!(
        handle.shard_wakeups(),
        before,
        "{APPENDS} appends with no client woke a shard"
    );

    // One client at the end of the file: only its shard wakes. Its header names the
    // current end, so the first append reaches it however soon the header is read.
    let size = std::fs::metadata(&path).unwrap().len();
    let mut client = Client::connect(handle.local_addr().port());
    client.send(format!("{size}\n").as_bytes());
    append(&path, b"first\n");
    client.expect_bytes(b"first\n", PATIENCE);
    let mine = handle
        .shard_clients()
        .iter()
        .position(|&n| n == 1)
        .expect("one shard has the client");
    // One append at a time, each awaited at the client, so that the client is waiting
    // when the next one comes. (Growth that lands while a shard's clients are busy is taken
    // in without a ring when they next wait, so a burst may need no wake-up at all.)
    let before = handle.shard_wakeups();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    for _ in 0..LOCKSTEP {
        file.write_all(RECORD).unwrap();
        client.expect_bytes(RECORD, PATIENCE);
    }
    let after = handle.shard_wakeups();
    for (shard, (&was, &now)) in before.iter().zip(&after).enumerate() {
        if shard == mine {
            assert!(
                now > was && now - was <= LOCKSTEP as u64,
                "the client's shard {shard}: {before:?} -> {after:?} wake-ups for {LOCKSTEP} appends"
            );
        } else {
            assert_eq!(now, was, "shard {shard}, with no client, was woken");
        }
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        size + 6 + (RECORD.len() * LOCKSTEP) as u64
    );
}
