//! Following FILE's name through rotations (the default, `--on-rotation follow`): clients of
//! the old file get what it held and an orderly end (or a reset, when it was truncated),
//! the listeners stay open, and new clients get the new file. The state is asked of the
//! server (its `Handle`, or its metrics for the binary), never read from its log.

use crate::common::*;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tailsrv::{FileId, Handle, Rotation};

/// Content that differs from the pattern at every offset near the start: "the new file".
fn other(len: u64) -> Vec<u8> {
    pattern_range(1_000_003, len as usize)
}

/// A fresh directory whose `served.log` holds the first `len` bytes of the pattern, and a
/// two-shard server on it.
fn served_pattern(len: u64) -> (TempDir, PathBuf, InProcess) {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append_pattern(&path, 0, len);
    let server = InProcess::with_shards(&path, 2, &[]);
    (dir, path, server)
}

/// A client that asked for the file from 0 and has read its first `len` bytes.
#[track_caller]
fn client_caught_up(port: u16, len: u64) -> Client {
    let mut client = Client::connect(port);
    client.send(b"0\n");
    client.expect_pattern(0, len, PATIENCE);
    client
}

/// Truncates the file at `path` to nothing, in place (copytruncate's second step).
fn truncate(path: &Path) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(0))
        .unwrap_or_else(|e| panic!("truncating {}: {e}", path.display()));
}

/// Waits until the server serves the file now at `path` to new clients.
#[track_caller]
fn expect_serving(handle: &Handle, path: &Path) -> FileId {
    let ino = fs::metadata(path).unwrap().ino();
    let mut id = None;
    assert!(
        poll_until(PATIENCE, || {
            id = handle.file_id();
            id.is_some_and(|id| id.ino == ino)
        }),
        "the server serves {id:?}, not inode {ino}"
    );
    id.unwrap()
}

/// Asserts how many rotations of each kind the server has counted.
#[track_caller]
fn assert_rotations(handle: &Handle, want: [u64; 4]) {
    let got = Rotation::ALL.map(|kind| handle.rotations(kind));
    assert_eq!(got, want, "rotations renamed, replaced, deleted, truncated");
}

/// Waits until the server holds only the current file open: every rotated one was closed
/// when its last client ended.
#[track_caller]
fn expect_old_files_closed(handle: &Handle) {
    expect_open_files(handle, 1, "");
}

/// Waits until the server holds no file open at all (between a rotation and the next file).
#[track_caller]
fn expect_old_files_closed_or_none(handle: &Handle) {
    expect_open_files(handle, 0, " with no file at FILE's name");
}

/// Waits until the server holds `want` generations of FILE open; `context` ends the message.
#[track_caller]
fn expect_open_files(handle: &Handle, want: u64, context: &str) {
    let mut open = 0;
    assert!(
        poll_until(PATIENCE, || {
            open = handle.open_generations();
            open == want
        }),
        "{open} files still open{context}"
    );
}

#[test]
fn a_rename_and_create_ends_100_clients_mid_stream_with_the_old_bytes_then_serves_the_new_file() {
    const OLD: u64 = 64 << 10;
    const TAIL: u64 = 5000;
    const CLIENTS: usize = 100;
    let (dir, path, server) = served_pattern(OLD);
    let first = expect_serving(&server.handle, &path);
    // One reading thread per client, started before the rotation: they read in parallel, so
    // that no client's full socket waits on another's turn, and nothing is left to start
    // during the 2 s the old file's clients have (on a machine loaded ~50 deep, starting
    // 100 threads after the rename once left 5 clients cut short by the drain's end).
    let (started, mid_stream) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = Client::connect(server.port());
            c.send(b"0\n");
            let started = started.clone();
            thread::spawn(move || {
                c.expect_pattern(0, 1000, PATIENCE);
                started.send(()).unwrap();
                c.expect_pattern(1000, OLD + TAIL - 1000, PATIENCE);
                c.expect_eof(PATIENCE);
            })
        })
        .collect();
    // Mid-stream: every client has started on the file.
    for _ in 0..CLIENTS {
        mid_stream.recv_timeout(PATIENCE).expect("a client started");
    }
    assert_eq!(server.handle.file_readers(), CLIENTS as u64);
    append_pattern(&path, OLD, TAIL);
    fs::rename(&path, dir.join("served.log.1")).unwrap();
    let new = other(3000);
    fs::write(&path, &new).unwrap();
    let failed = readers
        .into_iter()
        .map(|r| r.join())
        .filter(Result::is_err)
        .count();
    let handle = &server.handle;
    // The rings each shard was sent and answered tell a shard asleep through its doorbell
    // from one that was only slow to send the tail within the drain's 2 s.
    assert_eq!(
        failed,
        0,
        "clients of the old file without all of it and an end (their messages are above); \
         clients per shard {:?}, rings {:?}, answered {:?}",
        handle.shard_clients(),
        handle.shard_rings(),
        handle.shard_wakeups(),
    );
    let second = expect_serving(&server.handle, &path);
    assert_ne!(first, second);
    let mut later = Client::connect(server.port());
    later.send(b"0\n");
    later.expect_bytes(&new, PATIENCE);
    assert_rotations(&server.handle, [1, 0, 0, 0]);
    expect_old_files_closed(&server.handle);
    assert!(!server.handle.stopping());
}

#[test]
fn a_file_created_2_s_after_the_rename_is_served_to_clients_that_came_in_between() {
    const OLD: u64 = 20_000;
    let (dir, path, server) = served_pattern(OLD);
    let mut old = client_caught_up(server.port(), OLD);

    fs::rename(&path, dir.join("served.log.1")).unwrap();
    old.expect_eof(PATIENCE);
    assert!(
        poll_until(PATIENCE, || !server.handle.file_open()),
        "the server still serves the renamed file"
    );
    assert_rotations(&server.handle, [1, 0, 0, 0]);
    // The port stays open while there is no file: clients wait for the next one.
    let mut between = Client::connect(server.port());
    between.send(b"0\n");
    between.expect_silence(QUIET);
    expect_old_files_closed_or_none(&server.handle);

    // The writer's next file comes two seconds later (that is the scenario, not a wait).
    thread::sleep(Duration::from_secs(2));
    let new = other(5000);
    fs::write(&path, &new).unwrap();
    between.expect_bytes(&new, PATIENCE);
    expect_serving(&server.handle, &path);
    let mut after = Client::connect(server.port());
    after.send(b"-100\n");
    after.expect_bytes(&new[new.len() - 100..], PATIENCE);
    append(&path, b"more\n");
    between.expect_bytes(b"more\n", PATIENCE);
    after.expect_bytes(b"more\n", PATIENCE);
    expect_old_files_closed(&server.handle);
}

#[test]
fn a_file_replaced_by_another_drains_its_clients_and_serves_the_other() {
    const OLD: u64 = 100_000;
    let (dir, path, server) = served_pattern(OLD);
    let mut caught_up = client_caught_up(server.port(), OLD);
    let mut past_end = Client::connect(server.port());
    past_end.send(format!("{}\n", 2 * OLD).as_bytes());
    // Both read this file before it is replaced.
    assert!(poll_until(PATIENCE, || server.handle.file_readers() == 2));
    let next = dir.join("next.log");
    let new = other(3 * OLD);
    fs::write(&next, &new).unwrap();
    fs::rename(&next, &path).unwrap();
    // Neither gets a byte of the other file: it is not the one they asked about.
    caught_up.expect_eof(PATIENCE);
    past_end.expect_eof(PATIENCE);
    expect_serving(&server.handle, &path);
    let mut later = Client::connect(server.port());
    later.send(format!("{}\n", 2 * OLD).as_bytes());
    later.expect_bytes(&new[2 * OLD as usize..], PATIENCE);
    assert_rotations(&server.handle, [0, 1, 0, 0]);
    expect_old_files_closed(&server.handle);
}

#[test]
fn a_deleted_then_recreated_file_is_followed_by_the_binary_as_its_metrics_show() {
    const OLD: u64 = 50_000;
    let server = Server::builder()
        .contents(&pattern_range(0, OLD as usize))
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let mut old = server.connect(b"-1000\n");
    old.expect_pattern(OLD - 1000, 1000, PATIENCE);
    let before = server.metrics();
    let info = |s: &std::collections::HashMap<String, f64>| {
        s.keys()
            .find(|k| k.starts_with("tailsrv_file_info{"))
            .cloned()
    };
    let inode = fs::metadata(server.path()).unwrap().ino();
    let first = info(&before.0).expect("a file_info sample while the file exists");
    assert!(first.contains(&format!("inode=\"{inode}\"")), "{first}");

    fs::remove_file(server.path()).unwrap();
    old.expect_eof(PATIENCE);
    let deleted = "tailsrv_rotations_total{kind=\"deleted\"}";
    assert!(
        poll_until(PATIENCE, || server.metrics().sum(deleted) == 1),
        "the deletion was not counted"
    );
    let gone = server.metrics();
    assert_eq!(info(&gone.0), None, "no file, no file_info");
    assert_eq!(gone.sum("tailsrv_open_files"), 0);

    let mut waiting = server.connect(b"0\n");
    let new = other(7000);
    fs::write(server.path(), &new).unwrap();
    waiting.expect_bytes(&new, PATIENCE);
    let mut later = server.connect(b"0\n");
    later.expect_bytes(&new, PATIENCE);
    let now = server.metrics();
    let second = info(&now.0).expect("a file_info sample for the new file");
    assert_ne!(first, second);
    let inode = fs::metadata(server.path()).unwrap().ino();
    assert!(second.contains(&format!("inode=\"{inode}\"")), "{second}");
    assert_eq!(now.sum("tailsrv_rotations_total"), 1);
    assert_eq!(now.sum("tailsrv_open_files"), 1);
}

/// One record a racing writer appends: its sequence number, fixed width.
fn record(n: u64) -> Vec<u8> {
    format!("racing record {n:09}\n").into_bytes()
}

#[test]
fn copytruncate_with_racing_appends_resets_old_clients_and_serves_from_the_new_start() {
    const OLD: u64 = 1 << 20;
    let (dir, path, server) = served_pattern(OLD);
    let first = expect_serving(&server.handle, &path);
    let mut reader = client_caught_up(server.port(), OLD);
    let mut new_only = Client::connect(server.port());
    new_only.send(b"-0\n");

    // The program that writes the log: it never reopens it, and appends (O_APPEND) so that
    // after the truncation its records land at the new end.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(0u64));
    let writer = {
        let (path, stop, written) = (path.clone(), stop.clone(), written.clone());
        thread::spawn(move || {
            let mut log = OpenOptions::new().append(true).open(&path).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                // Why write under the lock? The count must say exactly which records went
                // in before the truncation, which takes the lock too.
                let mut count = written.lock().unwrap();
                log.write_all(&record(n)).unwrap();
                n += 1;
                *count = n;
                drop(count);
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    assert!(poll_until(PATIENCE, || *written.lock().unwrap() >= 20));
    // Both clients read the old contents before the truncation: the one at the end has
    // been sent a record appended after its header.
    let first_record = new_only.read_exactly(record(0).len(), PATIENCE);
    assert!(
        first_record.starts_with(b"racing record"),
        "{first_record:?}"
    );
    assert_eq!(server.handle.file_readers(), 2);
    // logrotate's copytruncate: copy, then truncate in place, with the writer going on.
    let rotated = dir.join("served.log.1");
    fs::copy(&path, &rotated).unwrap();
    // A record written between the copy and the truncation is lost, as in real logrotate;
    // one counted after it but written before it would make the new file look short.
    let truncated_at = {
        let count = written.lock().unwrap();
        truncate(&path);
        *count
    };
    assert!(
        poll_until(PATIENCE, || server.handle.rotations(Rotation::Truncated)
            == 1),
        "the truncation was not seen"
    );
    let after = server.handle.file_id().expect("the file is still open");
    assert_eq!((after.ino, after.truncations), (first.ino, 1));
    let mut fresh = Client::connect(server.port());
    fresh.send(b"0\n");
    assert!(poll_until(PATIENCE, || *written.lock().unwrap() >= truncated_at + 20));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // The clients of the old contents are reset; what they got before is the old file's.
    let copy = fs::read(&rotated).unwrap();
    let (got, ending) = reader.read_to_end(PATIENCE);
    assert_eq!(
        ending,
        Ending::Reset,
        "the old contents' client must be reset"
    );
    let common = got.len().min(copy.len() - OLD as usize);
    assert_bytes(
        &got[..common],
        &copy[OLD as usize..OLD as usize + common],
        "the old client's bytes",
    );
    assert_eq!(new_only.read_to_end(PATIENCE).1, Ending::Reset);

    // The file goes on from its new start: a client from byte 0 gets exactly it.
    let now = fs::read(&path).unwrap();
    assert!(
        now.len() as u64 >= 20 * record(0).len() as u64 && now.starts_with(b"racing record"),
        "the truncated file holds {} bytes",
        now.len()
    );
    fresh.expect_bytes(&now, PATIENCE);
    fresh.expect_silence(QUIET);
    assert_rotations(&server.handle, [0, 0, 0, 1]);
    expect_old_files_closed(&server.handle);
}

/// Reads what arrives until `deadline`, the end of the stream, or an error; never panics.
fn read_until(stream: &mut TcpStream, deadline: Instant) -> Vec<u8> {
    read_up_to(stream, usize::MAX, deadline)
}

/// As [`read_until`], stopping as soon as `enough` bytes have arrived.
fn read_up_to(stream: &mut TcpStream, enough: usize, deadline: Instant) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || got.len() >= enough {
            return got;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return got,
        }
    }
}

/// The `tailsrv_file_info` line of a scrape, if any.
fn file_info(server: &Server) -> Option<String> {
    server
        .metrics()
        .0
        .into_keys()
        .find(|k| k.starts_with("tailsrv_file_info{"))
}

/// Descriptors the server holds on files in `dir`: the generations it keeps open.
fn files_open_in(server: &Server, dir: &Path) -> usize {
    let fds = format!("/proc/{}/fd", server.pid());
    fs::read_dir(&fds)
        .map(|entries| {
            entries
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_rotation_storm_never_mixes_generations_or_leaks_descriptors() {
    const ROTATIONS: u64 = 100;
    const EVERY: Duration = Duration::from_millis(100);
    let server = Server::builder()
        .contents(b"file 0\n")
        .args(["--metrics", "127.0.0.1:0", "--shards", "2"])
        .start();
    let path = server.path().to_path_buf();
    let dir = server.dir().path().to_path_buf();
    // Every generation's bytes, in order: the writer and the rotator take turns under the
    // lock, so each record lands in the generation it is recorded in.
    let generations = Arc::new(Mutex::new(vec![b"file 0\n".to_vec()]));
    let stop = Arc::new(AtomicBool::new(false));
    // A scrape first, so that whatever the metrics endpoint makes lazily is in the baseline.
    assert!(file_info(&server).is_some());
    let baseline = server.settled_held_fds();

    let writer = {
        let (path, generations, stop) = (path.clone(), generations.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut generations = generations.lock().unwrap();
                let line = format!("record {n}\n");
                append(&path, line.as_bytes());
                generations
                    .last_mut()
                    .unwrap()
                    .extend_from_slice(line.as_bytes());
                drop(generations);
                n += 1;
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let port = server.port();
    let clients: Vec<_> = (0..4u64)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(i + 1);
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let header: &[u8] = if i == 3 { b"-0\n" } else { b"0\n" };
                    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                        seen.push((header, None));
                        continue;
                    };
                    let _ = stream.write_all(header);
                    let stay = Duration::from_millis(20 + rng.below(300));
                    seen.push((header, Some(read_until(&mut stream, Instant::now() + stay))));
                }
                seen
            })
        })
        .collect();

    let scrape_until = |what: &str, done: &dyn Fn(&str) -> bool| {
        let mut last = None;
        assert!(
            poll_until(PATIENCE, || {
                last = file_info(&server);
                last.as_deref().is_some_and(done)
            }),
            "{what}: the server shows {last:?}"
        );
    };
    let started = Instant::now();
    for k in 1..=ROTATIONS {
        // Ten a second: the next one is due k tenths of a second after the start.
        if let Some(wait) = (started + EVERY * k as u32).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let mut generations = generations.lock().unwrap();
        assert_eq!(
            &fs::read(&path).unwrap(),
            generations.last().unwrap(),
            "the test's own record of generation {}",
            k - 1
        );
        let header = format!("file {k}\n").into_bytes();
        match k % 4 {
            0 => {
                fs::rename(&path, dir.join(format!("served.log.{k}"))).unwrap();
                fs::write(&path, &header).unwrap();
            }
            1 => {
                // Deleted, and the server sees it gone, before the new file comes: otherwise
                // a new file in its place is a replacement.
                fs::remove_file(&path).unwrap();
                let mut last = None;
                assert!(
                    poll_until(PATIENCE, || {
                        last = file_info(&server);
                        last.is_none()
                    }),
                    "rotation {k}: the server still shows {last:?}"
                );
                fs::write(&path, &header).unwrap();
            }
            2 => {
                let next = dir.join("next.log");
                fs::write(&next, &header).unwrap();
                fs::rename(&next, &path).unwrap();
            }
            _ => {
                truncate(&path);
            }
        }
        generations.push(if k % 4 == 3 { Vec::new() } else { header });
        // Why wait for the server to take each one in before the writer goes on? Two
        // rotations inside one look of the watcher are one to it, and a truncated file
        // that grew past its old length before the watcher looked cannot be told from
        // one that grew (see docs/operations.md): that is the writer's race, not the
        // server's, and not what this test is about.
        let inode = fs::metadata(&path).unwrap().ino();
        let want_inode = format!("inode=\"{inode}\"");
        // Each file is truncated once before it is rotated away: its first truncation.
        let want_stamp = "-t1\"";
        let truncated = k % 4 == 3;
        scrape_until(&format!("rotation {k}"), &|info| {
            info.contains(&want_inode) && (!truncated || info.contains(want_stamp))
        });
        drop(generations);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let seen: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client thread"))
        .collect();

    let mut generations = generations.lock().unwrap();
    let mut served = std::collections::HashSet::new();
    for (header, got) in &seen {
        let got = got.as_ref().expect("the port stayed open");
        if got.is_empty() {
            continue;
        }
        let from = generations.iter().position(|g| {
            if *header == b"0\n" {
                g.starts_with(got)
            } else {
                g.windows(got.len()).any(|w| w == got.as_slice())
            }
        });
        let Some(from) = from else {
            panic!(
                "a client ({:?}) got {} bytes that are no single generation's: {:?}",
                String::from_utf8_lossy(header),
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(200)])
            );
        };
        served.insert(from);
    }
    assert!(
        served.len() >= 20,
        "clients were served only {} of {} generations",
        served.len(),
        generations.len()
    );

    // Still up, serving the last generation.
    let mut last = server.connect(b"0\n");
    last.expect_bytes(generations.last().unwrap(), PATIENCE);
    drop(last);
    // Clients that closed while caught up are found gone when next sent to (or by a check
    // 30 s on): an append lets the server see them all go now.
    append(&path, b"after the storm\n");
    generations
        .last_mut()
        .unwrap()
        .extend_from_slice(b"after the storm\n");
    let connected = "tailsrv_clients_connected";
    assert!(
        poll_until(PATIENCE, || server.metrics().sum(connected) == 0),
        "clients still connected after the storm; metrics: {:?}",
        server.metrics()
    );
    let samples = server.metrics();
    for kind in ["renamed", "replaced", "deleted", "truncated"] {
        let n = samples.sum(&format!("tailsrv_rotations_total{{kind=\"{kind}\"}}"));
        assert_eq!(n, ROTATIONS / 4, "{kind} rotations");
    }
    // Every rotated file was closed once its clients ended: one file open, and no more
    // descriptors than before the storm.
    let mut files = usize::MAX;
    assert!(
        poll_until(PATIENCE, || {
            files = files_open_in(&server, &dir);
            files == 1
        }),
        "{files} files still open in the server"
    );
    let mut now = usize::MAX;
    assert!(
        poll_until(PATIENCE, || {
            now = server.held_fds();
            now <= baseline
        }),
        "{now} descriptors after the storm, {baseline} before"
    );
    assert_eq!(server.metrics().sum("tailsrv_open_files"), 1);
}

#[test]
fn logrotate_create_and_copytruncate_keep_the_server_up() {
    const OLD: u64 = 200_000;
    let Some(logrotate) = required_program("logrotate", "logrotate") else {
        return;
    };
    let server = Server::builder()
        .contents(&pattern_range(0, OLD as usize))
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let path = server.path().to_path_buf();
    let port = server.port();
    // The port stays open throughout: a connection every 10 ms, each of which must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut ok, mut refused) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => ok += 1,
                    Err(e) => refused.push(e.to_string()),
                }
                thread::sleep(Duration::from_millis(10));
            }
            (ok, refused)
        })
    };
    let mut old = server.connect(b"0\n");
    old.expect_pattern(0, OLD, PATIENCE);
    let info = || file_info(&server).expect("a file is served");
    let mut id = info();

    for (round, (mode, kind)) in [("create", "renamed"), ("copytruncate", "truncated")]
        .into_iter()
        .enumerate()
    {
        let conf = server.dir().join(&format!("{mode}.conf"));
        let rules = format!(
            "{} {{\n    rotate 3\n    {mode}\n    missingok\n    nocompress\n}}\n",
            path.display()
        );
        fs::write(&conf, rules).unwrap();
        let state = server.dir().join("logrotate.state");
        let run = std::process::Command::new(&logrotate)
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .output()
            .expect("running logrotate");
        assert!(
            run.status.success(),
            "logrotate ({mode}): {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let rotated = Instant::now();
        let marker = format!("written after logrotate's {mode}\n").into_bytes();
        append(&path, &marker);
        // New clients get the new file: poll with fresh clients until one from byte 0 is
        // served the marker, and the server shows the new identity.
        let mut served_in = None;
        assert!(
            poll_until(PATIENCE, || {
                let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                    return false;
                };
                let _ = stream.write_all(b"0\n");
                let deadline = Instant::now() + Duration::from_millis(200);
                let got = read_up_to(&mut stream, marker.len(), deadline);
                if got.starts_with(&marker) && info() != id {
                    served_in = Some(rotated.elapsed());
                    return true;
                }
                false
            }),
            "after logrotate's {mode}, new clients were not served the new file"
        );
        eprintln!(
            "logrotate {mode}: a new client was served the new file {:?} after logrotate returned",
            served_in.unwrap()
        );
        id = info();
        let counted = format!("tailsrv_rotations_total{{kind=\"{kind}\"}}");
        assert_eq!(server.metrics().sum(&counted), 1, "{mode}");
        // The old file's client: the rest (here nothing) and a FIN after a rename; a reset
        // after a truncation.
        let (rest, ending) = old.read_to_end(PATIENCE);
        if round == 0 {
            assert_eq!((rest.len(), ending), (0, Ending::Eof), "{mode}");
        } else {
            assert_eq!(ending, Ending::Reset, "{mode}");
        }
        old = server.connect(b"0\n");
        old.expect_bytes(&marker, PATIENCE);
        // Why more bytes before the next round? A truncation is seen as the file getting
        // shorter: one cut to 0 and grown past its old length (the next marker) before
        // the watcher looks would pass for growth (docs/operations.md says so).
        append_pattern(&path, marker.len() as u64, 100_000);
    }
    stop.store(true, Ordering::SeqCst);
    let (connected, refused) = probe.join().unwrap();
    assert!(refused.is_empty(), "connections refused: {refused:?}");
    assert!(connected > 0);
    let mut server = server;
    assert!(server.wait_exit(Duration::ZERO).is_none(), "tailsrv exited");
    assert!(server.dir().join("served.log.1").exists());
}

#[test]
fn the_http_file_identity_changes_at_each_rotation_and_truncation_of_one_server() {
    let dir = TempDir::new();
    let path = dir.join("served.log");
    append(&path, b"first file\n");
    let server = InProcess::start(&path, &[]);
    let identity = || {
        let mut client = Client::http(server.port(), "HEAD", "/stream");
        let head = client.read_http_head(PATIENCE);
        head.field("Tailsrv-File")
            .expect("Tailsrv-File")
            .to_string()
    };
    let first = identity();
    assert_eq!(first, server.handle.file_id().unwrap().to_string());
    fs::rename(&path, dir.join("served.log.1")).unwrap();
    append(&path, b"second file\n");
    expect_serving(&server.handle, &path);
    let second = identity();
    assert_ne!(second, first);
    // Why wait for the size? The new file may be opened empty, before its line is written,
    // and with nobody connected the watcher takes its size on its slow timer. A truncation
    // to 0 before that looks like no change at all (size 0 both times), and is no truncation
    // to the server: it must have seen the line first.
    let handle = &server.handle;
    assert!(
        poll_until(PATIENCE, || handle.file_size()
            == b"second file\n".len() as u64),
        "the second file's size was never taken: {}",
        handle.file_size()
    );
    truncate(&path);
    assert!(
        poll_until(PATIENCE, || handle.rotations(Rotation::Truncated) == 1),
        "the truncation was not seen: rotations {:?}, size {}, following {}, idle looks {}, \
         inotify wake-ups {}, clients {}",
        Rotation::ALL.map(|kind| handle.rotations(kind)),
        handle.file_size(),
        handle.following_growth(),
        handle.idle_looks(),
        handle.watcher_wakeups(),
        handle.clients(),
    );
    let third = identity();
    assert_ne!(third, second);
    assert_eq!(third, server.handle.file_id().unwrap().to_string());
}
