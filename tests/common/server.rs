//! Running tailsrv: the real binary on port 0 ([`Server`], killed on drop), or the same
//! server inside the test process (`Server::builder().in_process()`, whose state the test
//! asks through its `Handle`); to completion ([`run_to_exit`]); or a bare in-process server
//! ([`InProcess`]).

use super::*;
use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tailsrv::cli::Options;
use tailsrv::{Error, Handle, Outcome};

/// How to start a [`Server`].
#[derive(Clone)]
pub struct ServerBuilder {
    /// Serve this file instead of a fresh one in the server's temp directory.
    serve: Option<PathBuf>,
    /// Soft and hard RLIMIT_NOFILE to run under, if set.
    nofile: Option<u64>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    contents: Option<Vec<u8>>,
    port: u16,
    /// Run inside the test process rather than as the binary.
    in_process: bool,
}

impl ServerBuilder {
    /// An extra command-line argument (before FILE).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the server (NOTIFY_SOCKET and the watchdog's are
    /// otherwise removed).
    #[cfg_attr(not(feature = "sd-notify"), allow(dead_code))]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the server with this many descriptors at most (soft and hard RLIMIT_NOFILE,
    /// set in the child before it execs the server, so the pid stays the server's).
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

    /// Runs the server inside the test process, through `tailsrv::Server` with the same
    /// command line, so that the test can ask its state (`Server::handle`, `offset_of`)
    /// rather than read its log. The log is still captured, line by line as the binary
    /// writes it. Not with `nofile` or `env`; no pid, signals or descriptor counts.
    pub fn in_process(mut self) -> Self {
        self.in_process = true;
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
        if self.in_process {
            return self.start_in_process(dir, file);
        }
        let mut cmd = Command::new(BIN);
        cmd.args(["-p", &self.port.to_string()])
            .args(&self.args)
            .arg(&file)
            // Debug logs carry each client's resolved offset and shard, which tests check.
            .env("RUST_LOG", "tailsrv=debug")
            // Hermetic: a test run under systemd must not hand its own service manager to
            // the server. Tests that want one set these with `env`.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(limit) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: runs in the child between fork and exec, where only async-signal-safe
            // calls are allowed: setrlimit is one, and `lim` is plain data copied in.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("starting tailsrv");
        let logs = Logs::collect(child.stderr.take().expect("piped stderr"));
        let mut server = Server {
            run: Run::Process {
                child,
                status: None,
            },
            port: 0,
            file,
            logs,
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

    fn start_in_process(self, dir: TempDir, file: PathBuf) -> Result<Server, String> {
        assert!(
            self.nofile.is_none() && self.env.is_empty(),
            "nofile and env need the binary"
        );
        raise_nofile_to_hard();
        let port = self.port.to_string();
        let mut args = vec!["tailsrv", "-p", port.as_str()];
        args.extend(self.args.iter().map(String::as_str));
        args.push(file.to_str().expect("a UTF-8 temp path"));
        let opts = Options::try_parse_from_args(&args);
        let logs = Logs::default();
        let dispatch = logs.dispatch();
        let server = tracing::dispatcher::with_default(&dispatch, || tailsrv::Server::bind(&opts));
        let server = match server {
            Ok(server) => server,
            Err(e) => return Err(format!("{}\ntailsrv: error: {e}", logs.dump())),
        };
        let handle = server.handle();
        let metrics = server.metrics_addr();
        let port = server.local_addr().port();
        let serving =
            thread::spawn(move || tracing::dispatcher::with_default(&dispatch, || server.wait()));
        Ok(Server {
            run: Run::InProcess {
                handle,
                serving: Some(serving),
                code: None,
                metrics,
            },
            port,
            file,
            logs,
            dir,
        })
    }
}

/// Raises the test process's soft descriptor limit to its hard limit, as the binary does
/// for itself: in-process servers and the tests' clients share this process's descriptors.
pub fn raise_nofile_to_hard() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct to a pointer to a live local; setrlimit
    // reads one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A running tailsrv; killed (or stopped) on drop if it has not exited.
pub struct Server {
    run: Run,
    port: u16,
    file: PathBuf,
    logs: Logs,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    dir: TempDir,
}

/// How a [`Server`] runs.
enum Run {
    /// The binary.
    Process {
        child: Child,
        status: Option<ExitStatus>,
    },
    /// Inside the test process, serving on a thread of its own.
    InProcess {
        handle: Handle,
        serving: Option<JoinHandle<Result<Outcome, Error>>>,
        /// The exit status the binary would have ended with, once it has stopped.
        code: Option<i32>,
        metrics: Option<std::net::SocketAddr>,
    },
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
            in_process: false,
        }
    }

    /// Starts a server with default options on a file holding `contents`.
    #[track_caller]
    pub fn start(contents: &[u8]) -> Server {
        Server::builder().contents(contents).start()
    }

    /// As [`Server::start`], inside the test process (see [`ServerBuilder::in_process`]).
    #[track_caller]
    pub fn in_process(contents: &[u8]) -> Server {
        Server::builder().contents(contents).in_process().start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    #[track_caller]
    pub fn pid(&self) -> i32 {
        match &self.run {
            Run::Process { child, .. } => child.id() as i32,
            Run::InProcess { .. } => panic!("an in-process server has no pid of its own"),
        }
    }

    /// The in-process server's handle, to ask it about its state.
    #[track_caller]
    pub fn handle(&self) -> &Handle {
        match &self.run {
            Run::InProcess { handle, .. } => handle,
            Run::Process { .. } => panic!("only an in-process server has a handle"),
        }
    }

    /// The metrics address of an in-process server, if it serves metrics.
    pub(super) fn in_process_metrics(&self) -> Option<Option<std::net::SocketAddr>> {
        match &self.run {
            Run::InProcess { metrics, .. } => Some(*metrics),
            Run::Process { .. } => None,
        }
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

    /// Waits until the server has resolved `client`'s header and returns its start offset,
    /// as the in-process server's `Handle` says.
    #[track_caller]
    pub fn offset_of(&self, client: &Client) -> u64 {
        let port = client.local_port();
        let mut found = None;
        poll_until(PATIENCE, || {
            found = self
                .handle()
                .client_starts()
                .into_iter()
                .find(|s| s.peer.is_some_and(|p| p.port() == port));
            found.is_some()
        });
        found
            .unwrap_or_else(|| panic!("client port {port} never started streaming"))
            .offset
    }

    /// The clients streaming now, by client-side port, as the in-process server's `Handle`
    /// says.
    #[track_caller]
    pub fn streaming(&self) -> HashMap<u16, Streaming> {
        self.handle()
            .client_starts()
            .into_iter()
            .filter_map(|s| {
                let port = s.peer?.port();
                Some((
                    port,
                    Streaming {
                        port,
                        shard: s.shard,
                        offset: s.offset,
                    },
                ))
            })
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

    #[track_caller]
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

    /// Asks the server to stop as SIGTERM does (in-process: `Handle::shutdown`).
    pub fn sigterm(&self) {
        match &self.run {
            Run::Process { .. } => self.signal(libc::SIGTERM),
            Run::InProcess { handle, .. } => handle.shutdown(),
        }
    }

    /// Waits for the process to exit (in-process: for `serve` to return, with the status
    /// the binary would have ended with); `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + timeout;
        loop {
            match &mut self.run {
                Run::Process { child, status } => {
                    if status.is_none() {
                        *status = child.try_wait().expect("waiting for tailsrv");
                    }
                    if let Some(status) = *status {
                        return Some(status);
                    }
                }
                Run::InProcess { serving, code, .. } => {
                    if code.is_none() && serving.as_ref().is_some_and(|s| s.is_finished()) {
                        let result = serving.take().expect("checked").join();
                        *code = Some(match result {
                            Ok(Ok(Outcome::Signalled)) => 0,
                            Ok(Ok(Outcome::FileGone)) => 3,
                            Ok(Ok(Outcome::Truncated)) => 4,
                            Ok(Err(_)) | Err(_) => 1,
                        });
                    }
                    if let Some(code) = *code {
                        return Some(ExitStatus::from_raw(code << 8));
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
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
            None => {
                // A binary that stops once a debugger interrupts its sleep slept through the
                // wake-up that should have stopped it; one that does not is stuck or slow.
                let diagnosis = match &self.run {
                    Run::Process { child, .. } => {
                        let stacks = thread_stacks(child.id());
                        let after = match self.wait_exit(Duration::from_secs(5)) {
                            Some(status) => format!(
                                "it exited ({status}) within 5 s of the debugger attaching \
                                 (a lost wake-up)"
                            ),
                            None => "it still ran 5 s after the debugger attached".into(),
                        };
                        format!("{after}\n--- its threads ---\n{stacks}")
                    }
                    Run::InProcess { .. } => String::new(),
                };
                panic!(
                    "tailsrv still running {timeout:?} later, want exit {code}; {diagnosis}\n\
                     log:\n{}",
                    self.logs.dump()
                )
            }
        }
    }

    /// How many sockets, files and pipes the server process has open: every descriptor but
    /// its event machinery (`anon_inode:` ones: eventfd, inotify, epoll, io_uring, signalfd).
    ///
    /// Why leave those out? Their number moves while the server works, and none is a client's:
    /// each wait through glommio's ring holds a duplicate of the descriptor it awaits (see
    /// `sys::readable`), taken when the wait starts and closed when it ends, and the
    /// executors' own rings and wait duplicates come up after "listening" is logged. A
    /// count taken at one moment includes or lacks a few of them (measured: 32 or 33
    /// descriptors right after start, the last an epoll duplicate). The sockets and files
    /// are what a client or a generation costs, and they stay put while the server idles.
    #[track_caller]
    pub fn held_fds(&self) -> usize {
        let table = self.fd_table();
        assert!(
            !table.is_empty(),
            "no descriptors listed for {}",
            self.pid()
        );
        table
            .values()
            .filter(|t| !t.starts_with("anon_inode:"))
            .count()
    }

    /// [`Server::held_fds`] once it holds still: unchanged for 200 ms (at most [`PATIENCE`]).
    ///
    /// Why wait? A metrics request's connection is shut down when the answer has gone out
    /// (the client reads its end there) and closed a moment later, when the task answering it
    /// ends; a count taken in between has it.
    pub fn settled_held_fds(&self) -> usize {
        const STILL: Duration = Duration::from_millis(200);
        let deadline = Instant::now() + PATIENCE;
        let (mut last, mut since) = (self.held_fds(), Instant::now());
        while since.elapsed() < STILL && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            let now = self.held_fds();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        last
    }

    /// The server's descriptor table: each open descriptor and what it names
    /// (`socket:[…]`, `anon_inode:[eventfd]`, a path), for failure messages.
    pub fn fd_table(&self) -> std::collections::BTreeMap<u32, String> {
        let dir = format!("/proc/{}/fd", self.pid());
        let Ok(entries) = fs::read_dir(&dir) else {
            return Default::default();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                // A descriptor closed between the listing and the readlink is left out.
                let target = fs::read_link(e.path()).ok()?;
                Some((fd, target.display().to_string()))
            })
            .collect()
    }
}

/// What changed between two descriptor tables (see [`Server::fd_table`]): the descriptors
/// closed since `before` and those opened since, one per line.
pub fn fd_changes(
    before: &std::collections::BTreeMap<u32, String>,
    after: &std::collections::BTreeMap<u32, String>,
) -> String {
    let mut out = String::new();
    for (fd, target) in before {
        if after.get(fd) != Some(target) {
            out.push_str(&format!("  closed {fd} -> {target}\n"));
        }
    }
    for (fd, target) in after {
        if before.get(fd) != Some(target) {
            out.push_str(&format!("  opened {fd} -> {target}\n"));
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.run {
            Run::Process { child, status } => {
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Run::InProcess {
                handle, serving, ..
            } => {
                if let Some(serving) = serving.take() {
                    handle.shutdown();
                    if let Err(stuck) = join_stopped(serving, handle, "in-process tailsrv") {
                        eprintln!(
                            "--- tailsrv log (port {}) ---\n{}",
                            self.port,
                            self.logs.dump()
                        );
                        fail_in_drop(&stuck);
                        return;
                    }
                }
            }
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

/// How long a test helper waits for a server it has stopped (`Handle::shutdown`) to
/// return from `serve` before calling it stuck. Twice [`PATIENCE`]: a stop that takes
/// longer is a bug, not a slow machine.
pub const STOP_PATIENCE: Duration = Duration::from_secs(20);

/// Joins the thread serving an in-process server that has been told to stop, waiting at
/// most [`STOP_PATIENCE`]. If it has not finished by then, leaves it running (a thread
/// cannot be killed, and blocking here would hang the whole test binary) and returns
/// what to report: which server, and what its `Handle` says.
fn join_stopped<T>(serving: JoinHandle<T>, handle: &Handle, what: &str) -> Result<(), String> {
    if poll_until(STOP_PATIENCE, || serving.is_finished()) {
        let _ = serving.join();
        return Ok(());
    }
    let state = format!(
        "stopping={}, clients={}, file_open={}, open_generations={}, file_events={}, \
         watcher_wakeups={}",
        handle.stopping(),
        handle.clients(),
        handle.file_open(),
        handle.open_generations(),
        handle.file_events(),
        handle.watcher_wakeups(),
    );
    // Where every thread is, for whoever reads the failure. Attaching a debugger also
    // interrupts a thread asleep in io_uring_enter: a server that stops right after it
    // slept through the wake-up that should have stopped it (see `connect_patiently`).
    let stacks = thread_stacks(std::process::id());
    let after = if poll_until(Duration::from_secs(5), || serving.is_finished()) {
        "it stopped within 5 s of the debugger attaching (a lost wake-up)"
    } else {
        "it did not stop after the debugger attached either"
    };
    // Dropping the JoinHandle detaches the thread: it is leaked, not waited for.
    drop(serving);
    Err(format!(
        "{what} on port {} did not stop within {STOP_PATIENCE:?} of Handle::shutdown; \
         left running ({state}); {after}\n--- threads of the test process ---\n{stacks}",
        handle.local_addr().port(),
    ))
}

/// Every thread's stack in process `pid`, by gdb (`thread apply all bt`), or why not.
fn thread_stacks(pid: u32) -> String {
    let pid = pid.to_string();
    let child = Command::new("gdb")
        .args(["-p", &pid, "-batch", "-nx", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return format!("(no stacks: cannot run gdb: {e})"),
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(Err(e)) => format!("(no stacks: gdb: {e})"),
        Err(_) => "(no stacks: gdb still running after 60 s)".into(),
    }
}

/// Joins `thread` if it finishes within `timeout`, with what it returned (or its panic);
/// `None` if it is still running then, in which case it is left running, detached: a thread
/// cannot be killed, and waiting on would block the caller for as long as it runs.
pub fn join_within<T>(thread: JoinHandle<T>, timeout: Duration) -> Option<thread::Result<T>> {
    if poll_until(timeout, || thread.is_finished()) {
        Some(thread.join())
    } else {
        None
    }
}

/// Reports `why` from a `Drop`: fails the test by panicking, unless the thread is already
/// panicking (a second panic would abort the whole test binary), in which case it only
/// says so on stderr, and the first failure stands.
fn fail_in_drop(why: &str) {
    if thread::panicking() {
        use std::io::Write;
        // The stderr handle rather than `eprintln!`, which the harness may capture.
        let _ = writeln!(std::io::stderr(), "{why}");
    } else {
        panic!("{why}");
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
    run_program_to_exit(BIN, args, timeout)
}

/// Runs `program` (one of the crate's binaries, or a wrapper such as `prlimit` in front of
/// one) with `args` and RUST_LOG unset to completion; panics if it is still running after
/// `timeout`.
#[track_caller]
pub fn run_program_to_exit(program: &str, args: &[&str], timeout: Duration) -> Finished {
    let name = Path::new(program)
        .file_name()
        .map_or(program.into(), |name| name.to_string_lossy());
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output.unwrap_or_else(|e| panic!("waiting for {name}: {e}"));
            Finished {
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned; its waiter thread has not reaped it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{name} {args:?} still running after {timeout:?}");
        }
    }
}

/// `prlimit` arguments that run the command after them as user and group 65534 (nobody),
/// with no supplementary groups and the usual 8 MiB locked-memory limit. Needs root.
pub const PRLIMIT_AS_NOBODY: [&str; 5] = [
    "--memlock=8388608:8388608",
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// Asserts that `run` exited with `code` and that its stderr is one line starting with
/// `start`.
#[track_caller]
pub fn assert_one_line_error(run: &Finished, code: i32, start: &str) {
    let stderr = &run.stderr;
    assert_eq!(run.code, Some(code), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(start), "{stderr}");
}

/// A future the test resolves by hand, from any thread.
#[derive(Clone, Default)]
pub struct Trigger(Arc<Mutex<(bool, Option<Waker>)>>);

impl Trigger {
    /// Resolves every future [`fired`](Trigger::fired) made.
    pub fn fire(&self) {
        let mut state = self.0.lock().unwrap();
        state.0 = true;
        if let Some(w) = state.1.take() {
            w.wake();
        }
    }

    /// A future that resolves once [`fire`](Trigger::fire) is called.
    pub fn fired(&self) -> impl Future<Output = ()> + Send + 'static {
        let me = self.clone();
        futures_lite::future::poll_fn(move |cx| {
            let mut state = me.0.lock().unwrap();
            if state.0 {
                Poll::Ready(())
            } else {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// A server bound to 127.0.0.1 on port 0 (one shard unless asked), serving on its own thread.
pub struct InProcess {
    /// The server's state, and a way to stop it.
    pub handle: Handle,
    serving: Option<JoinHandle<Result<Outcome, Error>>>,
    /// Resolves the shutdown future `serve` was given.
    pub stop: Trigger,
}

/// Binds, without serving, a whole server in the test process to 127.0.0.1 on port 0 for
/// `file`, with the options in `extra`; panics if binding fails.
#[track_caller]
pub fn bind_in_process(file: &Path, extra: &[&str]) -> tailsrv::Server {
    let mut args = vec!["tailsrv", "-p", "0", "--bind", "127.0.0.1"];
    args.extend_from_slice(extra);
    args.push(file.to_str().expect("a UTF-8 temp path"));
    let opts = Options::try_parse_from_args(&args);
    tailsrv::Server::bind(&opts).unwrap_or_else(|e| panic!("binding: {e}"))
}

impl InProcess {
    #[track_caller]
    pub fn start(file: &std::path::Path, extra: &[&str]) -> InProcess {
        InProcess::with_shards(file, 1, extra)
    }

    /// As [`InProcess::start`], with `shards` shards.
    #[track_caller]
    pub fn with_shards(file: &std::path::Path, shards: usize, extra: &[&str]) -> InProcess {
        let shards = shards.to_string();
        let server = bind_in_process(file, &[&["--shards", shards.as_str()], extra].concat());
        assert_ne!(server.local_addr().port(), 0);
        assert_eq!(server.handle().local_addr(), server.local_addr());
        let handle = server.handle();
        let stop = Trigger::default();
        let shutdown = stop.fired();
        let serving = thread::spawn(move || server.serve(shutdown));
        InProcess {
            handle,
            serving: Some(serving),
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.handle.local_addr().port()
    }

    /// Waits for `serve` to return.
    #[track_caller]
    pub fn finish(&mut self) -> Outcome {
        let serving = self.serving.take().expect("served once");
        assert!(
            poll_until(PATIENCE, || serving.is_finished()),
            "serve did not return within {PATIENCE:?}"
        );
        serving
            .join()
            .expect("serve panicked")
            .unwrap_or_else(|e| panic!("serve failed: {e}"))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            self.handle.shutdown();
            if let Err(stuck) = join_stopped(serving, &self.handle, "in-process server") {
                fail_in_drop(&stuck);
            }
        }
    }
}

pub trait ParseArgs {
    /// Parses a command line the test knows to be good; panics otherwise.
    fn try_parse_from_args(args: &[&str]) -> Self;
}

impl ParseArgs for Options {
    #[track_caller]
    fn try_parse_from_args(args: &[&str]) -> Options {
        use clap::Parser;
        Options::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

/// A client past its header, as the server says: its port (client side), shard and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streaming {
    pub port: u16,
    pub shard: usize,
    pub offset: u64,
}

/// A port outside the kernel's ephemeral range, free right now, so that a server can be
/// restarted on it without an outgoing connection having taken it meanwhile.
pub fn low_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(nanos ^ (u64::from(std::process::id()) << 32));
    for _ in 0..1000 {
        let port = 20_000 + rng.below(12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Starts tailsrv on `path` at `port`, retrying while the port is still held by a
/// server that just stopped.
#[track_caller]
pub fn serve_at(path: &Path, port: u16) -> Server {
    let builder = Server::builder().serve(path).port(port);
    let mut last = String::new();
    for _ in 0..100 {
        match builder.clone().try_start() {
            Ok(server) => return server,
            Err(log) => last = log,
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("tailsrv would not start on port {port}; last log:\n{last}");
}
