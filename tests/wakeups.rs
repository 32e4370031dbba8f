//! Who the watcher wakes, and when it wakes at all: a file that grows with nobody connected
//! wakes neither the watcher nor a shard; with one client waiting only that client's shard is
//! woken. Run in-process through the
//! library's seam, so the counts come from the server's state, not from its log.

use crate::common::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};
use tailsrv::{Handle, Rotation};

/// Appends made with no client connected, one write(2) each.
const APPENDS: usize = 1000;
/// Appends made one at a time while a client follows.
const LOCKSTEP: usize = 200;
const RECORD: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";

/// A fresh directory whose `served.log` holds one line, "start", and a two-shard server on it.
fn two_shards_on_start() -> (TempDir, std::path::PathBuf, InProcess) {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, b"start\n");
    let server = InProcess::with_shards(&path, 2, &[]);
    (dir, path, server)
}

/// Appends `APPENDS` records, one write each, and waits until the watcher has published the
/// new size: with nobody connected it takes it on its slow timer, not from inotify.
fn append_records(handle: &Handle, path: &std::path::Path) -> u64 {
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    for _ in 0..APPENDS {
        file.write_all(RECORD).unwrap();
    }
    let size = file.metadata().unwrap().len();
    assert!(
        poll_until(PATIENCE, || handle.file_size() == size),
        "the watcher never took the new size: {} of {size}",
        handle.file_size()
    );
    size
}

/// What the watcher and the shards have done so far, read once every shard has answered
/// every ring delivered to it (the start-up ring at least). Why wait? A shard counts a
/// wake-up when it takes the ring, which may be after the watcher made it: read too early,
/// a ring made before the snapshot is counted after it.
fn woken(handle: &Handle) -> (u64, u64, Vec<u64>) {
    (
        handle.watcher_wakeups(),
        handle.file_events(),
        shard_wakeups(handle),
    )
}

/// [`Handle::shard_wakeups`], once every ring delivered so far has been answered.
#[track_caller]
fn shard_wakeups(handle: &Handle) -> Vec<u64> {
    let settled = poll_until(PATIENCE, || {
        handle.shard_rings().iter().all(|&rung| rung >= 1) && handle.rings_answered()
    });
    assert!(
        settled,
        "rings not answered: {:?} delivered, {:?} answered",
        handle.shard_rings(),
        handle.shard_wakeups()
    );
    handle.shard_wakeups()
}

/// Nobody connected, nobody woken: the watcher stops hearing appends while no client is
/// connected (its wake-up and event counts stay flat while the file grows), takes the size
/// on its slow timer meanwhile, and hears appends again as soon as a client comes: the first
/// client gets everything, including growth the watcher never heard of.
#[test]
fn with_nobody_connected_appends_wake_nobody_and_the_first_client_misses_nothing() {
    let (_dir, path, server) = two_shards_on_start();
    let handle = server.handle.clone();
    assert!(
        poll_until(PATIENCE, || !handle.following_growth()),
        "the watcher still hears appends with nobody connected"
    );
    // Every shard hears the watcher once at start; count from after that.
    assert!(
        poll_until(PATIENCE, || handle.shard_wakeups().iter().all(|&n| n >= 1)),
        "shards never woke at start: {:?}",
        handle.shard_wakeups()
    );

    let before = woken(&handle);
    let looks = handle.idle_looks();
    append_records(&handle, &path);
    assert_eq!(
        woken(&handle),
        before,
        "{APPENDS} appends with nobody connected woke the watcher or a shard"
    );
    assert!(handle.idle_looks() > looks, "the size came from elsewhere");

    // More growth the watcher has not seen at all, then a client from the start.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    for _ in 0..10 {
        file.write_all(RECORD).unwrap();
    }
    let size = file.metadata().unwrap().len();
    let mut want = b"start\n".to_vec();
    for _ in 0..APPENDS + 10 {
        want.extend_from_slice(RECORD);
    }
    assert_eq!(want.len() as u64, size);
    let mut client = Client::connect(handle.local_addr().port());
    client.send(b"0\n");
    client.expect_bytes(&want, PATIENCE);
    assert!(
        poll_until(PATIENCE, || handle.following_growth()),
        "a client is connected but the watcher does not hear appends"
    );
    append(&path, b"next\n");
    client.expect_bytes(b"next\n", PATIENCE);
    // A second client at the end: both get the next append.
    let size = size + 5;
    let mut other = Client::connect(handle.local_addr().port());
    other.send(format!("{size}\n").as_bytes());
    assert!(poll_until(PATIENCE, || handle.clients() == 2));
    append(&path, b"both\n");
    client.expect_bytes(b"both\n", PATIENCE);
    other.expect_bytes(b"both\n", PATIENCE);

    // Everyone leaves: the watcher stops hearing appends again.
    client.reset();
    other.reset();
    assert!(
        poll_until(PATIENCE, || handle.clients() == 0
            && !handle.following_growth()),
        "clients {}, following {}",
        handle.clients(),
        handle.following_growth()
    );
    let before = woken(&handle);
    append_records(&handle, &path);
    append_records(&handle, &path);
    let after = woken(&handle);
    assert_eq!(
        (after.0, after.1),
        (before.0, before.1),
        "appends after the last client left woke the watcher"
    );
    // The first growth published may ring, once, the shard of a client that left while it
    // waited for growth: its wish to hear of it was still up. Nothing more.
    for (shard, (was, now)) in before.2.iter().zip(&after.2).enumerate() {
        assert!(
            now - was <= 1,
            "shard {shard} woke {} times for appends after the last client left",
            now - was
        );
    }
}

/// A file truncated while nobody is connected is noticed on the slow timer, without any
/// client, and handled as any truncation: served from its new length, and, with
/// `--on-rotation exit`, the end of the server.
#[test]
fn a_truncation_with_nobody_connected_is_noticed_on_the_slow_timer() {
    for exit in [false, true] {
        let dir = TempDir::new();
        let path = dir.join("served.log");
        append(&path, &[b'x'; 1000]);
        let extra: &[&str] = if exit {
            &["--on-rotation", "exit"]
        } else {
            &[]
        };
        let mut server = InProcess::start(&path, extra);
        let handle = server.handle.clone();
        assert!(poll_until(PATIENCE, || !handle.following_growth()));
        let looks = handle.idle_looks();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10)
            .unwrap();
        if exit {
            assert_eq!(server.finish(), tailsrv::Outcome::Truncated);
        } else {
            assert!(
                poll_until(PATIENCE, || handle.rotations(Rotation::Truncated) == 1
                    && handle.file_size() == 10),
                "the truncation was not noticed: size {}",
                handle.file_size()
            );
            // Served from the new length: a client from the start gets the ten bytes left.
            let mut client = Client::connect(handle.local_addr().port());
            client.send(b"0\n");
            client.expect_bytes(&[b'x'; 10], PATIENCE);
        }
        assert!(handle.idle_looks() > looks, "noticed by something else");
        assert_eq!(handle.watcher_wakeups(), 0, "no inotify wake-up for it");
    }
}

#[test]
fn growth_wakes_only_the_shards_with_clients_waiting() {
    let (_dir, path, server) = two_shards_on_start();
    let handle = server.handle.clone();
    // Every shard hears the watcher once at start.
    assert!(
        shard_wakeups(&handle).iter().all(|&n| n >= 1),
        "shards never woke at start: {:?}",
        handle.shard_wakeups()
    );

    // Nobody connected: the file grows, no shard wakes.
    assert!(poll_until(PATIENCE, || !handle.following_growth()));
    let before = shard_wakeups(&handle);
    append_records(&handle, &path);
    assert_eq!(
        shard_wakeups(&handle),
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
    let before = shard_wakeups(&handle);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    for _ in 0..LOCKSTEP {
        file.write_all(RECORD).unwrap();
        client.expect_bytes(RECORD, PATIENCE);
    }
    let after = shard_wakeups(&handle);
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

/// The quiet look: with someone connected, a second without news makes the watcher look at
/// the file itself (a lost wake-up then costs a second, not the stream); a calm file finds
/// nothing there, and a busy one never waits long enough to look.
#[test]
fn with_someone_connected_the_watcher_looks_after_a_quiet_second_and_never_while_busy() {
    let (_dir, path, server) = two_shards_on_start();
    let handle = server.handle.clone();
    let mut client = Client::connect(handle.local_addr().port());
    client.send(b"-0\n");
    assert!(
        poll_until(PATIENCE, || handle.following_growth()),
        "the watcher does not hear appends with a client connected"
    );
    let looks = handle.quiet_looks();
    assert!(
        poll_until(PATIENCE, || handle.quiet_looks() >= looks + 2),
        "no quiet looks in {PATIENCE:?}: {}",
        handle.quiet_looks()
    );
    assert_eq!(
        handle.unannounced_growth(),
        0,
        "a calm file grew unannounced"
    );
    assert_eq!(
        handle.deliveries(),
        0,
        "a look at a calm file delivered something"
    );

    // Busy: an append every 20 ms, each heard. A look needs a second without any; the only
    // such second would be this thread's own stall, which a loaded machine can cause: then
    // the round says nothing, and is tried again.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    let mut sent = 0;
    let quiet = (0..3).find_map(|_| {
        let looks = handle.quiet_looks();
        let mut longest = Duration::ZERO;
        let mut last = Instant::now();
        let end = last + Duration::from_millis(2500);
        while Instant::now() < end {
            file.write_all(RECORD).unwrap();
            sent += 1;
            thread::sleep(Duration::from_millis(20));
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        (longest < Duration::from_millis(500)).then(|| handle.quiet_looks() - looks)
    });
    assert_eq!(
        quiet,
        Some(0),
        "quiet looks while busy (None: this thread stalled in every round)"
    );
    client.expect_bytes(&RECORD.repeat(sent), PATIENCE);
    assert_eq!(handle.unannounced_growth(), 0);
}

/// Voluntary context switches of the process's threads named `name`: how often they slept.
fn sleeps_of(pid: i32, name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// A shard answering the watcher's ring must not wake the watcher back. It did while growth
/// rang through a glommio shared channel, which wakes its sender whenever the receiver takes
/// an item: the watcher then slept up to once more per append for every shard it rang (see
/// `state`, "Why does growth ring an eventfd"). Counted as the watcher threads' voluntary
/// context switches in a real server process with clients on both shards, one append at a
/// time, each awaited at every client.
#[test]
fn a_shard_answering_a_ring_does_not_wake_the_watcher_back() {
    let server = Server::builder()
        // No window: appends made as soon as the last one arrived would wait for it, and
        // the window's end is a wake-up of its own.
        .args(["--shards", "2", "--linger", "0"])
        .contents(b"start\n")
        .start();
    // Eight clients: both shards have some, but for a 1 in 128 chance.
    let mut clients: Vec<Client> = (0..8).map(|_| server.connect(b"6\n")).collect();
    server.append(b"first\n");
    for client in &mut clients {
        client.expect_bytes(b"first\n", PATIENCE);
    }
    let before = sleeps_of(server.pid(), "tailsrv-watcher");
    for _ in 0..LOCKSTEP {
        server.append(RECORD);
        for client in &mut clients {
            client.expect_bytes(RECORD, PATIENCE);
        }
    }
    let slept = sleeps_of(server.pid(), "tailsrv-watcher") - before;
    // Once per append, and some slack for the odd extra look. Through the channel it was
    // 285 to 298 for 200 appends (1.4 to 1.5 per append), through the eventfd 188 to 196.
    let most = LOCKSTEP as u64 * 5 / 4;
    assert!(
        slept <= most,
        "the watcher slept {slept} times for {LOCKSTEP} appends (at most {most} expected)"
    );
}
