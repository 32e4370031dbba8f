//! Operating tailsrv: systemd notifications (sd-notify feature), journald, limits.

use crate::common::*;
#[cfg(feature = "sd-notify")]
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
#[cfg(any(feature = "sd-notify", feature = "tracing-journald"))]
use std::time::Duration;
use std::time::Instant;

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
#[cfg(feature = "sd-notify")]
struct FakeSystemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: TempDir,
}

#[cfg(feature = "sd-notify")]
impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = TempDir::new();
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        FakeSystemd {
            socket,
            path,
            _dir: dir,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    /// Waits for a message containing `want`; returns every message seen up to it.
    #[track_caller]
    fn expect(&self, want: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification with {want:?} within {timeout:?}; saw {seen:?}"
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = msg.lines().any(|l| l == want || l.starts_with(want));
                seen.push(msg);
                if found {
                    return seen;
                }
            }
        }
    }
}

#[test]
#[cfg(feature = "sd-notify")]
fn ready_is_sent_once_clients_are_served_and_stopping_on_sigterm() {
    let systemd = FakeSystemd::new();
    let mut server = Server::builder()
        .contents(b"hello\n")
        .arg("--shards")
        .arg("2")
        .env("NOTIFY_SOCKET", systemd.path())
        .start();
    let before = systemd.expect("READY=1", Duration::from_secs(30));
    assert!(before.iter().all(|m| !m.contains("STOPPING")), "{before:?}");
    // Ready means served: a client connecting now gets its data at once.
    let mut client = server.connect(b"0\n");
    client.expect_bytes(b"hello\n", PATIENCE);
    let status = systemd.expect("STATUS=", PATIENCE);
    assert!(
        status
            .iter()
            .any(|m| m.contains(": 1 client on 2 shards, file at 6 bytes")),
        "{status:?}"
    );
    server.sigterm();
    let stopping = systemd.expect("STOPPING=1", PATIENCE);
    assert!(
        stopping
            .iter()
            .any(|m| m.contains("STATUS=stopping on a signal: closing every client")),
        "{stopping:?}"
    );
    server.expect_exit(0, PATIENCE);
}

#[test]
#[cfg(feature = "sd-notify")]
fn watchdog_pings_at_half_the_interval() {
    let systemd = FakeSystemd::new();
    let dir = TempDir::new();
    let file = dir.join("served.log");
    std::fs::write(&file, b"x").unwrap();
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's pid.
    let script = format!(
        "WATCHDOG_PID=$$ exec {BIN} -p 0 --bind 127.0.0.1 {}",
        file.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tailsrv");
    systemd.expect("READY=1", Duration::from_secs(30));
    let started = Instant::now();
    for _ in 0..4 {
        systemd.expect("WATCHDOG=1", PATIENCE);
    }
    // Four pings at 200 ms take at least 600 ms after the first; far less means the
    // interval was ignored, and the test's PATIENCE bounds the other side.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "pinged too fast: {:?}",
        started.elapsed()
    );
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    systemd.expect("STOPPING=1", PATIENCE);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
#[cfg(feature = "sd-notify")]
fn a_notify_socket_nobody_listens_on_is_warned_about_and_serving_works() {
    // The counterpart of the test below: it shows that a failed notification is logged, so
    // that the absence of that line there means something.
    let dir = TempDir::new();
    let nobody = dir.join("nobody.sock");
    let server = Server::builder()
        .contents(b"abc")
        .env("NOTIFY_SOCKET", nobody.to_str().unwrap())
        .start();
    server
        .logs()
        .wait_for("warning that systemd cannot be told", PATIENCE, |l| {
            l.contains("WARN") && l.contains("cannot notify the service manager")
        });
    let mut client = server.connect(b"-2\n");
    client.expect_bytes(b"bc", PATIENCE);
}

#[test]
#[cfg(feature = "sd-notify")]
fn without_notify_socket_nothing_is_sent_and_serving_works() {
    // A watchdog interval without NOTIFY_SOCKET: systemd never sets one without the other,
    // so tailsrv must ignore it (and send nothing) rather than enable a watchdog it cannot
    // feed. The builder removes NOTIFY_SOCKET from the environment.
    let mut server = Server::builder()
        .contents(b"abc")
        .env("WATCHDOG_USEC", "200000")
        .start();
    let mut client = server.connect(b"-2\n");
    client.expect_bytes(b"bc", PATIENCE);
    // Long enough for several watchdog periods, had one been started.
    client.expect_silence(Duration::from_millis(600));
    server.sigterm();
    client.expect_eof(PATIENCE);
    server.expect_exit(0, PATIENCE);
    let log = server.logs().dump();
    assert!(!log.contains("watchdog enabled"), "{log}");
    assert!(!log.contains("cannot notify"), "{log}");
}

#[test]
#[cfg(feature = "tracing-journald")]
fn journald_without_a_journal_is_a_one_line_error() {
    let dir = TempDir::new();
    let file = dir.join("served.log");
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        // A real journal: --journald must then start, log there, and not exit.
        let mut child = Command::new(BIN)
            .args(["-p", "0", "--journald", file.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            child.try_wait().unwrap().is_none(),
            "tailsrv --journald exited with a journal present"
        );
        child.kill().unwrap();
        let mut stderr = String::new();
        let mut pipe = child.stderr.take().unwrap();
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        assert!(
            !stderr.contains(" listening "),
            "logs went to stderr: {stderr}"
        );
        return;
    }
    let finished = run_to_exit(&["-p", "0", "--journald", file.to_str().unwrap()], PATIENCE);
    assert_eq!(finished.code, Some(1), "{finished:?}");
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{finished:?}");
    assert!(
        lines[0].starts_with("tailsrv: error: cannot log to journald"),
        "{finished:?}"
    );
}

/// Runs `tailsrv args` as an unprivileged user with the usual 8 MiB locked-memory limit
/// (through setpriv and prlimit when the tests run as root) until it says it is listening,
/// and returns everything it logged by then.
fn start_unprivileged(args: &[&str]) -> String {
    use std::io::BufRead;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("prlimit");
        c.args(PRLIMIT_AS_NOBODY).arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tailsrv");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + PATIENCE;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains(" listening ") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log
}

#[test]
fn runs_unprivileged_with_eight_shards_and_no_warnings() {
    let dir = TempDir::new();
    let file = dir.join("served.log");
    std::fs::write(&file, b"x").unwrap();
    let log = start_unprivileged(&["-p", "0", "--shards", "8", file.to_str().unwrap()]);
    assert!(
        log.contains(" listening ") && log.contains("shards=8"),
        "{log}"
    );
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

#[test]
fn too_little_locked_memory_is_a_one_line_error() {
    let dir = TempDir::new();
    let file = dir.join("served.log");
    let run = run_program_to_exit(
        "prlimit",
        &[
            "--memlock=262144:262144",
            BIN,
            "-p",
            "0",
            file.to_str().unwrap(),
        ],
        PATIENCE,
    );
    assert_one_line_error(&run, 1, "tailsrv: error: the locked-memory limit");
    assert!(run.elapsed < PATIENCE, "took {:?}", run.elapsed);
}

/// Under a descriptor limit too small to start every executor, glommio either failed to
/// start a shard or waited for it for good (14 and 22 to 24 with two shards hung).
#[test]
fn too_few_descriptors_to_start_is_a_one_line_error() {
    let dir = TempDir::new();
    let file = dir.join("served.log");
    std::fs::write(&file, b"").unwrap();
    for limit in [14, 24] {
        let nofile = format!("--nofile={limit}:{limit}");
        let run = run_program_to_exit(
            "prlimit",
            &[
                &nofile,
                BIN,
                "-p",
                "0",
                "--shards",
                "2",
                file.to_str().unwrap(),
            ],
            PATIENCE,
        );
        assert_one_line_error(
            &run,
            1,
            &format!(
                "tailsrv: error: the descriptor limit (RLIMIT_NOFILE, `ulimit -n`) is {limit};"
            ),
        );
        assert!(run.elapsed < PATIENCE, "took {:?}", run.elapsed);
    }
}
