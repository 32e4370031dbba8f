//! The servers under test: starting one on a file, reading its resource use from /proc, and
//! stopping it.

use crate::sys;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to print its ` listening ` line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines kept to explain a failure.
const LOG_TAIL: usize = 40;

/// The CPUs (a `taskset -c` list) every server the harness starts is confined to, when the
/// run is pinned (`--server-cpus`).
pub static SERVER_CPUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A server the harness measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The single-thread epoll + sendfile + inotify server built into this bench.
    Reference,
    /// This tree's release binary, with `--shards` if given.
    Tailsrv { bin: PathBuf, shards: Option<u16> },
    /// This tree's release binary, its clients speaking HTTP (`GET /stream`) instead of the
    /// raw header (`--http`): the same server, the same body path, the HTTP face's cost.
    TailsrvHttp { bin: PathBuf, shards: Option<u16> },
    /// Another tailsrv binary (`--baseline-bin`, say the previous commit's), for a before and
    /// after in one run.
    Baseline { bin: PathBuf, shards: Option<u16> },
    /// This tree's binary with extra options (`--variant NAME=ARGS`, e.g. another
    /// `--linger`), measured as target NAME.
    Variant {
        name: String,
        bin: PathBuf,
        shards: Option<u16>,
        args: Vec<String>,
    },
    /// A server someone else started, on `file`; its pid, if given, for resource figures.
    External {
        addr: SocketAddr,
        file: PathBuf,
        pid: Option<u32>,
    },
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Reference => "reference".into(),
            Target::Tailsrv { shards: None, .. } => "tailsrv".into(),
            Target::Baseline { shards: None, .. } => "baseline".into(),
            Target::Baseline {
                shards: Some(n), ..
            } => format!("baseline-s{n}"),
            Target::Tailsrv {
                shards: Some(n), ..
            } => format!("tailsrv-s{n}"),
            Target::TailsrvHttp { shards: None, .. } => "tailsrv-http".into(),
            Target::TailsrvHttp {
                shards: Some(n), ..
            } => format!("tailsrv-http-s{n}"),
            Target::Variant { name, .. } => name.clone(),
            Target::External { .. } => "external".into(),
        }
    }

    /// Whether its clients speak HTTP.
    pub fn http(&self) -> bool {
        matches!(self, Target::TailsrvHttp { .. })
    }

    pub fn is_reference(&self) -> bool {
        *self == Target::Reference
    }
}

/// One reading of a server's resource use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU seconds since it started (10 ms resolution).
    pub cpu_s: f64,
    pub rss_kib: f64,
    pub fds: f64,
    pub threads: f64,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    target: Target,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Whether its clients speak HTTP (the `tailsrv-http` target).
    pub fn http(&self) -> bool {
        self.target.http()
    }

    /// Starts `target` on `file` (or adopts an external server) and waits until it listens.
    pub fn start(target: &Target, file: &Path) -> Result<Server, String> {
        let mut cmd = match target {
            Target::External { addr, pid, .. } => {
                return Ok(Server {
                    addr: *addr,
                    pid: *pid,
                    child: None,
                    target: target.clone(),
                    log: Arc::default(),
                })
            }
            Target::Reference => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("finding the bench executable: {e}"))?;
                let mut cmd = Command::new(exe);
                cmd.arg("--serve-reference").arg(file);
                cmd
            }
            Target::Tailsrv { bin, shards }
            | Target::TailsrvHttp { bin, shards }
            | Target::Baseline { bin, shards } => {
                let mut cmd = Command::new(bin);
                cmd.args(["-p", "0", "--bind", "127.0.0.1"]);
                // Every bench client comes from 127.0.0.1, up to 10,000 of them: tailsrv has
                // no per-peer limit by default. Only a baseline built while it defaulted to
                // 1,024 (its --help then says "[default: 1024") needs it lifted.
                let is_baseline = matches!(target, Target::Baseline { .. });
                if is_baseline && help_mentions(bin, "[default: 1024") {
                    cmd.args(["--max-clients-per-ip", "0"]);
                }
                if let Some(n) = shards {
                    cmd.arg("--shards").arg(n.to_string());
                }
                cmd.arg(file).env("RUST_LOG", "info");
                cmd
            }
            Target::Variant {
                bin, shards, args, ..
            } => {
                let mut cmd = Command::new(bin);
                cmd.args(["-p", "0", "--bind", "127.0.0.1"]).args(args);
                if let Some(n) = shards {
                    cmd.arg("--shards").arg(n.to_string());
                }
                cmd.arg(file).env("RUST_LOG", "info");
                cmd
            }
        };
        if let Some(cpus) = SERVER_CPUS.get() {
            // Pinned mode: the server on its own CPUs, the clients and the writer on others.
            let program = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
            let envs: Vec<_> = cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect();
            cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(program).args(args).envs(envs);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", target.name()))?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (port_tx, port_rx) = mpsc::channel();
        let keep = log.clone();
        // The reader keeps draining the log for the server's whole life, so that a chatty
        // server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" listening ") {
                    if let Some(port) = parse_port(&line) {
                        let _ = port_tx.send(port);
                    }
                }
                let mut log = keep.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() == LOG_TAIL {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: Some(pid),
            child: Some(child),
            target: target.clone(),
            log,
        };
        match port_rx.recv_timeout(READY_TIMEOUT) {
            Ok(port) => {
                server.addr.set_port(port);
                Ok(server)
            }
            Err(_) => {
                let _ = server.stop();
                Err(format!(
                    "{} did not start: {}",
                    target.name(),
                    server.log_tail()
                ))
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Reads the server's CPU time, RSS, open descriptors and threads from /proc.
    pub fn usage(&self) -> Option<Usage> {
        usage_of(self.pid?)
    }

    /// Stops a server this harness started: SIGTERM, then waits for it to exit. tailsrv must
    /// exit with status 0; the reference dies of the signal. Returns what went wrong.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = sys::terminate(child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let fine = match self.target {
                        Target::Tailsrv { .. }
                        | Target::TailsrvHttp { .. }
                        | Target::Baseline { .. }
                        | Target::Variant { .. } => status.success(),
                        _ => true,
                    };
                    return if fine {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} exited with {status} after SIGTERM: {}",
                            self.target.name(),
                            self.log_tail()
                        ))
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                        self.target.name()
                    ));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Reads a process's CPU time, RSS, open descriptors and threads from /proc (any process:
/// a server, or the relay scenario's tailsrv-fetch).
pub fn usage_of(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    Some(Usage {
        cpu_s: ticks / sys::clock_ticks(),
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

fn parse_port(line: &str) -> Option<u16> {
    let at = line.find("port=")? + "port=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The whole machine's CPU time so far, from the first line of /proc/stat (in ticks).
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    softirq: u64,
    total: u64,
}

impl MachineCpu {
    pub fn read() -> Option<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3)? + v.get(4)?;
        Some(MachineCpu {
            busy: total - idle,
            softirq: *v.get(6)?,
            total,
        })
    }

    /// What the machine did between `self` and `later`.
    pub fn until(self, later: MachineCpu) -> MachineUse {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        MachineUse {
            busy: busy / total,
            softirq: later.softirq.saturating_sub(self.softirq) as f64 / total,
            busy_cpu_s: busy / sys::clock_ticks(),
        }
    }
}

/// The whole machine's CPU use over a stretch of time.
#[derive(Debug, Clone, Copy)]
pub struct MachineUse {
    /// Fraction of all CPUs' time busy.
    pub busy: f64,
    /// Fraction of all CPUs' time in softirq.
    pub softirq: f64,
    /// CPU seconds busy, over all CPUs: every process's and the kernel's work, wherever the
    /// kernel charged it.
    pub busy_cpu_s: f64,
}

/// Whether the tailsrv binary at `bin` says `text` in its `--help`.
fn help_mentions(bin: &Path, text: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(text))
}
