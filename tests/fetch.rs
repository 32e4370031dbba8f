//! tailsrv-fetch against real servers on loopback: relays, resuming after kill -9 and server
//! restarts, rotations shorter and longer than the resume point, and the failure exits.

use crate::common::*;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
const FETCH: &str = env!("CARGO_BIN_EXE_tailsrv-fetch");

/// Enough time for a whole copy or a rotation on a busy 2-core machine (passing tests do
/// not wait this long).
const LONG: Duration = Duration::from_secs(30);

/// Where a rotated file's content comes from: pattern bytes shifted by this much, so that
/// no byte window of it lines up with the old file's.
const SHIFT: u64 = 1_000_003;

fn other_pattern(len: u64) -> Vec<u8> {
    pattern_range(SHIFT, len as usize)
}

/// A running tailsrv-fetch; killed on drop.
struct Fetch {
    child: Child,
    logs: Logs,
    stdout: Arc<Mutex<Vec<u8>>>,
    /// The thread collecting stdout; done once the process has exited and the pipe is empty.
    collecting: Option<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Fetch {
    /// Starts `tailsrv-fetch 127.0.0.1:PORT ARGS...`, collecting stdout and stderr.
    fn start(port: u16, args: &[OsString]) -> Fetch {
        Fetch::start_at(&format!("127.0.0.1:{port}"), args)
    }

    /// Starts `tailsrv-fetch ADDR ARGS...`, collecting stdout and stderr.
    fn start_at(addr: &str, args: &[OsString]) -> Fetch {
        let mut child = Command::new(FETCH)
            .arg(addr)
            .args(args)
            // Short waits between attempts keep the tests quick after a server restart.
            .args(["--max-delay", "0.3"])
            .env("RUST_LOG", "tailsrv=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tailsrv-fetch");
        let logs = Logs::collect(child.stderr.take().expect("piped stderr"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = stdout.clone();
        let mut out = child.stdout.take().expect("piped stdout");
        let collecting = thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Fetch {
            collecting: Some(collecting),
            child,
            logs,
            stdout,
            status: None,
        }
    }

    /// `tailsrv-fetch ... FILE ARGS...`.
    fn to_file(port: u16, file: &Path, args: &[&str]) -> Fetch {
        let mut all = vec![file.as_os_str().to_owned()];
        all.extend(args.iter().map(OsString::from));
        Fetch::start(port, &all)
    }

    /// `tailsrv-fetch ... ARGS...` (stdout).
    fn to_stdout(port: u16, args: &[&str]) -> Fetch {
        let all: Vec<OsString> = args.iter().map(OsString::from).collect();
        Fetch::start(port, &all)
    }

    fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    fn stdout_len(&self) -> usize {
        self.stdout.lock().unwrap().len()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        let ret = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(ret, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.status = Some(self.child.wait().expect("reaping tailsrv-fetch"));
    }

    #[track_caller]
    fn expect_exit(&mut self, code: i32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.status.is_none() {
            self.status = self.child.try_wait().expect("waiting for tailsrv-fetch");
            if self.status.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "tailsrv-fetch still running, want exit {code}; log:\n{}",
                    self.logs.dump()
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(code),
            "tailsrv-fetch exit status; log:\n{}",
            self.logs.dump()
        );
        // What it wrote may still be in the pipe: the exit can be seen before the last bytes
        // are collected. The pipe ends when the process has gone.
        if let Some(collecting) = self.collecting.take() {
            collecting.join().expect("the stdout collector");
        }
        self.logs.wait_closed(PATIENCE);
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- tailsrv-fetch log ---\n{}", self.logs.dump());
        }
    }
}

/// The file's bytes, or nothing if it does not exist.
fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_default()
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until the file at `path` holds exactly `want`.
#[track_caller]
fn expect_file(path: &Path, want: &[u8], timeout: Duration, fetch: &Fetch) {
    let held = poll_until(timeout, || {
        len(path) == want.len() as u64 && read(path) == want
    });
    if !held {
        let got = read(path);
        assert_bytes(&got, want, &path.display().to_string());
        panic!(
            "{} did not settle at {} bytes; log:\n{}",
            path.display(),
            want.len(),
            fetch.logs.dump()
        );
    }
}

/// Appends `total` pattern bytes from `start` in random blocks of up to `block` bytes,
/// pausing up to 4 ms between them, on a thread; returns it.
fn grow(path: PathBuf, start: u64, total: u64, block: u64, seed: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut at = start;
        while at < start + total {
            let n = (rng.below(block) + 1).min(start + total - at);
            append_pattern(&path, at, n);
            at += n;
            thread::sleep(Duration::from_millis(rng.below(5)));
        }
    })
}

#[test]
fn relay_leaves_receive_every_byte_while_the_upstream_grows() {
    const FIRST: u64 = 1 << 20;
    const MORE: u64 = 3 << 20;
    let upstream = Server::in_process(&pattern_range(0, FIRST as usize));
    let (_dir, copy) = copy_dir();
    let fetch = Fetch::to_file(upstream.port(), &copy, &[]);
    let relay = Server::builder().in_process().serve(&copy).start();

    let mut whole = relay.connect(b"0\n");
    let mut middle = relay.connect(b"123457\n");
    let leaf_fetch = Fetch::to_stdout(relay.port(), &["--from", "0"]);
    whole.expect_pattern(0, FIRST / 2, LONG);

    let writer = grow(upstream.path().to_owned(), FIRST, MORE, 100_000, 10);
    // A leaf that joins while the relay is catching up.
    let mut late = relay.connect(b"-1000\n");
    let late_at = relay.offset_of(&late);
    whole.expect_pattern(FIRST / 2, FIRST / 2 + MORE, LONG);
    middle.expect_pattern(123_457, FIRST + MORE - 123_457, LONG);
    late.expect_pattern(late_at, FIRST + MORE - late_at, LONG);
    writer.join().unwrap();

    let total = (FIRST + MORE) as usize;
    assert!(
        poll_until(LONG, || leaf_fetch.stdout_len() >= total),
        "leaf tailsrv-fetch has {} of {total} bytes",
        leaf_fetch.stdout_len()
    );
    assert_bytes(&leaf_fetch.stdout(), &pattern_range(0, total), "leaf fetch");
    expect_file(&copy, &read(upstream.path()), PATIENCE, &fetch);
    whole.expect_silence(QUIET);
}

#[test]
fn a_fetcher_killed_mid_stream_resumes_to_an_exact_copy() {
    const FIRST: u64 = 8 << 20;
    const MORE: u64 = 6 << 20;
    const TOTAL: u64 = FIRST + MORE;
    let upstream = Server::in_process(&pattern_range(0, FIRST as usize));
    let (_dir, copy) = copy_dir();
    // Small blocks: the file grows for a second or more, so the kills land mid-stream.
    let writer = grow(upstream.path().to_owned(), FIRST, MORE, 20_000, 20);

    let mut fetch = Fetch::to_file(upstream.port(), &copy, &[]);
    let mut rng = Rng::new(21);
    let mut mid_stream = 0;
    for round in 0..4 {
        // Kill at a different point each round, while bytes are flowing.
        let target = (len(&copy) + 1 + rng.below(2 << 20)).min(TOTAL);
        assert!(
            poll_until(LONG, || len(&copy) >= target),
            "round {round}: the copy never reached {target} bytes; log:\n{}",
            fetch.logs.dump()
        );
        fetch.kill9();
        let held = len(&copy);
        if held < TOTAL {
            mid_stream += 1;
        }
        assert_bytes(
            &read(&copy),
            &pattern_range(0, held as usize),
            &format!("copy after kill {round}"),
        );
        fetch = Fetch::to_file(upstream.port(), &copy, &[]);
    }
    writer.join().unwrap();
    expect_file(&copy, &pattern_range(0, TOTAL as usize), LONG, &fetch);
    assert!(
        mid_stream > 0,
        "no kill landed before the copy was complete"
    );
}

/// Stops `upstream` (SIGTERM, exit 0), calls `while_down`, and starts a new server on
/// `served` at the same `port`.
#[track_caller]
fn restart(mut upstream: Server, served: &Path, port: u16, while_down: impl FnOnce()) -> Server {
    upstream.sigterm();
    upstream.expect_exit(0, PATIENCE);
    drop(upstream);
    while_down();
    serve_at(served, port)
}

/// Waits until the fetcher has moved its copy of the old file (the first `old` bytes of the
/// pattern) aside to `copy.log.1` beside `copy`, and `copy` holds the new file, `new`.
#[track_caller]
fn expect_rotated_copy(copy: &Path, old: u64, new: &[u8], fetch: &Fetch) {
    let rotated = copy.with_file_name("copy.log.1");
    expect_file(&rotated, &pattern_range(0, old as usize), PATIENCE, fetch);
    expect_file(copy, new, PATIENCE, fetch);
}

/// A fresh directory for the fetcher's copy, and the copy's path in it (not there yet).
fn copy_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let copy = dir.join("copy.log");
    (dir, copy)
}

/// An upstream server on a low port (free to restart there) serving `up.log`, which first
/// holds `contents`, in a directory of its own: (directory, file, port, server).
fn upstream_on(contents: &[u8]) -> (TempDir, PathBuf, u16, Server) {
    let dir = TempDir::new();
    let served = dir.join("up.log");
    fs::write(&served, contents).unwrap();
    let port = low_port();
    let upstream = serve_at(&served, port);
    (dir, served, port, upstream)
}

/// Rotates the upstream file (a tail appended just before the rename, then a new file of
/// `new_len` bytes), which the upstream follows, and checks the fetcher, the rotated copy
/// (`rotated_name`, FILE.1 when `None`), FILE and the relay, which follows its copy's
/// rotation in turn.
fn rotation_is_detected(new_len: u64, rotated_name: Option<&str>) {
    const OLD: u64 = 300_000;
    const TAIL: u64 = 7_000;
    let (up_dir, served, port, mut upstream) = upstream_on(&pattern_range(0, OLD as usize));
    let (dir, copy) = copy_dir();
    let rotated = dir.join(rotated_name.unwrap_or("copy.log.1"));
    let mut args = vec!["--check-timeout", "1"];
    let rotated_arg = rotated.to_str().unwrap().to_owned();
    if rotated_name.is_some() {
        args.extend(["--rotated", &rotated_arg]);
    }
    let fetch = Fetch::to_file(port, &copy, &args);
    expect_file(&copy, &pattern_range(0, OLD as usize), LONG, &fetch);
    let relay = Server::builder()
        .in_process()
        .serve(&copy)
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let mut leaf = relay.connect(b"0\n");
    leaf.expect_pattern(0, OLD, PATIENCE);

    append_pattern(&served, OLD, TAIL);
    fs::rename(&served, up_dir.join("up.log.1")).unwrap();
    let new = other_pattern(new_len);
    fs::write(&served, &new).unwrap();

    expect_file(
        &rotated,
        &pattern_range(0, (OLD + TAIL) as usize),
        LONG,
        &fetch,
    );
    expect_file(&copy, &new, LONG, &fetch);
    // Waited for: the copy can be complete before the fetcher's log line is read.
    fetch
        .logs
        .wait_for("the fetcher saying the file is new", PATIENCE, |l| {
            l.contains("new one")
        });

    // The relay drains its clients from the renamed copy, as for any rotation, and serves
    // the new copy: neither it nor the upstream needed a restart.
    leaf.expect_pattern(OLD, TAIL, PATIENCE);
    leaf.expect_eof(PATIENCE);
    let renamed = "tailsrv_rotations_total{kind=\"renamed\"}";
    assert!(
        poll_until(PATIENCE, || relay.metrics().sum(renamed) == 1),
        "the relay did not follow its copy's rotation"
    );
    let mut leaf = relay.connect(b"0\n");
    leaf.expect_bytes(&new, PATIENCE);
    assert!(
        upstream.wait_exit(Duration::ZERO).is_none(),
        "the upstream exited"
    );
}

#[test]
fn a_rotation_to_a_shorter_file_is_detected_and_flows_down_the_relay() {
    rotation_is_detected(1_000, None);
}

#[test]
fn a_rotation_to_a_longer_file_is_detected_and_flows_down_the_relay_with_a_chosen_name() {
    rotation_is_detected(900_000, Some("older.log"));
}

#[test]
fn a_stdout_fetch_across_a_server_restart_writes_each_byte_once() {
    let (_dir, served, port, upstream) = upstream_on(&pattern_range(0, 100_000));
    let fetch = Fetch::to_stdout(port, &["--from", "1000"]);
    assert!(poll_until(LONG, || fetch.stdout_len() == 99_000));

    append_pattern(&served, 100_000, 5_000);
    let _upstream = restart(upstream, &served, port, || {
        append_pattern(&served, 105_000, 70_000)
    });
    append_pattern(&served, 175_000, 30_000);

    let want = pattern_range(1000, 204_000);
    assert!(
        poll_until(LONG, || fetch.stdout_len() >= want.len()),
        "stdout has {} of {} bytes",
        fetch.stdout_len(),
        want.len()
    );
    assert_bytes(&fetch.stdout(), &want, "stdout");
    thread::sleep(QUIET);
    assert_eq!(fetch.stdout_len(), want.len(), "bytes written twice");
}

#[test]
fn a_stdout_fetch_says_when_the_file_was_rotated_and_goes_on_from_its_start() {
    let (dir, served, port, mut upstream) = upstream_on(&pattern_range(0, 60_000));
    // It follows the rotation below without a restart.
    let fetch = Fetch::to_stdout(port, &["--check-timeout", "1"]);
    assert!(poll_until(LONG, || fetch.stdout_len() == 60_000));

    fs::rename(&served, dir.join("up.log.1")).unwrap();
    let new = other_pattern(2_000);
    fs::write(&served, &new).unwrap();

    let mut want = pattern_range(0, 60_000);
    want.extend_from_slice(&new);
    assert!(poll_until(LONG, || fetch.stdout_len() >= want.len()));
    assert_bytes(
        &fetch.stdout(),
        &want,
        "stdout: the old file, then the new one",
    );
    let warning = fetch
        .logs
        .wait_for("warning of the new file", PATIENCE, |l| {
            l.contains("WARN") && l.contains("new one")
        });
    assert!(warning.contains("held=60000"), "{warning}");
    assert!(
        upstream.wait_exit(Duration::ZERO).is_none(),
        "the upstream exited"
    );
}

#[test]
fn last_and_new_start_at_the_end_and_resume_exactly() {
    let (_dir, served, port, upstream) = upstream_on(&pattern_range(0, 50_000));
    let last = Fetch::to_stdout(port, &["--last", "100"]);
    let new = Fetch::to_stdout(port, &["--new"]);
    for f in [&last, &new] {
        f.logs.wait_for("saying where it starts", LONG, |l| {
            l.contains("the server says where the stream starts")
        });
    }
    assert!(poll_until(LONG, || last.stdout_len() == 100));

    append_pattern(&served, 50_000, 2_000);
    let _upstream = restart(upstream, &served, port, || {
        append_pattern(&served, 52_000, 3_000)
    });
    assert!(poll_until(LONG, || last.stdout_len() >= 5_100
        && new.stdout_len() >= 5_000));
    assert_bytes(&last.stdout(), &pattern_range(49_900, 5_100), "--last 100");
    assert_bytes(&new.stdout(), &pattern_range(50_000, 5_000), "--new");
}

/// `n` numbered lines of 10 bytes each: "line 0000\n", ...
fn numbered(lines: std::ops::Range<usize>) -> Vec<u8> {
    lines
        .flat_map(|i| format!("line {i:04}\n").into_bytes())
        .collect()
}

/// The identity the server on `port` names for its file.
#[track_caller]
fn identity_at(port: u16) -> String {
    named_identity(port).expect("Tailsrv-File")
}

/// The identity the server on `port` names for its file, if it has one open (between a
/// rename and the new file's creation it has none).
fn named_identity(port: u16) -> Option<String> {
    let mut client = Client::http(port, "HEAD", "/stream");
    let head = client.read_http_head(PATIENCE);
    head.field("Tailsrv-File").map(str::to_string)
}

#[test]
fn lines_starts_at_the_last_lines_and_resumes_exactly() {
    let (_dir, served, port, upstream) = upstream_on(&numbered(0..1000));
    let fetch = Fetch::to_stdout(port, &["--lines", "3"]);
    assert!(poll_until(LONG, || fetch.stdout_len() == 30));
    assert_bytes(&fetch.stdout(), &numbered(997..1000), "--lines 3");
    let _upstream = restart(upstream, &served, port, || {
        append(&served, &numbered(1000..1005))
    });
    assert!(poll_until(LONG, || fetch.stdout_len() >= 80));
    assert_bytes(
        &fetch.stdout(),
        &numbered(997..1005),
        "--lines 3, then resumed",
    );
}

#[test]
fn last_asks_the_server_where_to_start_instead_of_reading_the_file() {
    let dir = TempDir::new();
    let served = dir.join("up.log");
    fs::write(&served, pattern_range(0, 32 << 20)).unwrap();
    let server = InProcess::start(&served, &[]);
    let addr = format!("127.0.0.1:{}", server.port());
    let run = run_fetch(&[&addr, "--last", "1000", "--to-end", "--quiet"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Asking costs what is sent; reading the file to find its end would cost 32 MiB.
    assert!(
        poll_until(PATIENCE, || server.handle.bytes_sent() == 1000),
        "sent {}",
        server.handle.bytes_sent()
    );
}

#[test]
fn to_end_fetches_the_file_as_it_was_and_exits_0() {
    let upstream = Server::in_process(&pattern_range(0, 200_000));
    let addr = format!("127.0.0.1:{}", upstream.port());
    let (_dir, copy) = copy_dir();
    // The file grows while the fetcher runs: --to-end stops at the end it was first told.
    let grower = grow(upstream.path().to_path_buf(), 200_000, 300_000, 10_000, 7);
    let run = run_fetch(&[&addr, copy.to_str().unwrap(), "--to-end", "--quiet"]);
    grower.join().unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got = read(&copy);
    assert!(
        (200_000..=500_000).contains(&got.len()),
        "{} bytes",
        got.len()
    );
    assert_bytes(&got, &pattern_range(0, got.len()), "--to-end copy");
    // Run again on the complete copy: nothing to fetch beyond the new end but the new bytes.
    let run = run_fetch(&[&addr, copy.to_str().unwrap(), "--to-end", "--quiet"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_bytes(
        &read(&copy),
        &pattern_range(0, 500_000),
        "the copy, completed",
    );
    // To stdout, from an offset.
    let mut fetch = Fetch::to_stdout(upstream.port(), &["--from", "499990", "--to-end"]);
    fetch.expect_exit(0, LONG);
    assert_bytes(
        &fetch.stdout(),
        &pattern_range(499_990, 10),
        "stdout --to-end",
    );
}

/// The upstream's file is replaced by one with the same bytes and more: only the file's
/// identity can tell. With the identity check broken, the byte check would resume in the
/// new file at the old offset, and this test would fail.
#[test]
fn a_replaced_file_with_the_same_bytes_is_noticed_by_its_identity() {
    const OLD: u64 = 100_000;
    let (up_dir, served, port, _upstream) = upstream_on(&pattern_range(0, OLD as usize));
    let (dir, copy) = copy_dir();
    // A long check timeout: nothing here may wait for it.
    let fetch = Fetch::to_file(port, &copy, &["--check-timeout", "60"]);
    expect_file(&copy, &pattern_range(0, OLD as usize), LONG, &fetch);
    let first = identity_at(port);
    assert!(
        poll_until(PATIENCE, || fs::read_to_string(
            dir.join("copy.log.tailsrv-id")
        )
        .is_ok_and(|id| id.trim() == first)),
        "the identity is kept beside FILE"
    );

    // Same bytes, new file (the old one kept so its inode number is not reused).
    fs::rename(&served, up_dir.join("up.log.1")).unwrap();
    let new = pattern_range(0, OLD as usize + 5_000);
    let started = Instant::now();
    fs::write(&served, &new).unwrap();
    // The upstream follows the rotation: it ends the fetcher's stream and serves the new file.
    expect_rotated_copy(&copy, OLD, &new, &fetch);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the check timeout"
    );
    assert_ne!(identity_at(port), first);
}

#[test]
fn a_restarted_fetcher_knows_the_identity_of_its_copy() {
    const OLD: u64 = 50_000;
    let (up_dir, served, port, _upstream) = upstream_on(&pattern_range(0, OLD as usize));
    let (dir, copy) = copy_dir();
    let mut fetch = Fetch::to_file(port, &copy, &[]);
    expect_file(&copy, &pattern_range(0, OLD as usize), LONG, &fetch);
    assert!(poll_until(PATIENCE, || dir
        .join("copy.log.tailsrv-id")
        .exists()));
    fetch.kill9();
    let first = identity_at(port);

    // While it is down, the file is replaced by one with the same bytes and more: only the
    // identity kept beside FILE can tell.
    fs::rename(&served, up_dir.join("up.log.1")).unwrap();
    let new = pattern_range(0, OLD as usize + 3_000);
    fs::write(&served, &new).unwrap();
    assert!(
        poll_until(PATIENCE, || named_identity(port)
            .is_some_and(|id| id != first)),
        "the upstream follows the rotation"
    );
    let fetch = Fetch::to_file(port, &copy, &["--check-timeout", "60"]);
    expect_rotated_copy(&copy, OLD, &new, &fetch);
}

#[test]
fn a_server_without_http_is_fetched_by_offset_and_refuses_what_needs_http() {
    let upstream = Server::builder()
        .in_process()
        .contents(&pattern_range(0, 30_000))
        .arg("--no-http")
        .start();
    let addr = format!("127.0.0.1:{}", upstream.port());
    let (dir, copy) = copy_dir();
    let fetch = Fetch::to_file(upstream.port(), &copy, &[]);
    expect_file(&copy, &pattern_range(0, 30_000), LONG, &fetch);
    upstream.append(&pattern_range(30_000, 1_000));
    expect_file(&copy, &pattern_range(0, 31_000), LONG, &fetch);
    assert!(!dir.join("copy.log.tailsrv-id").exists());
    expect_failure(
        &[&addr, "--lines", "3", "--quiet"],
        1,
        &format!("tailsrv-fetch: error: {addr}: the server does not answer HTTP"),
    );
}

#[test]
fn once_exits_0_when_the_server_closes_the_stream() {
    let upstream = Server::in_process(&pattern_range(0, 10_000));
    let (_dir, copy) = copy_dir();
    let mut fetch = Fetch::to_file(upstream.port(), &copy, &["--once", "--fsync", "0.05"]);
    expect_file(&copy, &pattern_range(0, 10_000), LONG, &fetch);
    upstream.sigterm();
    fetch.expect_exit(0, PATIENCE);
}

#[test]
fn sigint_and_sigterm_end_a_fetch_in_order_with_130_and_0() {
    let upstream = Server::in_process(&pattern_range(0, 20_000));
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 0)] {
        // Streaming: the copy is complete and the fetcher waits for more.
        let (_dir, copy) = copy_dir();
        let mut fetch = Fetch::to_file(upstream.port(), &copy, &[]);
        expect_file(&copy, &pattern_range(0, 20_000), LONG, &fetch);
        fetch.signal(signal);
        fetch.expect_exit(code, PATIENCE);
        assert_bytes(&read(&copy), &pattern_range(0, 20_000), "the copy");
        // Its stderr may still be on its way to the collector after the exit.
        let line = fetch.logs.wait_for("saying it stopped", PATIENCE, |l| {
            l.contains("stopped by a signal")
        });
        assert!(line.contains(" at=20000"), "{line}");
    }
}

#[test]
fn a_signal_ends_a_fetch_that_waits_for_data_or_to_reconnect() {
    // Upstreams the test owns: one that takes the header and says nothing, one that closes
    // each connection at once (the fetcher then waits to reconnect). An accepted connection
    // also shows the fetcher is running, with its signals in hand.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let closing = TcpListener::bind("127.0.0.1:0").unwrap();
    let none: Vec<OsString> = vec![];
    let mut waiting = Fetch::start(silent.local_addr().unwrap().port(), &none);
    let mut pausing = Fetch::start(closing.local_addr().unwrap().port(), &none);
    let (_held, _) = silent.accept().expect("the fetcher connects");
    drop(closing.accept().expect("the other fetcher connects"));
    waiting.signal(libc::SIGINT);
    pausing.signal(libc::SIGTERM);
    waiting.expect_exit(130, PATIENCE);
    pausing.expect_exit(0, PATIENCE);
}

#[test]
fn a_host_name_is_resolved() {
    let upstream = Server::in_process(&pattern_range(0, 3_000));
    let args: Vec<OsString> = ["--once", "--from", "100"].map(OsString::from).to_vec();
    let mut fetch = Fetch::start_at(&format!("localhost:{}", upstream.port()), &args);
    assert!(poll_until(LONG, || fetch.stdout_len() == 2_900));
    upstream.sigterm();
    fetch.expect_exit(0, PATIENCE);
    assert_bytes(&fetch.stdout(), &pattern_range(100, 2_900), "stdout");
}

/// Runs tailsrv-fetch with `args` to completion.
#[track_caller]
fn run_fetch(args: &[&str]) -> Finished {
    run_program_to_exit(FETCH, args, LONG)
}

/// Asserts the exit status and that stderr is one line starting with `start`.
#[track_caller]
fn expect_failure(args: &[&str], code: i32, start: &str) {
    let run = run_fetch(args);
    assert_eq!(run.code, Some(code), "{args:?}: stderr {:?}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line, got {:?}", run.stderr);
    assert!(
        lines[0].starts_with(start),
        "{args:?}: {:?} should start with {start:?}",
        lines[0]
    );
}

/// A port on which nothing listens: bound, then closed.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_bad_command_line_exits_2() {
    for args in [
        &["localhost"][..],
        &["localhost:0"],
        &["::1:80"],
        &["localhost:80", "--new", "--from", "3"],
        &["localhost:80", "copy", "--last", "3"],
    ] {
        assert_eq!(run_fetch(args).code, Some(2), "{args:?}");
    }
}

#[test]
fn an_unknown_host_exits_3_with_one_line() {
    expect_failure(
        &["no-such-host.invalid:4321", "--quiet"],
        3,
        "tailsrv-fetch: error: cannot resolve no-such-host.invalid:4321",
    );
}

#[test]
fn a_refused_connection_with_once_exits_4_with_one_line() {
    let addr = format!("127.0.0.1:{}", closed_port());
    expect_failure(
        &[&addr, "--once", "--quiet"],
        4,
        &format!("tailsrv-fetch: error: {addr}: Connection refused"),
    );
}

#[test]
fn a_file_that_cannot_be_written_exits_5_with_one_line() {
    let dir = TempDir::new();
    let addr = format!("127.0.0.1:{}", closed_port());
    let a_dir = dir.join("a-directory");
    fs::create_dir(&a_dir).unwrap();
    let plain = dir.join("plain");
    fs::write(&plain, b"x").unwrap();
    for file in [a_dir, plain.join("under-a-file")] {
        let file = file.to_str().unwrap();
        expect_failure(
            &[&addr, file, "--quiet"],
            5,
            &format!("tailsrv-fetch: error: opening {file}: "),
        );
    }
}

#[test]
fn a_second_fetcher_on_the_same_file_exits_5() {
    let upstream = Server::in_process(&pattern_range(0, 1000));
    let (_dir, copy) = copy_dir();
    let first = Fetch::to_file(upstream.port(), &copy, &[]);
    expect_file(&copy, &pattern_range(0, 1000), LONG, &first);
    let addr = format!("127.0.0.1:{}", upstream.port());
    expect_failure(
        &[&addr, copy.to_str().unwrap(), "--quiet"],
        5,
        "tailsrv-fetch: error: locking ",
    );
}

#[test]
fn a_copy_longer_than_the_servers_file_exits_6_when_rotation_handling_is_off() {
    let upstream = Server::in_process(&pattern_range(0, 5_000));
    let (dir, copy) = copy_dir();
    let held = pattern_range(0, 10_000);
    fs::write(&copy, &held).unwrap();
    let addr = format!("127.0.0.1:{}", upstream.port());
    let args = [
        addr.as_str(),
        copy.to_str().unwrap(),
        "--on-rotation",
        "exit",
        "--check-timeout",
        "0.5",
        "--quiet",
    ];
    expect_failure(
        &args,
        6,
        "tailsrv-fetch: error: the server's file is not the one held",
    );
    assert_eq!(read(&copy), held, "FILE is left alone");

    // Different bytes before the resume point are the other way to tell.
    let other = other_pattern(3_000);
    fs::write(&copy, &other).unwrap();
    expect_failure(
        &args,
        6,
        "tailsrv-fetch: error: the server's file is not the one held",
    );
    assert_eq!(read(&copy), other, "FILE is left alone");
    assert!(!dir.join("copy.log.1").exists());
}

#[test]
fn relay_md_systemd_units_pass_systemd_analyze_verify() {
    if !have_systemd_analyze() {
        return;
    }
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/relay.md")).unwrap();
    let dir = TempDir::new();
    let mut names = Vec::new();
    for block in doc.split("```ini\n").skip(1) {
        let unit = &block[..block.find("```").expect("the unit block ends")];
        let name = unit
            .lines()
            .find_map(|l| l.strip_prefix("# /etc/systemd/system/"))
            .expect("each unit names its path");
        // verify insists that ExecStart's program exists: point the units at this build.
        let unit = unit
            .replace("/usr/local/bin/tailsrv-fetch", FETCH)
            .replace("/usr/local/bin/tailsrv ", &format!("{BIN} "));
        fs::write(dir.join(name), unit).unwrap();
        names.push(name.to_owned());
    }
    assert_eq!(
        names.len(),
        2,
        "relay.md shows the fetcher's and the relay's units"
    );
    for name in &names {
        assert_unit_verifies(&dir.join(name));
    }
}
