//! The client engine: thousands of nonblocking connections on a few threads, one epoll each.
//!
//! Why epoll threads and not a thread per client? Ten thousand threads on two cores would
//! measure the scheduler, not the server, and the generator must never be the bottleneck.
//! Each engine thread owns a slice of the connections and does, per ready socket, one
//! `recv` (level-triggered, so no connection can starve the others), one memcmp against the
//! mapped file, and for live records one clock read per `recv`.
//!
//! The main thread steers the engine through [`Progress`]: it waits until every connection
//! is up, says go, watches the counters, and says stop.

use crate::data::{self, FileView, Kind, RECORD};
use crate::sys::{self, Epoll, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connects in flight per engine thread.
///
/// Why a cap? Thousands of SYNs at once overflow the server's accept queue, and a dropped
/// SYN is retried only after a second, which would measure the kernel's retry timer.
const INFLIGHT: usize = 128;
/// Receive buffer per engine thread, shared by its connections (one `recv` at a time).
const BUF: usize = 256 << 10;
/// The most one discarding `recv` drops.
const DISCARD_MAX: usize = 4 << 20;
/// How long an engine thread sleeps in epoll before it looks at the main thread's word.
const TICK_MS: i32 = 1;
/// Failure messages kept per thread (all are counted).
const KEEP_FAILURES: usize = 8;
/// Connect attempts per client (churn clients retry forever and count the errors instead).
const CONNECT_TRIES: u32 = 3;

/// What a client does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads `len` bytes, records its completion time, and disconnects.
    CatchUp { len: u64 },
    /// Reads records as they come, measuring each one's latency.
    Live,
    /// Expects nothing and reads whatever comes (which is checked and counted).
    Idle,
    /// Never reads.
    Stalled,
    /// Reads `len` bytes, disconnects (with a FIN if `fin`, else a reset), and reconnects.
    Churn { len: u64, fin: bool },
}

/// A set of identical clients.
#[derive(Debug, Clone)]
pub struct Group {
    pub count: usize,
    pub role: Role,
    /// The file offset of the first byte this client will receive.
    pub start: u64,
    /// The header line it sends, newline included (or an HTTP request, with `http`).
    pub header: String,
    /// The clients speak HTTP: the response head comes before the file's bytes.
    pub http: bool,
}

impl Group {
    pub fn new(count: usize, role: Role, start: u64, header: impl Into<String>) -> Group {
        Group {
            count,
            role,
            start,
            header: header.into(),
            http: false,
        }
    }

    /// The same clients over HTTP: `GET /stream` with the start the raw header asks for
    /// (`N` is `from=N`, `-N` is `last=N`), reading past the response head.
    pub fn over_http(self) -> Group {
        let raw = self.header.trim();
        let query = match raw.strip_prefix('-') {
            Some(n) => format!("last={n}"),
            None => format!("from={}", raw.trim_start_matches('+')),
        };
        Group {
            header: format!("GET /stream?{query} HTTP/1.1\r\nHost: fanout\r\n\r\n"),
            http: true,
            ..self
        }
    }
}

/// How far an HTTP client is through the response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// A raw client, or the head is behind it.
    Done,
    /// Reading the head: how many bytes of the blank line's `\r\n\r\n` were last seen, and
    /// whether the status line has been checked.
    Reading { matched: u8, checked: bool },
}

impl Head {
    /// Takes in received bytes; returns where the file's bytes start among them, once the
    /// head ends, or an error for a status other than 200.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, String> {
        let Head::Reading { matched, checked } = self else {
            return Ok(Some(0));
        };
        if !*checked {
            // The status line arrives in the head's first segment, in one piece.
            if !bytes.starts_with(b"HTTP/1.1 200 ") {
                let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                return Err(format!("HTTP status {:?}", String::from_utf8_lossy(line)));
            }
            *checked = true;
        }
        for (i, &b) in bytes.iter().enumerate() {
            let want = b"\r\n\r\n"[*matched as usize];
            *matched = if b == want {
                *matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if *matched == 4 {
                *self = Head::Done;
                return Ok(Some(i + 1));
            }
        }
        Ok(None)
    }
}

pub struct Plan {
    pub addr: SocketAddr,
    pub threads: usize,
    pub groups: Vec<Group>,
    /// Compare every byte with the file (true), or drop it in the kernel (MSG_TRUNC) and only
    /// count it. Live clients always compare: they read the stamps.
    pub verify: bool,
    /// Where live records start (their offsets are `record_base + k * RECORD`).
    pub record_base: u64,
    /// Hold every header until [`Engine::go`] (catch-up: all clients start together).
    /// Otherwise each client sends its header as soon as it is connected.
    pub hold_headers: bool,
}

// The phase starts at 0: connecting, headers held if the plan says so.
const GO: u8 = 1;
const STOP: u8 = 2;

/// Counters the engine threads publish (after every epoll round) and the main thread reads.
#[derive(Default)]
pub struct Progress {
    phase: AtomicU8,
    pub connected: AtomicUsize,
    /// Live clients that have received a warm-up record.
    pub warmed: AtomicUsize,
    /// Timed records received, summed over clients.
    pub delivered: AtomicU64,
    /// Catch-up clients that have read all they asked for.
    pub finished: AtomicUsize,
    /// Churn connections completed (connected, read, closed).
    pub cycles: AtomicU64,
    pub failures: AtomicUsize,
    pub bytes: AtomicU64,
}

impl Progress {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }

    pub fn get64(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the engine measured, merged over its threads.
pub struct Outcome {
    /// Append-to-delivery latency of timed records, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Catch-up clients: header sent to last byte, in nanoseconds.
    pub completions_ns: Vec<u64>,
    pub first_start_ns: u64,
    pub last_done_ns: u64,
    pub bytes: u64,
    pub records: u64,
    pub cycles: u64,
    pub connect_errors: u64,
    /// Stalled clients the server closed on.
    pub dropped: u64,
    /// Timed records each live client received, one entry per live client.
    pub per_client_records: Vec<u64>,
    pub failures: Vec<String>,
    pub failure_count: usize,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            latency: Histogram::new_with_bounds(1, 600_000_000_000, 3)
                .expect("valid histogram bounds"),
            completions_ns: Vec::new(),
            first_start_ns: u64::MAX,
            last_done_ns: 0,
            bytes: 0,
            records: 0,
            cycles: 0,
            connect_errors: 0,
            dropped: 0,
            per_client_records: Vec::new(),
            failures: Vec::new(),
            failure_count: 0,
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.completions_ns.extend(other.completions_ns);
        self.first_start_ns = self.first_start_ns.min(other.first_start_ns);
        self.last_done_ns = self.last_done_ns.max(other.last_done_ns);
        self.bytes += other.bytes;
        self.records += other.records;
        self.cycles += other.cycles;
        self.connect_errors += other.connect_errors;
        self.dropped += other.dropped;
        self.per_client_records.extend(other.per_client_records);
        for f in other.failures {
            if self.failures.len() < KEEP_FAILURES {
                self.failures.push(f);
            }
        }
        self.failure_count += other.failure_count;
    }
}

pub struct Engine {
    progress: Arc<Progress>,
    threads: Vec<JoinHandle<Outcome>>,
    total: usize,
}

impl Engine {
    pub fn start(plan: Plan, view: Arc<FileView>) -> io::Result<Engine> {
        let plan = Arc::new(plan);
        let progress = Arc::new(Progress::default());
        let threads = plan.threads.max(1);
        let total = plan.groups.iter().map(|g| g.count).sum();
        // Clients are dealt round-robin, so each thread gets its share of every group.
        let mut shares: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
        let mut n = 0;
        for (g, group) in plan.groups.iter().enumerate() {
            for _ in 0..group.count {
                shares[n % threads].push(Conn::new(g as u16, group.start));
                n += 1;
            }
        }
        let mut handles = Vec::with_capacity(threads);
        for (t, conns) in shares.into_iter().enumerate() {
            let worker = Worker::new(plan.clone(), view.clone(), progress.clone(), conns)?;
            let handle = std::thread::Builder::new()
                .name(format!("fanout-client-{t}"))
                .spawn(move || worker.run())?;
            handles.push(handle);
        }
        Ok(Engine {
            progress,
            threads: handles,
            total,
        })
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Waits until `done` holds, a client fails, or `timeout` passes. Returns whether `done`.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&Progress) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.progress) {
                return true;
            }
            if Progress::get(&self.progress.failures) > 0 || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Waits until every client is connected.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        let total = self.total;
        if self.wait_until(timeout, |p| Progress::get(&p.connected) >= total) {
            Ok(())
        } else {
            Err(format!(
                "only {} of {total} clients connected within {timeout:?}",
                Progress::get(&self.progress.connected)
            ))
        }
    }

    pub fn go(&self) {
        self.progress.phase.store(GO, Ordering::Release);
    }

    /// Closes every connection (with a reset, so no TIME_WAIT is left) and merges results.
    pub fn stop(self) -> Outcome {
        self.progress.phase.store(STOP, Ordering::Release);
        let mut out = Outcome::new();
        for t in self.threads {
            match t.join() {
                Ok(o) => out.merge(o),
                Err(_) => {
                    out.failures.push("an engine thread panicked".into());
                    out.failure_count += 1;
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its turn to connect.
    New,
    Connecting,
    /// Connected, header held until go.
    Ready,
    Streaming,
    Done,
}

struct Conn {
    fd: Option<OwnedFd>,
    /// Bumped on every close, so a late event for an old socket is ignored.
    gen: u32,
    group: u16,
    state: State,
    tries: u32,
    /// The file offset of the next byte expected.
    offset: u64,
    start_ns: u64,
    warm: bool,
    records: u64,
    head: Head,
}

impl Conn {
    fn new(group: u16, start: u64) -> Conn {
        Conn {
            fd: None,
            gen: 0,
            group,
            state: State::New,
            tries: 0,
            offset: start,
            start_ns: 0,
            warm: false,
            records: 0,
            head: Head::Done,
        }
    }

    fn token(&self, index: usize) -> u64 {
        (u64::from(self.gen) << 32) | index as u64
    }
}

/// Counts not yet published to [`Progress`].
#[derive(Default)]
struct Unpublished {
    connected: usize,
    warmed: usize,
    delivered: u64,
    finished: usize,
    cycles: u64,
    failures: usize,
    bytes: u64,
}

struct Worker {
    plan: Arc<Plan>,
    view: Arc<FileView>,
    progress: Arc<Progress>,
    epoll: Epoll,
    conns: Vec<Conn>,
    /// Clients waiting to (re)connect.
    queue: VecDeque<usize>,
    inflight: usize,
    headers_released: bool,
    buf: Vec<u8>,
    out: Outcome,
    pending: Unpublished,
}

impl Worker {
    fn new(
        plan: Arc<Plan>,
        view: Arc<FileView>,
        progress: Arc<Progress>,
        conns: Vec<Conn>,
    ) -> io::Result<Worker> {
        let queue = (0..conns.len()).collect();
        Ok(Worker {
            plan,
            view,
            progress,
            epoll: Epoll::new()?,
            conns,
            queue,
            inflight: 0,
            headers_released: false,
            buf: vec![0u8; BUF],
            out: Outcome::new(),
            pending: Unpublished::default(),
        })
    }

    fn run(mut self) -> Outcome {
        let mut raw = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut events = Vec::with_capacity(raw.len());
        loop {
            let phase = self.progress.phase.load(Ordering::Acquire);
            if phase == STOP {
                break;
            }
            self.open_connections();
            if phase == GO && !self.headers_released {
                self.headers_released = true;
                for i in 0..self.conns.len() {
                    if self.conns[i].state == State::Ready {
                        self.send_header(i);
                    }
                }
            }
            if let Err(e) = self.epoll.wait(&mut raw, &mut events, TICK_MS) {
                self.fail(usize::MAX, format!("epoll_wait: {e}"));
                break;
            }
            for &(ev, token) in &events {
                let index = (token & 0xffff_ffff) as usize;
                let gen = (token >> 32) as u32;
                if index >= self.conns.len() || self.conns[index].gen != gen {
                    continue;
                }
                self.handle(index, ev);
            }
            self.publish();
        }
        for conn in &mut self.conns {
            if self.plan.groups[conn.group as usize].role == Role::Live {
                self.out.per_client_records.push(conn.records);
            }
            if let Some(fd) = conn.fd.take() {
                let _ = tailsrv::sys::set_linger_zero(fd.as_fd());
            }
        }
        self.publish();
        self.out
    }

    fn role(&self, i: usize) -> Role {
        self.plan.groups[self.conns[i].group as usize].role
    }

    fn publish(&mut self) {
        let p = std::mem::take(&mut self.pending);
        let add = |c: &AtomicUsize, n: usize| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        let add64 = |c: &AtomicU64, n: u64| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.progress.connected, p.connected);
        add(&self.progress.warmed, p.warmed);
        add64(&self.progress.delivered, p.delivered);
        add(&self.progress.finished, p.finished);
        add64(&self.progress.cycles, p.cycles);
        add(&self.progress.failures, p.failures);
        add64(&self.progress.bytes, p.bytes);
    }

    fn fail(&mut self, i: usize, why: String) {
        self.out.failure_count += 1;
        self.pending.failures += 1;
        if self.out.failures.len() < KEEP_FAILURES {
            let group = self.conns.get(i).map(|c| c.group);
            self.out
                .failures
                .push(format!("client (group {group:?}): {why}"));
        }
        if i < self.conns.len() {
            self.close(i, false);
        }
    }

    fn open_connections(&mut self) {
        while self.inflight < INFLIGHT {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            let conn = &mut self.conns[i];
            conn.tries += 1;
            conn.offset = self.plan.groups[conn.group as usize].start;
            match sys::connect_start(&self.plan.addr) {
                Ok((fd, now)) => {
                    let raw = fd.as_raw_fd();
                    conn.fd = Some(fd);
                    conn.state = State::Connecting;
                    let token = conn.token(i);
                    if let Err(e) = self.epoll.add(raw, EPOLLOUT, token) {
                        self.fail(i, format!("epoll add: {e}"));
                        continue;
                    }
                    self.inflight += 1;
                    if now {
                        self.connected(i);
                    }
                }
                Err(e) => self.connect_failed(i, e),
            }
        }
    }

    fn connect_failed(&mut self, i: usize, e: io::Error) {
        self.out.connect_errors += 1;
        let churn = matches!(self.role(i), Role::Churn { .. });
        self.close(i, true);
        if churn || self.conns[i].tries < CONNECT_TRIES {
            self.conns[i].state = State::New;
            self.queue.push_back(i);
        } else {
            self.fail(i, format!("connect: {e}"));
        }
    }

    fn connected(&mut self, i: usize) {
        self.inflight -= 1;
        let role = self.role(i);
        let conn = &mut self.conns[i];
        let Some(fd) = conn.fd.as_ref().map(AsFd::as_fd) else {
            return;
        };
        let _ = sys::set_nodelay(fd);
        let fd = fd.as_raw_fd();
        // Stalled clients ask for nothing; the kernel still reports a hang-up or an error.
        let interest = if role == Role::Stalled { 0 } else { EPOLLIN };
        let token = conn.token(i);
        if let Err(e) = self.epoll.modify(fd, interest, token) {
            self.fail(i, format!("epoll modify: {e}"));
            return;
        }
        conn.state = State::Ready;
        if !matches!(role, Role::Churn { .. }) {
            self.pending.connected += 1;
        }
        if !self.plan.hold_headers || self.headers_released {
            self.send_header(i);
        }
    }

    fn send_header(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let Some(fd) = conn.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let group = &self.plan.groups[conn.group as usize];
        let header = group.header.as_bytes();
        if group.http {
            conn.head = Head::Reading {
                matched: 0,
                checked: false,
            };
        }
        conn.start_ns = sys::monotonic_ns();
        conn.state = State::Streaming;
        self.out.first_start_ns = self.out.first_start_ns.min(conn.start_ns);
        // A fresh socket's buffer always has room for a few bytes.
        match sys::send(fd, header) {
            Ok(n) if n == header.len() => {}
            Ok(n) => self.fail(i, format!("header: sent {n} of {} bytes", header.len())),
            Err(e) => self.fail(i, format!("sending header: {e}")),
        }
    }

    fn handle(&mut self, i: usize, ev: u32) {
        match self.conns[i].state {
            State::Connecting => {
                let Some(fd) = self.conns[i].fd.as_ref().map(AsRawFd::as_raw_fd) else {
                    return;
                };
                match sys::socket_error(fd) {
                    Ok(None) if ev & EPOLLOUT != 0 => self.connected(i),
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        self.inflight -= 1;
                        self.connect_failed(i, e);
                    }
                }
            }
            State::Ready | State::Streaming => {
                if self.role(i) == Role::Stalled {
                    if ev & (EPOLLHUP | EPOLLERR) != 0 {
                        self.out.dropped += 1;
                        self.close(i, true);
                    }
                    return;
                }
                if ev & (EPOLLIN | EPOLLHUP | EPOLLERR) != 0 {
                    self.readable(i);
                }
            }
            State::New | State::Done => {}
        }
    }

    fn readable(&mut self, i: usize) {
        let role = self.role(i);
        let Some(fd) = self.conns[i].fd.as_ref().map(AsFd::as_fd) else {
            return;
        };
        let in_head = self.conns[i].head != Head::Done;
        let copy = self.plan.verify || role == Role::Live || in_head;
        let got = if copy {
            tailsrv::sys::recv_now(fd, &mut self.buf)
        } else {
            sys::recv_discard(fd.as_raw_fd(), DISCARD_MAX)
        };
        let n = match got {
            Ok(0) => {
                let at = self.conns[i].offset;
                self.fail(
                    i,
                    format!("the server closed the connection at offset {at}"),
                );
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                let at = self.conns[i].offset;
                self.fail(i, format!("receiving at offset {at}: {e}"));
                return;
            }
        };
        let now = sys::monotonic_ns();
        // An HTTP client's response head comes first; the file's bytes follow it.
        let mut data = 0..n;
        if in_head {
            match self.conns[i].head.feed(&self.buf[..n]) {
                Ok(Some(at)) => data = at..n,
                Ok(None) => return,
                Err(e) => {
                    self.fail(i, e);
                    return;
                }
            }
        }
        let n = data.len();
        let from = self.conns[i].offset;
        if copy {
            if let Err(e) = self.view.check(from, &self.buf[data]) {
                self.fail(i, e);
                return;
            }
        }
        let to = from + n as u64;
        self.conns[i].offset = to;
        self.out.bytes += n as u64;
        self.pending.bytes += n as u64;
        let start = self.plan.groups[self.conns[i].group as usize].start;
        match role {
            Role::CatchUp { len } => {
                let end = start + len;
                if to > end {
                    self.fail(
                        i,
                        format!(
                            "received {} bytes, more than the {len} asked for",
                            to - start
                        ),
                    );
                } else if to == end {
                    let took = now - self.conns[i].start_ns;
                    self.out.completions_ns.push(took);
                    self.out.last_done_ns = self.out.last_done_ns.max(now);
                    self.pending.finished += 1;
                    self.close(i, true);
                }
            }
            Role::Live => self.records(i, from, to, now),
            Role::Idle | Role::Stalled => {}
            Role::Churn { len, fin } => {
                if to >= start + len {
                    self.pending.cycles += 1;
                    self.out.cycles += 1;
                    self.close(i, !fin);
                    if self.progress.phase.load(Ordering::Relaxed) != STOP {
                        self.conns[i].state = State::New;
                        self.conns[i].tries = 0;
                        self.queue.push_back(i);
                    }
                }
            }
        }
    }

    /// Accounts for the records completed by the bytes `[from, to)` just received.
    fn records(&mut self, i: usize, from: u64, to: u64, now: u64) {
        let base = self.plan.record_base;
        if from < base {
            return;
        }
        // Record k is complete once byte base + (k + 1) * RECORD - 1 has arrived.
        let first = (from - base) / RECORD as u64;
        let end = (to - base) / RECORD as u64;
        for k in first..end {
            let at = base + k * RECORD as u64;
            // These bytes were just compared with the file, so the file has them.
            let Some(rec) = self.view.bytes(at, RECORD) else {
                continue;
            };
            let (stamp, kind) = data::parse_record(rec);
            match kind {
                Kind::Warmup => {
                    if !self.conns[i].warm {
                        self.conns[i].warm = true;
                        self.pending.warmed += 1;
                    }
                }
                Kind::Timed => {
                    let _ = self.out.latency.record(now.saturating_sub(stamp).max(1));
                    self.out.records += 1;
                    self.conns[i].records += 1;
                    self.pending.delivered += 1;
                }
            }
        }
    }

    /// Closes a client's socket: with a reset if `abortive`, else with a FIN.
    fn close(&mut self, i: usize, abortive: bool) {
        let conn = &mut self.conns[i];
        if let Some(fd) = conn.fd.take() {
            if abortive {
                let _ = tailsrv::sys::set_linger_zero(fd.as_fd());
            }
        }
        conn.gen = conn.gen.wrapping_add(1);
        conn.state = State::Done;
    }
}
