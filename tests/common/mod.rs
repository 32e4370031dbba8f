//! Test harness: runs the real tailsrv binary against a temp file and talks to it over TCP.
//!
//! [`Server`] owns the process (killed on drop) and a temp directory (removed on drop), and
//! keeps every line the server logs so tests can wait for and assert on them. [`Client`] is
//! a `TcpStream` with deadline-bound reads. Nothing here sleeps to synchronise: conditions
//! are polled until a deadline, and a missed deadline fails the test with the server's log.

mod metrics;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tailsrv");

/// How long anything that should happen "at once" may take on a busy 2-core machine before
/// the test calls it a failure. Passing tests never wait this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How long a client must see nothing to conclude the server is (correctly) sending nothing.
pub const QUIET: Duration = Duration::from_millis(300);

/// Byte `i` of the deterministic test content.
///
/// Why this shape? Every byte depends on its position with a period far above any chunk or
/// buffer size, so data sent from a wrong offset or out of order does not compare equal.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) + i / 251 + i / 65_537) as u8
}

/// Bytes `start..start + len` of the test content.
pub fn pattern_range(start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64).map(pattern).collect()
}

/// Asserts `got == want` without printing megabytes: reports lengths and the first difference.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    let show = |b: &[u8], at: usize| {
        let end = (at + 16).min(b.len());
        format!("{:?}", String::from_utf8_lossy(&b[at.min(end)..end]))
    };
    match first {
        Some(i) => panic!(
            "{what}: bytes differ at index {i} (got {} bytes, want {}): got {} want {}; \
             differing ranges: {}",
            got.len(),
            want.len(),
            show(got, i),
            show(want, i),
            differing_ranges(got, want)
        ),
        None => panic!(
            "{what}: got {} bytes, want {} (one is a prefix of the other)",
            got.len(),
            want.len()
        ),
    }
}

/// The index ranges where `got` and `want` differ (over their common length), summarised.
fn differing_ranges(got: &[u8], want: &[u8]) -> String {
    let mut ranges = Vec::new();
    let mut start = None;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        match (a != b, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                ranges.push(format!("{s}..{i}"));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        ranges.push(format!("{s}..{}", got.len().min(want.len())));
    }
    let total = ranges.len();
    if total > 9 {
        let last = ranges.pop().unwrap_or_default();
        ranges.truncate(8);
        ranges.push(format!("({} more)", total - 9));
        ranges.push(last);
    }
    ranges.join(", ")
}

/// A small seeded PRNG (splitmix64): reproducible runs without the rand crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A directory under the system temp dir, unique to this test, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "tailsrv-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Appends `bytes` to the file at `path`, creating it if needed.
pub fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
}

/// Appends pattern bytes `start..start + len` to `path`, a MiB at a time.
pub fn append_pattern(path: &Path, start: u64, len: u64) {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut at = start;
    while at < start + len {
        let n = (start + len - at).min(1 << 20) as usize;
        file.write_all(&pattern_range(at, n))
            .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
        at += n as u64;
    }
}

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

/// Every line a process wrote to stderr, collected by a thread as they arrive.
#[derive(Clone, Default)]
pub struct Logs(Arc<(Mutex<LogState>, Condvar)>);

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// The process closed its stderr (it exited).
    closed: bool,
}

impl Logs {
    /// Collects `stderr` (any process's) line by line on a thread of its own.
    pub fn collect(stderr: impl Read + Send + 'static) -> Logs {
        let logs = Logs::default();
        let sink = logs.clone();
        thread::spawn(move || {
            let reader = BufReader::new(stderr);
            for line in reader.split(b'\n') {
                let Ok(line) = line else { break };
                let (lock, cond) = &*sink.0;
                let mut state = lock.lock().unwrap();
                state
                    .lines
                    .push(String::from_utf8_lossy(&line).into_owned());
                cond.notify_all();
            }
            let (lock, cond) = &*sink.0;
            lock.lock().unwrap().closed = true;
            cond.notify_all();
        });
        logs
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// All lines so far, joined for an assertion message.
    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until `done` holds for the lines so far; false if the deadline passes or the
    /// process closes its stderr first.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.0;
        let mut state = lock.lock().unwrap();
        loop {
            if done(&state.lines) {
                return true;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return false;
            }
            state = cond.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits for the first line that satisfies `matches` and returns it; panics with the log
    /// if none comes within `timeout`.
    #[track_caller]
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let mut found = None;
        self.wait_until(timeout, |lines| {
            found = lines.iter().find(|l| matches(l)).cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line {what} within {timeout:?}; log:\n{}",
                self.dump()
            )
        })
    }
}

/// The value of `name=` in a tracing log line (up to the next space), if present.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// The port in a logged peer address, whatever its form: `Some([::ffff:127.0.0.1]:5)`,
/// `127.0.0.1:5` or `[::1]:5`.
pub fn port_of(peer: &str) -> Option<u16> {
    peer.trim_end_matches(')').rsplit(':').next()?.parse().ok()
}

/// Whether a log line names the peer whose local (client-side) port is `port`.
pub fn mentions_peer(line: &str, port: u16) -> bool {
    field(line, "peer").and_then(port_of) == Some(port)
}

/// What a "client streaming" debug line says about one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streaming {
    pub port: u16,
    pub shard: String,
    pub offset: u64,
}

/// Parses a "client streaming" line (logged once a client's header has been resolved).
pub fn parse_streaming(line: &str) -> Option<Streaming> {
    if !line.contains("client streaming") {
        return None;
    }
    Some(Streaming {
        port: field(line, "peer").and_then(port_of)?,
        shard: field(line, "shard")?.to_owned(),
        offset: field(line, "offset")?.parse().ok()?,
    })
}

/// How to start a [`Server`].
#[derive(Clone)]
pub struct ServerBuilder {
    /// Serve this file instead of a fresh one in the server's temp directory.
    serve: Option<PathBuf>,
    /// Soft and hard RLIMIT_NOFILE to run under (through prlimit), if set.
    nofile: Option<u64>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    contents: Option<Vec<u8>>,
    port: u16,
}

impl ServerBuilder {
    /// An extra command-line argument (before FILE).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs the server under this descriptor limit (soft and hard, through `prlimit`, which
    /// execs the server so the pid stays the server's).
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Serves an existing file (left as it is) rather than a fresh one: for a second server
    /// on the same file.
    pub fn serve(mut self, path: &Path) -> Self {
        self.serve = Some(path.to_path_buf());
        self
    }

    /// Extra command-line arguments (before FILE).
    pub fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.args.extend(args.into_iter().map(String::from));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// What FILE holds at start-up.
    pub fn contents(mut self, bytes: &[u8]) -> Self {
        self.contents = Some(bytes.to_vec());
        self
    }

    /// FILE does not exist at start-up (its directory does).
    pub fn no_file(mut self) -> Self {
        self.contents = None;
        self
    }

    /// Listens on this port instead of port 0.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Starts tailsrv on port 0 and waits until it logs that it is listening.
    #[track_caller]
    pub fn start(self) -> Server {
        match self.try_start() {
            Ok(server) => server,
            Err(logs) => panic!("tailsrv exited before listening; log:\n{logs}"),
        }
    }

    /// Starts tailsrv and waits until it logs that it is listening; if it exits first (a
    /// port still taken, say), returns its log instead.
    #[track_caller]
    pub fn try_start(self) -> Result<Server, String> {
        let dir = TempDir::new();
        let file = self.serve.clone().unwrap_or_else(|| dir.join("served.log"));
        if let (None, Some(bytes)) = (&self.serve, &self.contents) {
            fs::write(&file, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        }
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(["-p", &self.port.to_string()])
            .args(&self.args)
            .arg(&file)
            // Debug logs carry each client's resolved offset and shard, which tests check.
            .env("RUST_LOG", "tailsrv=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting tailsrv");
        let logs = Logs::collect(child.stderr.take().expect("piped stderr"));
        let mut server = Server {
            child,
            port: 0,
            file,
            logs,
            status: None,
            dir,
        };
        let mut found = None;
        server.logs.wait_until(Duration::from_secs(30), |lines| {
            found = lines.iter().find(|l| l.contains(" listening ")).cloned();
            found.is_some()
        });
        let Some(line) = found else {
            if server.wait_exit(Duration::from_secs(5)).is_some() {
                return Err(server.logs.dump());
            }
            panic!(
                "no log line saying tailsrv is listening within 30 s; log:\n{}",
                server.logs.dump()
            );
        };
        server.port = field(&line, "port")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port= in the listening line: {line}"));
        assert_ne!(server.port, 0, "listening line: {line}");
        Ok(server)
    }
}

/// A running tailsrv; killed on drop if it has not exited.
pub struct Server {
    child: Child,
    port: u16,
    file: PathBuf,
    logs: Logs,
    status: Option<ExitStatus>,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    dir: TempDir,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            serve: None,
            nofile: None,
            args: Vec::new(),
            env: Vec::new(),
            contents: Some(Vec::new()),
            port: 0,
        }
    }

    /// Starts a server with default options on a file holding `contents`.
    #[track_caller]
    pub fn start(contents: &[u8]) -> Server {
        Server::builder().contents(contents).start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// FILE.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The temp directory FILE lives in.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    pub fn append(&self, bytes: &[u8]) {
        append(&self.file, bytes);
    }

    /// Connects a client and sends `header` (which may be anything, or nothing).
    #[track_caller]
    pub fn connect(&self, header: &[u8]) -> Client {
        let mut client = Client::connect(self.port);
        if !header.is_empty() {
            client.send(header);
        }
        client
    }

    /// Waits until the server has resolved `client`'s header and returns its start offset.
    #[track_caller]
    pub fn offset_of(&self, client: &Client) -> u64 {
        let port = client.local_port();
        let line = self
            .logs
            .wait_for(&format!("streaming to client port {port}"), PATIENCE, |l| {
                parse_streaming(l).is_some_and(|s| s.port == port)
            });
        parse_streaming(&line).expect("parsed above").offset
    }

    /// Every client the server has started streaming to so far, by client-side port.
    pub fn streaming(&self) -> HashMap<u16, Streaming> {
        self.logs
            .lines()
            .iter()
            .filter_map(|l| parse_streaming(l))
            .map(|s| (s.port, s))
            .collect()
    }

    /// Waits for a WARN line about a bad header from the client at `port`.
    #[track_caller]
    pub fn expect_bad_header_warning(&self, port: u16) -> String {
        self.logs.wait_for(
            &format!("warning of a bad header from port {port}"),
            PATIENCE,
            |l| l.contains("WARN") && l.contains("bad header") && mentions_peer(l, port),
        )
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped (so it is still ours).
        let ret = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            ret,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status {
                return Some(status);
            }
            self.status = self.child.try_wait().expect("waiting for tailsrv");
            if self.status.is_none() {
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Asserts the process exits with `code` within `timeout`.
    #[track_caller]
    pub fn expect_exit(&mut self, code: i32, timeout: Duration) {
        match self.wait_exit(timeout) {
            Some(status) => assert_eq!(
                status.code(),
                Some(code),
                "tailsrv exit status {status}, want {code}; log:\n{}",
                self.logs.dump()
            ),
            None => panic!(
                "tailsrv still running {timeout:?} later, want exit {code}; log:\n{}",
                self.logs.dump()
            ),
        }
    }

    /// How many descriptors the server process has open.
    pub fn fd_count(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- tailsrv log (port {}) ---\n{}",
                self.port,
                self.logs.dump()
            );
        }
    }
}

/// How a client's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Orderly: read returned 0 (FIN).
    Eof,
    /// The connection was reset.
    Reset,
}

/// A TCP client of the server under test.
pub struct Client {
    stream: TcpStream,
}

impl Client {
    #[track_caller]
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        Client { stream }
    }

    /// Connects to `addr` (e.g. `[::1]:port`), for tests that care where a client comes from.
    #[track_caller]
    pub fn connect_to(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Client { stream }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// The client side's port: how the server's log names this client.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local address").port()
    }

    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("sending {} bytes: {e}", bytes.len()));
    }

    /// Sends what it can of `bytes`, ignoring errors: for a client the server may already
    /// have closed.
    pub fn try_send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Closes the connection with a reset (SO_LINGER 0), as a crashing client's kernel would.
    #[track_caller]
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        tailsrv::sys::set_linger_zero(self.stream.as_raw_fd()).expect("SO_LINGER");
        drop(self.stream);
    }

    /// Half-closes: the server sees end of input, the client can still read.
    #[track_caller]
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
    }

    /// One read, waiting at most until `deadline`. A timeout is `ErrorKind::TimedOut`.
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(ErrorKind::TimedOut.into())
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Reads exactly `n` bytes within `timeout`; panics on EOF, error or timeout.
    #[track_caller]
    pub fn read_exactly(&mut self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = vec![0; n];
        let mut len = 0;
        while len < n {
            match self.read_by(&mut got[len..], deadline) {
                Ok(0) => panic!("EOF after {len} of {n} bytes"),
                Ok(k) => len += k,
                Err(e) => panic!("after {len} of {n} bytes: {e}"),
            }
        }
        got
    }

    /// Reads `want.len()` bytes within `timeout` and asserts they are `want`.
    #[track_caller]
    pub fn expect_bytes(&mut self, want: &[u8], timeout: Duration) {
        let got = self.read_exactly(want.len(), timeout);
        assert_bytes(&got, want, "client received");
    }

    /// Reads pattern bytes `start..start + len` within `timeout`, comparing as they come.
    #[track_caller]
    pub fn expect_pattern(&mut self, start: u64, len: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = start;
        while at < start + len {
            let want = (start + len - at).min(buf.len() as u64) as usize;
            let n = match self.read_by(&mut buf[..want], deadline) {
                Ok(0) => panic!("EOF at offset {at}, want up to {}", start + len),
                Ok(n) => n,
                Err(e) => panic!("at offset {at} of {start}..{}: {e}", start + len),
            };
            assert_bytes(
                &buf[..n],
                &pattern_range(at, n),
                &format!("bytes from offset {at}"),
            );
            at += n as u64;
        }
    }

    /// Asserts nothing arrives (no data, no EOF) for `quiet`.
    #[track_caller]
    pub fn expect_silence(&mut self, quiet: Duration) {
        let mut buf = [0u8; 4096];
        match self.read_by(&mut buf, Instant::now() + quiet) {
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Ok(0) => panic!("expected silence, got EOF"),
            Ok(n) => panic!(
                "expected silence, got {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => panic!("expected silence, got error {e}"),
        }
    }

    /// Reads everything until the connection ends; panics if it is still open at `timeout`.
    #[track_caller]
    pub fn read_to_end(&mut self, timeout: Duration) -> (Vec<u8>, Ending) {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.read_by(&mut buf, deadline) {
                Ok(0) => return (got, Ending::Eof),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return (got, Ending::Reset)
                }
                Err(e) => panic!("after {} bytes, waiting for the end: {e}", got.len()),
            }
        }
    }

    /// Asserts an orderly end (FIN, not a reset) within `timeout`, with no further bytes.
    #[track_caller]
    pub fn expect_eof(&mut self, timeout: Duration) {
        let (got, ending) = self.read_to_end(timeout);
        assert!(
            got.is_empty(),
            "expected EOF, got {} more bytes first",
            got.len()
        );
        assert_eq!(ending, Ending::Eof, "expected an orderly FIN");
    }

    /// Asserts the server closes the connection (FIN or reset) within `timeout` having sent
    /// no bytes at all.
    #[track_caller]
    pub fn expect_closed_without_data(&mut self, timeout: Duration) -> Ending {
        let (got, ending) = self.read_to_end(timeout);
        assert!(
            got.is_empty(),
            "expected no data before the close, got {} bytes: {:?}",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(64)])
        );
        ending
    }
}

/// A finished run of tailsrv that was expected to stop by itself.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs tailsrv with `args` (and RUST_LOG unset) to completion; panics if it is still
/// running after `timeout`.
#[track_caller]
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Finished {
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tailsrv");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output.expect("waiting for tailsrv");
            Finished {
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned; its waiter thread has not reaped it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("tailsrv {args:?} still running after {timeout:?}");
        }
    }
}
