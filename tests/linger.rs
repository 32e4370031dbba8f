//! Coalescing deliveries (`--linger`): an append to a calm file goes out at once; appends that
//! come within the window after a delivery go out together when it ends, none lost and none
//! later than `--linger` allows. Run in-process, so that "went out together" is the server's
//! own count of deliveries, not a guess from timing.
//!
//! Why `--linger 1s`, a first window of a quarter of a second? The checks that matter are
//! counts, and the timing bounds must hold on a loaded machine: a long window keeps the
//! scheduler's delays small beside it.

use crate::common::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

/// `--linger`: the longest a busy file's window grows.
const LINGER: Duration = Duration::from_secs(1);
/// The first window, a quarter of `--linger`: what a calm file's next append may wait.
const WINDOW: Duration = Duration::from_millis(250);
/// How much later than its window a held delivery may reach the client on a busy machine:
/// beside two CPU hogs and the rest of the suite, a window's timer fired up to 0.55 s late.
const SLACK: Duration = Duration::from_secs(1);
/// Appends made in one burst.
const BURST: usize = 20;
const RECORD: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";

/// A server with `extra` options and one client following the end of the file.
fn follow(dir: &TempDir, extra: &[&str]) -> (InProcess, Client, std::path::PathBuf) {
    let path = dir.join("served.log");
    append(&path, b"start\n");
    let server = InProcess::with_shards(&path, 2, extra);
    let handle = server.handle.clone();
    let mut client = Client::connect(server.port());
    client.send(b"6\n");
    assert!(
        poll_until(PATIENCE, || handle.following_growth()),
        "the watcher does not hear appends with a client connected"
    );
    // The client is at the end once an append reaches it.
    append(&path, b"ready\n");
    client.expect_bytes(b"ready\n", PATIENCE);
    (server, client, path)
}

/// Appends one record and returns when the client has it, and how long that took.
fn one_append(path: &std::path::Path, client: &mut Client, what: &[u8]) -> (Instant, Duration) {
    let sent = Instant::now();
    append(path, what);
    client.expect_bytes(what, PATIENCE);
    (sent, sent.elapsed())
}

#[test]
fn a_calm_append_goes_at_once_and_a_burst_within_the_window_goes_together_when_it_ends() {
    let dir = TempDir::new();
    let (server, mut client, path) = follow(&dir, &["--linger", "1s"]);
    let handle = server.handle.clone();

    // Calm: more than a window since the last delivery (the "ready" record).
    std::thread::sleep(WINDOW);
    let (held, deliveries) = (handle.held_deliveries(), handle.deliveries());
    let (first_sent, latency) = one_append(&path, &mut client, b"calm\n");
    assert_eq!(handle.held_deliveries(), held, "the calm append was held");
    assert_eq!(handle.deliveries(), deliveries + 1);
    // The count above says it was not held; the time only rules out a gross delay (a loaded
    // machine took 0.35 s to hand over an append that was not held).
    assert!(latency < LINGER, "the calm append took {latency:?}");

    // A burst right after that delivery, inside its window: one delivery, when it ends.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    let burst_start = Instant::now();
    for _ in 0..BURST {
        file.write_all(RECORD).unwrap();
    }
    let written = burst_start.elapsed();
    client.expect_bytes(&RECORD.repeat(BURST), PATIENCE);
    let arrived = Instant::now();
    assert!(
        written < WINDOW / 2,
        "writing the burst took {written:?}: the test cannot tell what it wants to"
    );
    assert_eq!(
        handle.deliveries(),
        deliveries + 2,
        "{BURST} appends within one window must go out in one delivery"
    );
    assert_eq!(handle.held_deliveries(), held + 1, "the burst was not held");
    // Not before the window after the calm delivery (which came after `first_sent`) ...
    assert!(
        arrived - first_sent >= WINDOW,
        "the burst arrived {:?} after the calm append, within the window",
        arrived - first_sent
    );
    // ... and not much after it.
    assert!(
        arrived - burst_start <= WINDOW + SLACK,
        "the burst arrived {:?} after it was written",
        arrived - burst_start
    );

    // A first window after that delivery with nothing appended, the file is calm: the next
    // append goes at once again. (What is tested is the passing of time: the sleep is it.)
    std::thread::sleep(WINDOW);
    let held = handle.held_deliveries();
    let (_, latency) = one_append(&path, &mut client, b"calm again\n");
    assert_eq!(handle.held_deliveries(), held, "a calm append was held");
    // The count above says it was not held; the time only rules out a gross delay (a loaded
    // machine took 0.35 s to hand over an append that was not held).
    assert!(latency < LINGER, "the calm append took {latency:?}");
    client.expect_silence(QUIET);
}

/// Appends that keep coming: every one arrives, in order, and the deliveries are far fewer
/// than the appends, each carrying what came during a window.
#[test]
fn a_busy_file_is_delivered_in_windows_and_nothing_is_lost() {
    let dir = TempDir::new();
    let (server, mut client, path) = follow(&dir, &["--linger", "1s"]);
    let handle = server.handle.clone();
    let deliveries = handle.deliveries();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    let start = Instant::now();
    let mut want = Vec::new();
    // One record every 10 ms for a second: about four windows' worth.
    for i in 0..100u32 {
        let record = format!("{i:08}\n");
        file.write_all(record.as_bytes()).unwrap();
        want.extend_from_slice(record.as_bytes());
        let next = start + Duration::from_millis(10 * (u64::from(i) + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let writing = start.elapsed();
    client.expect_bytes(&want, PATIENCE);
    let done = start.elapsed();
    let made = handle.deliveries() - deliveries;
    // A delivery per window while the writer writes, and one at the end; the windows grow
    // from the first (a quarter second) while the file stays busy, and a slow writer makes
    // more of them, never more than one per first window.
    let windows = (writing.as_secs_f64() / WINDOW.as_secs_f64()).ceil() as u64;
    assert!(
        (2..=windows + 2).contains(&made),
        "{made} deliveries for 100 appends over {writing:?}"
    );
    // No append waits longer than `--linger`.
    assert!(
        done <= writing + LINGER + SLACK,
        "the last append arrived {done:?} after the first, writing took {writing:?}"
    );
    client.expect_silence(QUIET);
}

/// `--linger 0`: every append is its own delivery, and none waits.
#[test]
fn with_no_window_every_append_is_delivered_at_once() {
    let dir = TempDir::new();
    let (server, mut client, path) = follow(&dir, &["--linger", "0"]);
    let handle = server.handle.clone();
    let (deliveries, held) = (handle.deliveries(), handle.held_deliveries());
    for i in 0..20 {
        one_append(&path, &mut client, format!("record {i}\n").as_bytes());
    }
    assert_eq!(handle.deliveries(), deliveries + 20);
    assert_eq!(handle.held_deliveries(), held);
}
