//! Soak: for a set time, hundreds of client slots connect with random headers, stay a random
//! time, read at a random pace and leave in a random way, while a writer appends records of
//! random sizes at random intervals. Every byte a client receives is compared with the file;
//! at the end the server's descriptors must be back at their baseline and its memory flat.
//!
//! Why threads and blocking sockets here, not the epoll engine? The soak measures no speed:
//! it needs each client to do something different (its own header, pace and ending), which
//! is plainest as a loop per slot; a few hundred mostly sleeping threads are cheap.

use super::setup::FileSpec;
use super::{mib, Bench, Point, MIB};
use crate::data::Content;
use crate::report::{figures, median, Results, Sample, Table};
use crate::server::Target;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

/// The longest a client stays.
const MAX_LIFE_MS: u64 = 3000;
/// The biggest record the writer appends.
const MAX_RECORD: u64 = 256 << 10;
/// How far beyond the end a client may ask to start.
const MAX_BEYOND: u64 = 64 << 10;
/// Bytes a `-n` client receives before its start is worked out from them.
const RESOLVE_AT: usize = 64;
/// How long the server may take, after the last client left, to give back its descriptors
/// (a client that left with a FIN is found gone a second after the next send to it).
const FDS_BACK: Duration = Duration::from_secs(15);
/// Failure messages kept (all are counted).
const KEEP_FAILURES: usize = 8;

figures! {
    /// One soak run.
    SoakFigures {
        secs,
        clients_served,
        bytes_verified,
        mismatches,
        /// `-n` clients whose first bytes matched the file at more than one candidate start
        /// (their bytes are not counted as verified).
        ambiguous,
        /// Clients the server closed while they were still reading.
        closed_early,
        connect_errors,
        appended_mib,
        fds_base,
        fds_end,
        rss_kib_early,
        rss_kib_end,
    }
}

/// The soak scenario against tailsrv (the reference server is a yardstick for speed, and
/// this is no speed test).
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let targets: Vec<Target> = targets
        .iter()
        .filter(|t| !t.is_reference())
        .cloned()
        .collect();
    let r = b.soak(&targets);
    b.finish("soak", "soak", &r, table(&r))
}

/// What the slots add up, shared by their threads.
#[derive(Default)]
struct Tally {
    served: AtomicU64,
    bytes: AtomicU64,
    mismatches: AtomicU64,
    ambiguous: AtomicU64,
    closed_early: AtomicU64,
    connect_errors: AtomicU64,
    /// The furthest start beyond the end any client asked for.
    furthest: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.failures.lock() {
            if f.len() < KEEP_FAILURES {
                f.push(what);
            }
        }
    }
}

/// splitmix64: each slot's own reproducible randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Where a client's bytes start.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// `n` or `+n`.
    At(u64),
    /// `-n`, sent when the file was at least `before` bytes long.
    FromEnd { n: u64, before: u64 },
}

/// What the slot threads share.
struct Shared {
    addr: SocketAddr,
    file: File,
    size: AtomicU64,
    stop: AtomicBool,
    tally: Tally,
}

impl Bench {
    fn soak(&mut self, targets: &[Target]) -> Results<SoakFigures> {
        let mut r = Results::default();
        let point = Point {
            clients: self.s.soak_slots,
            variant: format!("secs={}", self.s.soak_secs),
            reps: 1,
            verify: true,
        };
        self.run_point(
            &mut r,
            "soak",
            point,
            targets,
            |b, t, s| b.soak_once(t, s),
            |f| {
                format!(
                    "{} clients, {} MiB verified, {} mismatches, fds {} -> {}, RSS {} -> {} KiB",
                    f.clients_served.unwrap_or(0.0),
                    (f.bytes_verified.unwrap_or(0.0) / MIB as f64).round(),
                    f.mismatches.unwrap_or(f64::NAN),
                    f.fds_base.unwrap_or(f64::NAN),
                    f.fds_end.unwrap_or(f64::NAN),
                    f.rss_kib_early.unwrap_or(f64::NAN),
                    f.rss_kib_end.unwrap_or(f64::NAN),
                )
            },
        );
        r
    }

    fn soak_once(&mut self, target: &Target, s: &mut Sample<SoakFigures>) -> Result<(), String> {
        let slots = self.s.soak_slots;
        let secs = self.s.soak_secs;
        let mut st = self.stage(target, slots, FileSpec::Fresh { prefix: MIB })?;
        sleep(self.s.settle);
        let base = st.server.usage();
        let base_kinds = st.server.pid.map(crate::server::fd_kinds_of);
        let file =
            File::open(&st.path).map_err(|e| format!("opening {}: {e}", st.path.display()))?;
        let shared = Arc::new(Shared {
            addr: st.server.addr,
            file,
            size: AtomicU64::new(st.offset),
            stop: AtomicBool::new(false),
            tally: Tally::default(),
        });
        let mut out = OpenOptions::new()
            .append(true)
            .open(&st.path)
            .map_err(|e| format!("opening {}: {e}", st.path.display()))?;
        let writer = {
            let shared = shared.clone();
            thread::spawn(move || -> Result<(), String> {
                let content = Content::new();
                let mut rng = Rng(0x50a6);
                while !shared.stop.load(Ordering::Relaxed) {
                    let len = match rng.below(20) {
                        0 => 1 + rng.below(MAX_RECORD),
                        1..=4 => 1 + rng.below(8 << 10),
                        _ => 1 + rng.below(512),
                    };
                    content
                        .append(&mut out, len)
                        .map_err(|e| format!("appending: {e}"))?;
                    shared.size.fetch_add(len, Ordering::Release);
                    sleep(Duration::from_micros(rng.below(10_000)));
                }
                Ok(())
            })
        };
        let started = Instant::now();
        let workers: Vec<_> = (0..slots as u64)
            .map(|i| {
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut rng = Rng(0x50a7 + i * 7919);
                    while !shared.stop.load(Ordering::Relaxed) {
                        one_client(&shared, &mut rng);
                    }
                })
            })
            .collect();

        // Memory once the slots are all busy, against memory at the end.
        let early_at = Duration::from_secs_f64(secs / 4.0);
        while started.elapsed() < early_at {
            sleep(Duration::from_millis(100));
        }
        let early = st.server.usage();
        let run_for = Duration::from_secs_f64(secs);
        while started.elapsed() < run_for {
            sleep(Duration::from_millis(100));
        }
        shared.stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| "a soak slot panicked".to_string())?;
        }
        writer
            .join()
            .map_err(|_| "the soak writer panicked".to_string())??;

        // Clients that left with a FIN before the file reached their start look like
        // half-closed ones until there is something to send them: grow past every start.
        let size = shared.size.load(Ordering::Acquire);
        let furthest = shared.tally.furthest.load(Ordering::Relaxed);
        let more = furthest.saturating_sub(size) + 1;
        let mut out = OpenOptions::new()
            .append(true)
            .open(&st.path)
            .map_err(|e| format!("opening {}: {e}", st.path.display()))?;
        Content::new()
            .append(&mut out, more)
            .map_err(|e| format!("appending: {e}"))?;
        let deadline = Instant::now() + FDS_BACK;
        let mut end = st.server.usage();
        while let (Some(b), Some(e)) = (base, end) {
            if e.fds <= b.fds || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(200));
            end = st.server.usage();
        }
        let end_kinds = st.server.pid.map(crate::server::fd_kinds_of);
        st.server.stop()?;

        let t = &shared.tally;
        let f = &mut s.figures;
        let get = |c: &AtomicU64| Some(c.load(Ordering::Relaxed) as f64);
        f.secs = Some(started.elapsed().as_secs_f64());
        f.clients_served = get(&t.served);
        f.bytes_verified = get(&t.bytes);
        f.mismatches = get(&t.mismatches);
        f.ambiguous = get(&t.ambiguous);
        f.closed_early = get(&t.closed_early);
        f.connect_errors = get(&t.connect_errors);
        f.appended_mib = Some((size + more - st.offset) as f64 / MIB as f64);
        f.fds_base = base.map(|u| u.fds);
        f.fds_end = end.map(|u| u.fds);
        f.rss_kib_early = early.map(|u| u.rss_kib);
        f.rss_kib_end = end.map(|u| u.rss_kib);
        if let Ok(failures) = t.failures.lock() {
            s.failures.extend(failures.iter().cloned());
        }
        for (what, c) in [
            ("mismatching clients", &t.mismatches),
            ("clients closed early", &t.closed_early),
        ] {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                s.failures.push(format!("{n} {what}"));
            }
        }
        if let (Some(b), Some(e)) = (base, end) {
            if e.fds > b.fds {
                s.failures.push(format!(
                    "descriptors not back: {} at the start, {} at the end (by kind: {:?} -> {:?})",
                    b.fds, e.fds, base_kinds, end_kinds
                ));
            }
        }
        // Flat: at the end, with every client gone, no more than early on with every slot
        // busy, give or take the allocator's slack.
        if let (Some(a), Some(e)) = (early, end) {
            if e.rss_kib > a.rss_kib * 1.25 + 8192.0 {
                s.failures.push(format!(
                    "memory grew: {:.0} KiB a quarter in, {:.0} KiB at the end",
                    a.rss_kib, e.rss_kib
                ));
            }
        }
        if t.served.load(Ordering::Relaxed) == 0 {
            s.failures.push("no client was served".into());
        }
        Ok(())
    }
}

/// How a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Fast,
    Slow,
    Never,
}

/// How a client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Fin,
    Reset,
    /// Half-closes right after its header, keeps reading, then closes.
    HalfClose,
}

/// One client's life: connect, send a random header (sometimes in two pieces), read at its
/// pace for its lifetime checking every byte, leave its way.
fn one_client(shared: &Shared, rng: &mut Rng) {
    let t = &shared.tally;
    let now = shared.size.load(Ordering::Acquire);
    let (header, start) = match rng.below(5) {
        0 => {
            let n = rng.below(now + 1);
            (format!("{n}\n"), Start::At(n))
        }
        1 => {
            let n = rng.below(now + 1);
            (format!("+{n}\n"), Start::At(n))
        }
        2 => {
            let n = now + rng.below(MAX_BEYOND);
            t.furthest.fetch_max(n, Ordering::Relaxed);
            (format!("{n}\n"), Start::At(n))
        }
        3 => {
            let n = rng.below(now.min(4 * MIB) + 1);
            (format!("-{n}\n"), Start::FromEnd { n, before: now })
        }
        _ => ("-0\n".to_string(), Start::FromEnd { n: 0, before: now }),
    };
    let pace = match rng.below(6) {
        0..=2 => Pace::Fast,
        3 | 4 => Pace::Slow,
        _ => Pace::Never,
    };
    let leave = match rng.below(3) {
        0 => Leave::Fin,
        1 => Leave::Reset,
        _ => Leave::HalfClose,
    };
    let life = Duration::from_millis(10 + rng.below(MAX_LIFE_MS));
    let mut stream = match TcpStream::connect(shared.addr) {
        Ok(s) => s,
        Err(_) => {
            t.connect_errors.fetch_add(1, Ordering::Relaxed);
            sleep(Duration::from_millis(10));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let bytes = header.as_bytes();
    let cut = if rng.below(4) == 0 {
        rng.below(bytes.len() as u64) as usize
    } else {
        bytes.len()
    };
    let sent = stream.write_all(&bytes[..cut]).and_then(|_| {
        if cut < bytes.len() {
            sleep(Duration::from_millis(rng.below(20)));
        }
        stream.write_all(&bytes[cut..])
    });
    if sent.is_err() {
        t.fail(
            &t.closed_early,
            format!("{header:?}: the server closed before the header"),
        );
        return;
    }
    if leave == Leave::HalfClose {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut check = Check {
        start,
        next: match start {
            Start::At(n) => Some(n),
            Start::FromEnd { .. } => None,
        },
        pending: Vec::new(),
        header: &header,
        skip: false,
    };
    let deadline = Instant::now() + life;
    let mut buf = vec![0u8; if pace == Pace::Slow { 1024 } else { 64 << 10 }];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if pace == Pace::Never {
            sleep(left.min(Duration::from_millis(100)));
            continue;
        }
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(100))));
        match stream.read(&mut buf) {
            Ok(0) => {
                t.fail(&t.closed_early, format!("{header:?}: FIN from the server"));
                return;
            }
            Ok(n) => check.feed(shared, &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                t.fail(&t.closed_early, format!("{header:?}: {e}"));
                return;
            }
        }
        if pace == Pace::Slow {
            sleep(Duration::from_millis(5 + rng.below(45)));
        }
    }
    check.finish(shared);
    if leave == Leave::Reset {
        let _ = tailsrv::sys::set_linger_zero(stream.as_fd());
    }
    drop(stream);
    t.served.fetch_add(1, Ordering::Relaxed);
}

/// Checks one client's bytes against the file as they come.
struct Check<'a> {
    start: Start,
    /// The file offset of the next byte, once known.
    next: Option<u64>,
    /// A `-n` client's first bytes, until there are enough to find where they start.
    pending: Vec<u8>,
    header: &'a str,
    /// Its start could not be told apart: its bytes are not checked.
    skip: bool,
}

impl Check<'_> {
    fn feed(&mut self, shared: &Shared, data: &[u8]) {
        if self.skip {
            return;
        }
        match self.next {
            Some(at) => self.compare(shared, at, data),
            None => {
                self.pending.extend_from_slice(data);
                if self.pending.len() >= RESOLVE_AT {
                    self.resolve(shared);
                }
            }
        }
    }

    fn finish(&mut self, shared: &Shared) {
        if self.next.is_none() && !self.pending.is_empty() && !self.skip {
            self.resolve(shared);
        }
    }

    fn compare(&mut self, shared: &Shared, at: u64, data: &[u8]) {
        let t = &shared.tally;
        let mut want = vec![0u8; data.len()];
        match shared.file.read_exact_at(&mut want, at) {
            Ok(()) if want == data => {
                t.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                self.next = Some(at + data.len() as u64);
            }
            Ok(()) => {
                let i = want.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
                t.fail(
                    &t.mismatches,
                    format!(
                        "{:?}: byte {} differs from the file",
                        self.header,
                        at + i as u64
                    ),
                );
                self.skip = true;
            }
            Err(e) => {
                t.fail(
                    &t.mismatches,
                    format!(
                        "{:?}: {} bytes at {at} are not in the file: {e}",
                        self.header,
                        data.len()
                    ),
                );
                self.skip = true;
            }
        }
    }

    /// Finds where a `-n` client's bytes start: between `n` before the size when it sent
    /// its header and `n` before the size now (plus a record the writer may not have
    /// counted yet), the one place where the file holds them.
    fn resolve(&mut self, shared: &Shared) {
        let Start::FromEnd { n, before } = self.start else {
            return;
        };
        let t = &shared.tally;
        let lo = before.saturating_sub(n);
        let hi = (shared.size.load(Ordering::Acquire) + MAX_RECORD).saturating_sub(n);
        let len = self.pending.len();
        let mut region = vec![0u8; (hi - lo) as usize + len];
        let got = read_at_most(&shared.file, &mut region, lo);
        region.truncate(got);
        let mut places = region
            .windows(len)
            .enumerate()
            .filter(|(_, w)| *w == self.pending.as_slice())
            .map(|(i, _)| lo + i as u64);
        match (places.next(), places.next()) {
            (Some(at), None) => {
                let pending = std::mem::take(&mut self.pending);
                self.compare(shared, at, &pending);
            }
            (None, _) => {
                t.fail(
                    &t.mismatches,
                    format!(
                        "{:?}: its first {len} bytes are nowhere in {lo}..={hi}",
                        self.header
                    ),
                );
                self.skip = true;
            }
            (Some(_), Some(_)) => {
                t.ambiguous.fetch_add(1, Ordering::Relaxed);
                self.skip = true;
            }
        }
    }
}

/// Reads as much of `buf` as the file holds at `at`.
fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

pub(super) fn table(r: &Results<SoakFigures>) -> Table {
    let mut t = Table::new(&[
        "target",
        "slots",
        "seconds",
        "clients served",
        "MiB verified",
        "mismatches",
        "ambiguous starts",
        "closed early",
        "connect errors",
        "MiB appended",
        "fds: start → end",
        "RSS MiB: a quarter in → end",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |f: fn(&SoakFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                target.clone(),
                n.to_string(),
                median(st(|f| f.secs), 0),
                median(st(|f| f.clients_served), 0),
                median(st(|f| f.bytes_verified.map(|b| b / MIB as f64)), 0),
                median(st(|f| f.mismatches), 0),
                median(st(|f| f.ambiguous), 0),
                median(st(|f| f.closed_early), 0),
                median(st(|f| f.connect_errors), 0),
                median(st(|f| f.appended_mib), 0),
                format!(
                    "{} → {}",
                    median(st(|f| f.fds_base), 0),
                    median(st(|f| f.fds_end), 0)
                ),
                format!(
                    "{} → {}",
                    median(mib(st(|f| f.rss_kib_early)), 1),
                    median(mib(st(|f| f.rss_kib_end)), 1)
                ),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
