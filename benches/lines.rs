//! lines: what a line-counted start costs. tailsrv on a 1 GiB log answers
//! `HEAD /stream?lines=N` (the start found, nothing sent) and `GET /stream?lines=N` (the
//! lines read by the client), with the file hot in the page cache and cold (its pages
//! dropped with `posix_fadvise(DONTNEED)`, this file only); GNU `tail -n N FILE`, which also
//! reads backwards from the end, on the same file in the same state is the reference.
//! And the pathological case: the last 200 MiB one line, where the scan stops at its 64 MiB
//! bound.
//!
//! ```text
//!   cargo bench --bench lines -- [--reps N] [--size BYTES] [--counts N,N] [--dir DIR]
//!                                 [--server-cpus LIST] [--server-bin PATH] [--out DIR]
//! ```
//!
//! Results: a Markdown table on stdout and `benches/results/lines.csv`; method and numbers
//! in docs/benchmarks.md.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Options {
    reps: usize,
    size: u64,
    dir: PathBuf,
    server_cpus: Option<String>,
    counts: Vec<u64>,
    server_bin: PathBuf,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        reps: 7,
        size: 1 << 30,
        dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/lines-bench")),
        server_cpus: None,
        counts: vec![10, 1000, 100_000],
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_tailsrv")),
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--reps" => o.reps = value().parse().expect("--reps N"),
            "--size" => o.size = value().parse().expect("--size BYTES"),
            "--dir" => o.dir = PathBuf::from(value()),
            "--server-cpus" => o.server_cpus = Some(value()),
            "--server-bin" => o.server_bin = PathBuf::from(value()),
            "--out" => o.out = PathBuf::from(value()),
            "--counts" => {
                o.counts = value()
                    .split(',')
                    .map(|n| n.parse().expect("--counts N,N"))
                    .collect()
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// A deterministic log: lines of 40 to 200 bytes, about 120 on average.
fn write_log(path: &Path, size: u64, last_line: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(4 << 20, File::create(path)?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut written = 0u64;
    let mut line = Vec::with_capacity(256);
    let body = size
        .checked_sub(last_line)
        .expect("the long line fits in the file");
    while written < body {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (40 + state % 161).min(body - written) as usize;
        line.clear();
        line.extend_from_slice(format!("{written:012} ").as_bytes());
        while line.len() + 1 < len {
            line.push(b'a' + (line.len() % 26) as u8);
        }
        line.truncate(len.saturating_sub(1));
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
    }
    let block = vec![b'x'; MIB as usize];
    let mut left = last_line;
    while left > 0 {
        let n = left.min(MIB) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    out.get_ref().sync_all()
}

/// Drops the file's pages from the page cache (this file only), after syncing it.
fn make_cold(path: &Path) {
    let f = File::open(path).expect("opening the log");
    // SAFETY: plain syscall on a descriptor we own; a range of 0 means the whole file.
    let ret = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(ret, 0, "posix_fadvise");
}

/// Reads the whole file once, so that its pages are cached.
fn make_hot(path: &Path) {
    let mut f = File::open(path).expect("opening the log");
    let mut buf = vec![0u8; 4 << 20];
    while f.read(&mut buf).expect("reading the log") > 0 {}
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(bin: &Path, file: &Path, cpus: Option<&str>) -> Server {
        let mut cmd = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.args(["-c", list]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["-p", "0", "-b", "127.0.0.1"])
            .arg(file)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting tailsrv");
        let mut err = child.stderr.take().expect("stderr");
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        let port = loop {
            let n = err.read(&mut buf).expect("reading tailsrv's log");
            assert!(n > 0, "tailsrv exited: {}", String::from_utf8_lossy(&log));
            log.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&log);
            if let Some(line) = text.lines().find(|l| l.contains(" listening ")) {
                let port = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("port="))
                    .and_then(|p| p.parse().ok())
                    .expect("port= in the listening line");
                break port;
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || while matches!(err.read(&mut buf), Ok(n) if n > 0) {});
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a request for the last `n` lines; returns the response head's `Tailsrv-Start` and
/// `Tailsrv-Size`, with the stream positioned at the body.
fn request(port: u16, method: &str, n: u64) -> (TcpStream, u64, u64, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} /stream?lines={n} HTTP/1.1\r\nHost: bench\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let k = s.read(&mut buf).expect("reading the response head");
        assert!(k > 0, "closed before the head");
        got.extend_from_slice(&buf[..k]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let field = |name: &str| -> u64 {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    let rest = got[end..].to_vec();
    (s, field("Tailsrv-Start: "), field("Tailsrv-Size: "), rest)
}

/// `HEAD /stream?lines=n`: the time to the response head, and the start it names.
fn head_time(port: u16, n: u64) -> (Duration, u64) {
    let t = Instant::now();
    let (_s, start, _, _) = request(port, "HEAD", n);
    (t.elapsed(), start)
}

/// `GET /stream?lines=n`: the time until the client holds all the lines.
fn get_time(port: u16, n: u64) -> Duration {
    let t = Instant::now();
    let (mut s, start, size, mut body) = request(port, "GET", n);
    let want = (size - start) as usize;
    let mut buf = vec![0u8; 1 << 20];
    while body.len() < want {
        let k = s.read(&mut buf).expect("reading the body");
        assert!(k > 0, "closed after {} of {want} bytes", body.len());
        body.extend_from_slice(&buf[..k]);
    }
    t.elapsed()
}

/// GNU `tail -n n FILE > /dev/null`: the reference.
fn tail_time(file: &Path, n: u64) -> Duration {
    let t = Instant::now();
    let status = Command::new("tail")
        .args(["-n", &n.to_string()])
        .arg(file)
        .stdout(Stdio::null())
        .status()
        .expect("running tail");
    assert!(status.success());
    t.elapsed()
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let o = options();
    fs::create_dir_all(&o.dir).expect("making the bench directory");
    let normal = o.dir.join("log-1g.log");
    let long = o.dir.join("long-line.log");
    // The long line: 200 MiB, or three quarters of a smaller file.
    let long_line = (200 * MIB).min(o.size / 4 * 3);
    for (path, last) in [(&normal, 0), (&long, long_line)] {
        if fs::metadata(path).map(|m| m.len()).ok() != Some(o.size) {
            eprintln!("lines: writing {} ({} MiB)", path.display(), o.size / MIB);
            write_log(path, o.size, last).expect("writing the log");
        }
    }
    let cpus = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "lines: {} MiB files, {} reps, tailsrv pinned to {:?}; load average at start: {}",
        o.size / MIB,
        o.reps,
        o.server_cpus,
        cpus.trim()
    );
    let mut csv =
        String::from("file,cache,lines,what,median_ms,min_ms,max_ms,start,ratio_to_tail\n");
    println!("\n| file | cache | lines | HEAD ms (start found) | GET ms (lines received) | `tail -n` ms | GET vs tail | start |");
    println!("|---|---|---|---|---|---|---|---|");
    let long_name = format!("last {} MiB one line", long_line / MIB);
    let names = [("log", &normal), (long_name.as_str(), &long)];
    for (name, path) in names {
        let server = Server::start(&o.server_bin, path, o.server_cpus.as_deref());
        let counts: &[u64] = if name == "log" { &o.counts } else { &[2] };
        for cache in ["hot", "cold"] {
            for &n in counts {
                let (mut heads, mut gets, mut tails) = (Vec::new(), Vec::new(), Vec::new());
                let mut start = 0;
                for _ in 0..o.reps {
                    let prepare = || {
                        if cache == "hot" {
                            make_hot(path)
                        } else {
                            make_cold(path)
                        }
                    };
                    prepare();
                    let (t, s) = head_time(server.port, n);
                    heads.push(t.as_secs_f64() * 1e3);
                    start = s;
                    prepare();
                    gets.push(get_time(server.port, n).as_secs_f64() * 1e3);
                    prepare();
                    tails.push(tail_time(path, n).as_secs_f64() * 1e3);
                }
                let (h, g, t) = (median(heads), median(gets), median(tails));
                println!(
                    "| {name} | {cache} | {n} | {:.2} [{:.2}–{:.2}] | {:.2} [{:.2}–{:.2}] | {:.2} [{:.2}–{:.2}] | ×{:.2} | {:.1} KiB before the end |",
                    h.0, h.1, h.2, g.0, g.1, g.2, t.0, t.1, t.2, g.0 / t.0,
                    (o.size - start) as f64 / 1024.0
                );
                for (what, m) in [("head", h), ("get", g), ("tail", t)] {
                    csv.push_str(&format!(
                        "{name},{cache},{n},{what},{:.3},{:.3},{:.3},{start},{:.3}\n",
                        m.0,
                        m.1,
                        m.2,
                        m.0 / t.0
                    ));
                }
            }
        }
    }
    fs::create_dir_all(&o.out).expect("results directory");
    fs::write(o.out.join("lines.csv"), csv).expect("writing lines.csv");
}
