//! What every run shares: the files it serves, a server started on one with the view its
//! clients compare against, the clients' plan, CPU readings around the measured part, and a
//! live run's warm-up and paced appends.

use super::Bench;
use crate::data::{self, Content, FileView, Kind};
use crate::engine::{Engine, Group, Outcome, Plan};
use crate::report::Sample;
use crate::server::{MachineCpu, MachineUse, Server, Target, Usage};
use crate::sys;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Files the runs serve: made in a temp directory for the harness's own servers, appended
/// to the given file for an external one.
pub(super) struct Workspace {
    dir: PathBuf,
    content: Content,
    catchup: HashMap<u64, PathBuf>,
    last_fresh: Option<PathBuf>,
    made: u64,
}

impl Workspace {
    pub(super) fn new() -> io::Result<Workspace> {
        let dir = std::env::temp_dir().join(format!("tailsrv-fanout-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Workspace {
            dir,
            content: Content::new(),
            catchup: HashMap::new(),
            last_fresh: None,
            made: 0,
        })
    }

    /// A file holding `len` bytes of content from the returned offset on.
    fn catchup_file(&mut self, target: &Target, len: u64) -> io::Result<(PathBuf, u64)> {
        if let Target::External { file, .. } = target {
            return self.append_to(file, len);
        }
        if let Some(p) = self.catchup.get(&len) {
            return Ok((p.clone(), 0));
        }
        for (_, old) in self.catchup.drain() {
            let _ = std::fs::remove_file(old);
        }
        let path = self.dir.join(format!("catchup-{len}.bin"));
        self.content.create(&path, len)?;
        self.catchup.insert(len, path.clone());
        Ok((path, 0))
    }

    /// A file of its own for one run, `prefix` bytes long; returns it and its size.
    fn fresh_file(&mut self, target: &Target, prefix: u64) -> io::Result<(PathBuf, u64)> {
        if let Target::External { file, .. } = target {
            let (path, base) = self.append_to(file, prefix)?;
            return Ok((path, base + prefix));
        }
        if let Some(old) = self.last_fresh.take() {
            let _ = std::fs::remove_file(old);
        }
        self.made += 1;
        let path = self.dir.join(format!("run-{}.log", self.made));
        self.content.create(&path, prefix)?;
        self.last_fresh = Some(path.clone());
        Ok((path, prefix))
    }

    fn append_to(&self, file: &Path, len: u64) -> io::Result<(PathBuf, u64)> {
        let mut f = OpenOptions::new().append(true).open(file)?;
        let base = f.metadata()?.len();
        self.content.append(&mut f, len)?;
        Ok((file.to_owned(), base))
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The file a run serves.
pub(super) enum FileSpec {
    /// The shared hot catch-up file: `len` bytes of content every client reads.
    CatchUp { len: u64 },
    /// A file of the run's own, `prefix` bytes long, that the run may append to.
    Fresh { prefix: u64 },
}

/// A server started on a file for one run, and the view its clients compare against.
pub(super) struct Stage {
    pub path: PathBuf,
    /// Catch-up: where the content starts. Fresh: where the file ends.
    pub offset: u64,
    pub server: Server,
    pub view: Arc<FileView>,
}

impl Bench {
    /// Checks there are descriptors for `clients`, prepares the file, starts the target on
    /// it and maps it.
    pub(super) fn stage(
        &mut self,
        target: &Target,
        clients: usize,
        file: FileSpec,
    ) -> Result<Stage, String> {
        self.check_fds(clients)?;
        let (path, offset) = match file {
            FileSpec::CatchUp { len } => self.work.catchup_file(target, len),
            FileSpec::Fresh { prefix } => self.work.fresh_file(target, prefix),
        }
        .map_err(|e| format!("preparing the file: {e}"))?;
        let server = Server::start(target, &path)?;
        let view = map_view(&path)?;
        Ok(Stage {
            path,
            offset,
            server,
            view,
        })
    }

    /// A plan for these groups against `server`: clients verify every byte, records count
    /// from offset 0, headers go out as soon as each client connects (as HTTP requests for
    /// the `tailsrv-http` target). Runs change the rest.
    pub(super) fn plan(&self, server: &Server, groups: Vec<Group>) -> Plan {
        let groups = if server.http() {
            groups.into_iter().map(Group::over_http).collect()
        } else {
            groups
        };
        Plan {
            addr: server.addr,
            threads: self.s.threads,
            groups,
            verify: true,
            record_base: 0,
            hold_headers: false,
        }
    }
}

/// One reading of the server's, this process's and the machine's CPU time.
pub(super) struct Snapshot {
    server: Option<Usage>,
    generator_cpu_s: f64,
    machine: Option<MachineCpu>,
}

/// CPU spent between two [`Snapshot`]s.
pub(super) struct Cost {
    /// `None` for an external server without `--pid`.
    pub server_cpu_s: Option<f64>,
    /// This process: the clients and the appender.
    pub generator_cpu_s: f64,
    /// The whole machine's use; `None` without /proc/stat.
    pub machine: Option<MachineUse>,
}

impl Snapshot {
    pub(super) fn take(server: &Server) -> Snapshot {
        Snapshot {
            server: server.usage(),
            generator_cpu_s: sys::self_cpu_secs(),
            machine: MachineCpu::read(),
        }
    }

    pub(super) fn until(self, later: Snapshot) -> Cost {
        Cost {
            server_cpu_s: self
                .server
                .zip(later.server)
                .map(|(a, b)| b.cpu_s - a.cpu_s),
            generator_cpu_s: later.generator_cpu_s - self.generator_cpu_s,
            machine: self.machine.zip(later.machine).map(|(a, b)| a.until(b)),
        }
    }
}

/// Appends the engine's failures to the sample's.
pub(super) fn absorb<F>(sample: &mut Sample<F>, out: &Outcome) {
    sample.failures.extend(out.failures.iter().cloned());
    if out.failure_count > out.failures.len() {
        sample.failures.push(format!(
            "and {} more client failures",
            out.failure_count - out.failures.len()
        ));
    }
}

/// Maps the file the clients compare what they receive against.
pub(super) fn map_view(path: &Path) -> Result<Arc<FileView>, String> {
    FileView::open(path)
        .map(Arc::new)
        .map_err(|e| format!("mapping {}: {e}", path.display()))
}

/// Starts the client engine on a plan.
pub(super) fn start_clients(plan: Plan, view: Arc<FileView>) -> Result<Engine, String> {
    Engine::start(plan, view).map_err(|e| format!("starting the clients: {e}"))
}

/// How long warm-up may take before a live run is declared failed.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Warm-up records written after every client has seen one, at the measured rate.
const EXTRA_WARMUPS: usize = 5;

/// Appends one record, with the error as the runs report it.
pub(super) fn append_record(writer: &mut File, seq: u64, kind: Kind) -> Result<(), String> {
    data::append_record(writer, seq, kind).map_err(|e| format!("appending a record: {e}"))
}

/// Warms a live run up: appends warm-up records until `warmed()` holds, calling `wait()`
/// (which returns when the clients are warm or after a short while) after each, then
/// [`EXTRA_WARMUPS`] more `interval` apart. Before each record `give_up(timed_out)` may end
/// the run with its reason; `timed_out` says [`WARMUP_TIMEOUT`] has passed.
pub(super) fn warm_up(
    writer: &mut File,
    interval: Duration,
    warmed: impl Fn() -> bool,
    give_up: impl Fn(bool) -> Option<String>,
    wait: impl Fn(),
) -> Result<(), String> {
    let deadline = Instant::now() + WARMUP_TIMEOUT;
    let mut seq = 0;
    while !warmed() {
        if let Some(reason) = give_up(Instant::now() > deadline) {
            return Err(reason);
        }
        append_record(writer, seq, Kind::Warmup)?;
        seq += 1;
        wait();
    }
    for _ in 0..EXTRA_WARMUPS {
        append_record(writer, seq, Kind::Warmup)?;
        seq += 1;
        sleep(interval);
    }
    Ok(())
}

/// Appends `records` timed records, record `i` due `i` intervals after the returned start.
pub(super) fn paced_records(
    writer: &mut File,
    records: u64,
    interval: Duration,
) -> Result<Instant, String> {
    let t0 = Instant::now();
    for i in 0..records {
        let due = t0 + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            sleep(due - now);
        }
        append_record(writer, i, Kind::Timed)?;
    }
    Ok(t0)
}
