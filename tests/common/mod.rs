//! Test harness: runs tailsrv against a temp file and talks to it over TCP.
//!
//! - `server`: [`Server`] owns the real binary (killed on drop) on port 0 and a temp directory
//!   (removed on drop), and keeps every line the server logs; [`InProcess`] runs a whole
//!   server inside the test process through `tailsrv::Server` and reads its state from its
//!   `Handle`.
//! - `browser`: [`Browser`], headless Chromium through WebDriver, for the web page.
//! - `client`: [`Client`], a `TcpStream` with deadline-bound reads.
//! - `file`: temp directories, deterministic content, appends, byte comparisons.
//! - `http`: HTTP requests on the streaming port, and their response heads.
//! - `logs`: the server's stderr, line by line.
//! - `metrics`: scraping the server's Prometheus endpoint.
//! - `systemd`: `systemd-analyze verify` on unit files.
//!
//! Nothing here sleeps to synchronise: conditions are polled until a deadline, and a missed
//! deadline fails the test with the server's log.

mod browser;
mod client;
mod file;
mod http;
mod logs;
mod metrics;
mod server;
mod systemd;

pub use browser::*;
pub use client::*;
pub use file::*;
pub use logs::*;
pub use metrics::*;
pub use server::*;
pub use systemd::*;

use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tailsrv");

/// How long anything that should happen "at once" may take on a busy 2-core machine before
/// the test calls it a failure. Passing tests never wait this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How long a client must see nothing to conclude the server is (correctly) sending nothing.
pub const QUIET: Duration = Duration::from_millis(300);

/// Polls `done` until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Finds a program a test drives (`name` on PATH or in /usr/sbin and /sbin), or says the
/// calling test is skipped and returns `None` when it is missing. Under `CI=true` a missing
/// program fails the test instead: `.ci/run` installs `package` (Debian's), so its absence
/// there is a broken CI, not a machine without the tool.
#[track_caller]
pub fn required_program(name: &str, package: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = format!("{name} is not installed here (Debian: apt-get install {package})");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true, and {why}: .ci/run installs it");
        }
        skip(&why);
    }
    found
}

/// Says that the calling test did not run its checks here, and why: on stderr, and as a
/// `SKIP: test: why` line in the file `TAILSRV_SKIPS` names, if set (`.ci/run` sets it and
/// counts the lines in its closing line). A skipped test still reports "ok" to the harness,
/// so without this it would count as a pass.
pub fn skip(why: &str) {
    let name = thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_string();
    use std::io::Write;
    // Why the stderr handle and not `eprintln!`? The harness captures `eprintln!` of a test
    // that passes, and a skipped test passes: the line would show in no ordinary run.
    let _ = writeln!(std::io::stderr(), "SKIP: {name}: {why}");
    if let Some(path) = std::env::var_os("TAILSRV_SKIPS") {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "SKIP: {name}: {why}"));
        if let Err(e) = written {
            panic!("recording the skip in {}: {e}", path.to_string_lossy());
        }
    }
}
