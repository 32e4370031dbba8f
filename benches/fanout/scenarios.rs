//! The scenarios: what each run does, what it measures, and the tables it prints.
//!
//! Every point runs `reps` times per target, the targets alternating within each repetition
//! (reference, tailsrv, reference, tailsrv, ...), so slow drifts in the machine's load touch
//! both alike. Each run starts a fresh server process on a fresh (or, for catch-up, a shared
//! hot) file and stops it afterwards.

use crate::data::{self, Content, FileView, Kind};
use crate::engine::{Engine, Group, Outcome, Plan, Progress, Role};
use crate::report::{self, median, spread, times, Results, Sample, Table};
use crate::server::{MachineCpu, Server, Target, Usage};
use crate::sys;
use crate::Scenario;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;
/// How long all clients may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the last append every record must have arrived.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long warm-up may take before the run is declared failed.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Warm-up records written after every client has seen one, at the measured rate.
const EXTRA_WARMUPS: usize = 5;
/// Descriptors the harness itself needs beside its clients.
const FD_MARGIN: usize = 64;
/// Bytes a churn client reads before it disconnects.
const CHURN_READ: u64 = 4096;

pub struct Settings {
    pub threads: usize,
    pub verify: bool,
    pub nofile: u64,
    pub catchup_reps: usize,
    pub reps: usize,
    pub catchup_clients: Vec<usize>,
    pub total: u64,
    pub min_size: u64,
    pub live_clients: Vec<usize>,
    pub rate: f64,
    pub live_secs: f64,
    pub idle_clients: Vec<usize>,
    pub idle_secs: f64,
    /// Live clients in the stalled scenario.
    pub stalled_live: Vec<usize>,
    pub stalled: Vec<usize>,
    pub churn_secs: f64,
    pub churn_clients: usize,
    /// The most connections a `close=fin` churn round makes (each stays half-open on the
    /// server until the file grows, and holds a local port meanwhile).
    pub churn_fin_cap: u64,
    pub shard_catchup_clients: Vec<usize>,
    pub shard_live_clients: Vec<usize>,
    /// Pause for a server to take in what just happened (accepts, closes).
    pub settle: Duration,
    /// Bytes in a live file before the first record: what stalled clients fill up on.
    pub prefix: u64,
}

impl Settings {
    pub fn full() -> Settings {
        Settings {
            threads: 2,
            verify: true,
            nofile: 0,
            catchup_reps: 5,
            reps: 3,
            catchup_clients: vec![1, 10, 100, 1000],
            total: 2 << 30,
            min_size: 2 * MIB,
            live_clients: vec![1, 100, 1000, 10_000],
            rate: 100.0,
            live_secs: 5.0,
            idle_clients: vec![1000, 10_000],
            idle_secs: 10.0,
            stalled_live: vec![100],
            stalled: vec![0, 100],
            churn_secs: 3.0,
            churn_clients: 64,
            churn_fin_cap: 5000,
            shard_catchup_clients: vec![100, 1000],
            shard_live_clients: vec![100, 1000],
            settle: Duration::from_millis(1000),
            prefix: 16 * MIB,
        }
    }

    pub fn smoke() -> Settings {
        Settings {
            catchup_reps: 1,
            reps: 1,
            catchup_clients: vec![1, 8],
            total: 8 * MIB,
            min_size: MIB,
            live_clients: vec![1, 8],
            rate: 100.0,
            live_secs: 1.0,
            idle_clients: vec![8],
            idle_secs: 1.0,
            stalled_live: vec![4],
            stalled: vec![0, 2],
            churn_secs: 0.5,
            churn_clients: 4,
            churn_fin_cap: 200,
            shard_catchup_clients: vec![8],
            shard_live_clients: vec![8],
            settle: Duration::from_millis(300),
            prefix: 4 * MIB,
            ..Settings::full()
        }
    }

    pub fn set_reps(&mut self, reps: usize) {
        self.catchup_reps = reps;
        self.reps = reps;
    }

    pub fn set_clients(&mut self, clients: &[usize]) {
        for list in [
            &mut self.catchup_clients,
            &mut self.live_clients,
            &mut self.idle_clients,
            &mut self.stalled_live,
            &mut self.shard_catchup_clients,
            &mut self.shard_live_clients,
        ] {
            *list = clients.to_vec();
        }
    }
}

/// Files the runs serve: made in a temp directory for the harness's own servers, appended
/// to the given file for an external one.
struct Workspace {
    dir: PathBuf,
    content: Content,
    catchup: HashMap<u64, PathBuf>,
    last_fresh: Option<PathBuf>,
    made: u64,
}

impl Workspace {
    fn new() -> io::Result<Workspace> {
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

pub struct Bench {
    s: Settings,
    targets: Vec<Target>,
    shard_targets: Vec<Target>,
    out: PathBuf,
    work: Workspace,
}

/// One point of a scenario's sweep: what its samples record besides the target and the
/// repetition, and how many runs it gets per target.
struct Point {
    clients: usize,
    /// `stalled=100`, `close=fin`, or empty.
    variant: String,
    reps: usize,
    /// Clients compare every byte (`verify` mode) rather than drop it unread (`discard`).
    verify: bool,
}

/// Appends the engine's failures to the sample's.
fn absorb(sample: &mut Sample, out: &Outcome) {
    sample.failures.extend(out.failures.iter().cloned());
    if out.failure_count > out.failures.len() {
        sample.failures.push(format!(
            "and {} more client failures",
            out.failure_count - out.failures.len()
        ));
    }
}

fn cpu_delta(a: Option<Usage>, b: Option<Usage>) -> Option<f64> {
    Some(b?.cpu_s - a?.cpu_s)
}

impl Bench {
    pub fn new(
        s: Settings,
        targets: Vec<Target>,
        shard_targets: Vec<Target>,
        out: PathBuf,
    ) -> Result<Bench, String> {
        let work = Workspace::new().map_err(|e| format!("making a temp directory: {e}"))?;
        Ok(Bench {
            s,
            targets,
            shard_targets,
            out,
            work,
        })
    }

    /// Prints what the figures were measured on.
    pub fn machine_note(&self) {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        println!(
            "fanout: {cpus} CPUs ({model}), Linux {}, RLIMIT_NOFILE {}, {} client threads, {} mode; targets: {}",
            kernel.trim(),
            self.s.nofile,
            self.s.threads,
            if self.s.verify { "verify" } else { "discard" },
            self.targets.iter().map(Target::name).collect::<Vec<_>>().join(", ")
        );
    }

    /// Runs one scenario, prints its tables, writes its CSV. `Ok(false)`: a run failed.
    pub fn run(&mut self, scenario: Scenario) -> Result<bool, String> {
        let (targets, shard_targets) = (self.targets.clone(), self.shard_targets.clone());
        match scenario {
            Scenario::Catchup => {
                let clients = self.s.catchup_clients.clone();
                let r = self.catchup(&targets, &clients);
                let name = if self.s.verify {
                    "catchup"
                } else {
                    "catchup_discard"
                };
                self.finish(name, "catch-up", &r, catchup_table(&r))
            }
            Scenario::Live => {
                let clients = self.s.live_clients.clone();
                let r = self.live(&targets, &clients, &[0]);
                self.finish("live", "live", &r, live_table(&r))
            }
            Scenario::Idle => {
                let r = self.idle(&targets);
                self.finish("idle", "idle", &r, idle_table(&r, self.s.idle_secs))
            }
            Scenario::Stalled => {
                let (clients, stalled) = (self.s.stalled_live.clone(), self.s.stalled.clone());
                let r = self.live(&targets, &clients, &stalled);
                self.finish("stalled", "stalled", &r, stalled_table(&r))
            }
            Scenario::Churn => {
                let r = self.churn(&targets);
                self.finish("churn", "churn", &r, churn_table(&r))
            }
            Scenario::Shards => {
                let clients = self.s.shard_catchup_clients.clone();
                let r = self.catchup(&shard_targets, &clients);
                let name = if self.s.verify {
                    "shards_catchup"
                } else {
                    "shards_catchup_discard"
                };
                let ok = self.finish(name, "shards: catch-up", &r, catchup_table(&r))?;
                let clients = self.s.shard_live_clients.clone();
                let r = self.live(&shard_targets, &clients, &[0]);
                Ok(self.finish("shards_live", "shards: live", &r, live_table(&r))? && ok)
            }
        }
    }

    /// Rebuilds the tables and summaries from the runs CSV already in the output directory.
    pub fn tables_only(&self) -> Result<bool, String> {
        let mut ok = true;
        for (name, title) in [
            ("catchup", "catch-up"),
            ("catchup_discard", "catch-up"),
            ("live", "live"),
            ("idle", "idle"),
            ("stalled", "stalled"),
            ("churn", "churn"),
            ("shards_catchup", "shards: catch-up"),
            ("shards_catchup_discard", "shards: catch-up"),
            ("shards_live", "shards: live"),
        ] {
            let Ok(r) = Results::read_csv(&self.out, name) else {
                continue;
            };
            let table = match name {
                "live" | "shards_live" => live_table(&r),
                "idle" => idle_table(&r, self.s.idle_secs),
                "stalled" => stalled_table(&r),
                "churn" => churn_table(&r),
                _ => catchup_table(&r),
            };
            ok &= self.finish(name, title, &r, table)?;
        }
        Ok(ok)
    }

    fn finish(&self, name: &str, title: &str, r: &Results, table: Table) -> Result<bool, String> {
        let md = table.render();
        let mode = if name.contains("discard") {
            "discard"
        } else {
            "verify"
        };
        println!("\n## {title} ({mode} mode; median [min–max] of the runs)\n\n{md}");
        r.write_csv(&self.out, name)
            .map_err(|e| format!("writing {}: {e}", self.out.display()))?;
        std::fs::write(
            self.out.join(format!("{name}.md")),
            format!("{title} ({mode} mode)\n\n{md}"),
        )
        .map_err(|e| format!("writing {}: {e}", self.out.display()))?;
        let failures = r.failures();
        for f in &failures {
            println!("FAILED: {f}");
        }
        Ok(failures.is_empty())
    }

    fn check_fds(&self, clients: usize) -> Result<(), String> {
        if (clients + FD_MARGIN) as u64 > self.s.nofile {
            return Err(format!(
                "{clients} clients need {} descriptors but RLIMIT_NOFILE is {} (run as root, or raise `ulimit -Hn`)",
                clients + FD_MARGIN,
                self.s.nofile
            ));
        }
        Ok(())
    }

    /// Runs one point `point.reps` times per target, the targets alternating within each
    /// repetition: `once` does a run and fills in its sample, `summary` sums the sample up
    /// for its log line, and the sample joins `r` whether the run failed or not.
    fn run_point(
        &mut self,
        r: &mut Results,
        scenario: &str,
        point: Point,
        targets: &[Target],
        mut once: impl FnMut(&mut Self, &Target, &mut Sample) -> Result<(), String>,
        summary: impl Fn(&Sample) -> String,
    ) {
        for rep in 1..=point.reps {
            for t in targets {
                let mut s = Sample {
                    target: t.name(),
                    clients: point.clients,
                    variant: point.variant.clone(),
                    mode: if point.verify { "verify" } else { "discard" },
                    rep,
                    metrics: Vec::new(),
                    failures: Vec::new(),
                };
                if let Err(e) = once(self, t, &mut s) {
                    s.failures.push(e);
                }
                self.log(scenario, &s, summary(&s));
                r.samples.push(s);
            }
        }
    }

    fn per_client(&self, clients: usize) -> u64 {
        (self.s.total / clients.max(1) as u64).max(self.s.min_size) / data::PAGE * data::PAGE
    }

    fn log(&self, scenario: &str, s: &Sample, summary: String) {
        let status = if s.failures.is_empty() {
            "ok".to_string()
        } else {
            format!("FAILED: {}", s.failures.join("; "))
        };
        eprintln!(
            "[{scenario}] {} clients={} {} rep {}: {summary} {status}",
            s.target, s.clients, s.variant, s.rep
        );
    }

    // ---- catch-up ----

    fn catchup(&mut self, targets: &[Target], clients: &[usize]) -> Results {
        let mut r = Results::default();
        for &n in clients {
            let point = Point {
                clients: n,
                variant: String::new(),
                reps: self.s.catchup_reps,
                verify: self.s.verify,
            };
            self.run_point(
                &mut r,
                "catchup",
                point,
                targets,
                |b, t, s| b.catchup_once(t, n, s),
                |s| format!("{:.2} GiB/s", s.get("gib_s").unwrap_or(f64::NAN)),
            );
        }
        r
    }

    fn catchup_once(
        &mut self,
        target: &Target,
        clients: usize,
        s: &mut Sample,
    ) -> Result<(), String> {
        self.check_fds(clients)?;
        let len = self.per_client(clients);
        let (path, base) = self
            .work
            .catchup_file(target, len)
            .map_err(|e| format!("preparing the file: {e}"))?;
        let mut server = Server::start(target, &path)?;
        let view = map_view(&path)?;
        let plan = Plan {
            addr: server.addr,
            threads: self.s.threads,
            groups: vec![Group::new(
                clients,
                Role::CatchUp { len },
                base,
                format!("{base}\n"),
            )],
            verify: self.s.verify,
            record_base: 0,
            hold_headers: true,
        };
        let engine = start_clients(plan, view)?;
        let measured = engine.wait_connected(CONNECT_TIMEOUT).map(|()| {
            // Let the server accept everyone before the clock starts.
            sleep(Duration::from_millis(100));
            let (u0, g0, m0) = (server.usage(), sys::self_cpu_secs(), MachineCpu::read());
            engine.go();
            let timeout = Duration::from_secs(60)
                + Duration::from_secs_f64((clients as u64 * len) as f64 / 100e6);
            let done = engine.wait_until(timeout, |p| Progress::get(&p.finished) >= clients);
            let (u1, g1, m1) = (server.usage(), sys::self_cpu_secs(), MachineCpu::read());
            (done, cpu_delta(u0, u1), g1 - g0, m0.zip(m1))
        });
        let out = engine.stop();
        let stopped = server.stop();
        absorb(s, &out);
        let (done, server_cpu, gen_cpu, machine) = measured?;
        stopped?;
        if !done {
            return Err(format!(
                "only {} of {clients} clients finished",
                out.completions_ns.len()
            ));
        }
        let secs = (out.last_done_ns.saturating_sub(out.first_start_ns)) as f64 / 1e9;
        let gib = out.bytes as f64 / GIB;
        let mut ms: Vec<f64> = out
            .completions_ns
            .iter()
            .map(|&ns| ns as f64 / 1e6)
            .collect();
        ms.sort_by(f64::total_cmp);
        let st = report::stat(&ms).ok_or("no completion times")?;
        s.metrics.push(("per_client_mib", len as f64 / MIB as f64));
        s.metrics.push(("gib_s", gib / secs));
        s.metrics.push(("secs", secs));
        s.metrics.push(("client_min_ms", st.min));
        s.metrics.push(("client_median_ms", st.median));
        s.metrics.push(("client_max_ms", st.max));
        s.metrics.push(("max_over_median", st.max / st.median));
        if let Some(cpu) = server_cpu {
            s.metrics.push(("server_cpu_s", cpu));
            s.metrics.push(("server_cpu_s_per_gib", cpu / gib));
        }
        s.metrics.push(("generator_cpu_s", gen_cpu));
        if let Some((a, b)) = machine {
            let (busy, softirq) = a.until(b);
            s.metrics.push(("machine_busy", busy));
            s.metrics.push(("machine_softirq", softirq));
        }
        Ok(())
    }

    // ---- live and stalled ----

    fn live(&mut self, targets: &[Target], clients: &[usize], stalled: &[usize]) -> Results {
        let mut r = Results::default();
        let scenario = if stalled == [0] { "live" } else { "stalled" };
        for &n in clients {
            for &k in stalled {
                let variant = if scenario == "live" {
                    String::new()
                } else {
                    format!("stalled={k}")
                };
                let point = Point {
                    clients: n,
                    variant,
                    reps: self.s.reps,
                    verify: true,
                };
                self.run_point(
                    &mut r,
                    scenario,
                    point,
                    targets,
                    |b, t, s| b.live_once(t, n, k, s),
                    |s| {
                        format!(
                            "p50 {:.3} ms p99 {:.3} ms, {} of {} records",
                            s.get("p50_ms").unwrap_or(f64::NAN),
                            s.get("p99_ms").unwrap_or(f64::NAN),
                            s.get("delivered").unwrap_or(0.0),
                            s.get("expected").unwrap_or(0.0)
                        )
                    },
                );
            }
        }
        r
    }

    fn live_once(
        &mut self,
        target: &Target,
        clients: usize,
        stalled: usize,
        s: &mut Sample,
    ) -> Result<(), String> {
        self.check_fds(clients + stalled)?;
        let (path, base) = self
            .work
            .fresh_file(target, self.s.prefix)
            .map_err(|e| format!("preparing the file: {e}"))?;
        let mut server = Server::start(target, &path)?;
        let view = map_view(&path)?;
        let mut groups = vec![Group::new(clients, Role::Live, base, format!("{base}\n"))];
        if stalled > 0 {
            // From the start of the file, so their sockets fill up and stay full.
            groups.push(Group::new(stalled, Role::Stalled, 0, "0\n"));
        }
        let plan = Plan {
            addr: server.addr,
            threads: self.s.threads,
            groups,
            verify: true,
            record_base: base,
            hold_headers: false,
        };
        let mut writer = data::appender(&path)
            .map_err(|e| format!("opening {} to append: {e}", path.display()))?;
        let engine = start_clients(plan, view)?;
        let records = ((self.s.rate * self.s.live_secs).round() as u64).max(1);
        let interval = Duration::from_secs_f64(1.0 / self.s.rate);
        let expected = clients as u64 * records;
        let measured = (|| -> Result<_, String> {
            engine.wait_connected(CONNECT_TIMEOUT)?;
            let append = |w: &mut std::fs::File, seq: u64, kind: Kind| {
                data::append_record(w, seq, kind).map_err(|e| format!("appending a record: {e}"))
            };
            // Warm up until every client has seen a record, then a few more at the rate.
            let deadline = Instant::now() + WARMUP_TIMEOUT;
            let mut seq = 0;
            while Progress::get(&engine.progress().warmed) < clients {
                if Instant::now() > deadline || Progress::get(&engine.progress().failures) > 0 {
                    return Err(format!(
                        "only {} of {clients} clients received a warm-up record",
                        Progress::get(&engine.progress().warmed)
                    ));
                }
                append(&mut writer, seq, Kind::Warmup)?;
                seq += 1;
                engine.wait_until(Duration::from_millis(20), |p| {
                    Progress::get(&p.warmed) >= clients
                });
            }
            for _ in 0..EXTRA_WARMUPS {
                append(&mut writer, seq, Kind::Warmup)?;
                seq += 1;
                sleep(interval);
            }
            let (u0, g0, m0) = (server.usage(), sys::self_cpu_secs(), MachineCpu::read());
            let t0 = Instant::now();
            for i in 0..records {
                let due = t0 + interval.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    sleep(due - now);
                }
                append(&mut writer, i, Kind::Timed)?;
            }
            let all =
                engine.wait_until(DRAIN_TIMEOUT, |p| Progress::get64(&p.delivered) >= expected);
            let (u1, g1, m1) = (server.usage(), sys::self_cpu_secs(), MachineCpu::read());
            Ok((all, cpu_delta(u0, u1), g1 - g0, t0.elapsed(), m0.zip(m1)))
        })();
        let out = engine.stop();
        let stopped = server.stop();
        absorb(s, &out);
        let (_, server_cpu, gen_cpu, took, machine) = measured?;
        stopped?;
        let h = &out.latency;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        s.metrics.push(("records_per_client", records as f64));
        s.metrics.push(("rate", self.s.rate));
        s.metrics.push(("p50_ms", ms(0.5)));
        s.metrics.push(("p90_ms", ms(0.9)));
        s.metrics.push(("p99_ms", ms(0.99)));
        s.metrics.push(("p999_ms", ms(0.999)));
        s.metrics.push(("max_ms", h.max() as f64 / 1e6));
        s.metrics.push(("delivered", out.records as f64));
        s.metrics.push(("expected", expected as f64));
        if let Some(cpu) = server_cpu {
            s.metrics.push(("server_cpu_s", cpu));
        }
        s.metrics.push(("generator_cpu_s", gen_cpu));
        if let Some((a, b)) = machine {
            let (busy, softirq) = a.until(b);
            s.metrics.push(("machine_busy", busy));
            s.metrics.push(("machine_softirq", softirq));
        }
        s.metrics.push(("secs", took.as_secs_f64()));
        s.metrics.push(("stalled_dropped", out.dropped as f64));
        let short: Vec<u64> = out
            .per_client_records
            .iter()
            .copied()
            .filter(|&n| n < records)
            .collect();
        s.metrics.push(("clients_short", short.len() as f64));
        if out.records != expected {
            s.failures.push(format!(
                "delivered {} of {expected} records: {} clients got fewer than {records}, the fewest {}",
                out.records,
                short.len(),
                short.iter().min().copied().unwrap_or(records)
            ));
        }
        Ok(())
    }

    // ---- idle ----

    fn idle(&mut self, targets: &[Target]) -> Results {
        let mut r = Results::default();
        for n in self.s.idle_clients.clone() {
            let point = Point {
                clients: n,
                variant: String::new(),
                reps: self.s.reps,
                verify: true,
            };
            self.run_point(
                &mut r,
                "idle",
                point,
                targets,
                |b, t, s| b.idle_once(t, n, s),
                |s| {
                    format!(
                        "cpu {:.3} s, {:.2} KiB and {:.3} fds per client",
                        s.get("idle_cpu_s").unwrap_or(f64::NAN),
                        s.get("rss_kib_per_client").unwrap_or(f64::NAN),
                        s.get("fds_per_client").unwrap_or(f64::NAN)
                    )
                },
            );
        }
        r
    }

    fn idle_once(&mut self, target: &Target, clients: usize, s: &mut Sample) -> Result<(), String> {
        self.check_fds(clients)?;
        let (path, end) = self
            .work
            .fresh_file(target, MIB)
            .map_err(|e| format!("preparing the file: {e}"))?;
        let mut server = Server::start(target, &path)?;
        let view = map_view(&path)?;
        sleep(self.s.settle);
        let before = server.usage();
        let plan = Plan {
            addr: server.addr,
            threads: self.s.threads,
            groups: vec![Group::new(clients, Role::Idle, end, "-0\n")],
            verify: true,
            record_base: 0,
            hold_headers: false,
        };
        let engine = start_clients(plan, view)?;
        let measured = engine.wait_connected(CONNECT_TIMEOUT).map(|()| {
            sleep(self.s.settle);
            let connected = server.usage();
            sleep(Duration::from_secs_f64(self.s.idle_secs));
            (connected, server.usage())
        });
        let out = engine.stop();
        sleep(self.s.settle);
        let after = server.usage();
        let stopped = server.stop();
        absorb(s, &out);
        let (start, end) = measured?;
        stopped?;
        if out.bytes > 0 {
            s.failures
                .push(format!("idle clients received {} bytes", out.bytes));
        }
        let (Some(b), Some(u0), Some(u1), Some(a)) = (before, start, end, after) else {
            return Ok(()); // An external server without --pid: nothing to read.
        };
        let n = clients as f64;
        s.metrics.push(("idle_cpu_s", u1.cpu_s - u0.cpu_s));
        s.metrics.push(("rss_kib_base", b.rss_kib));
        s.metrics.push(("rss_kib_connected", u1.rss_kib));
        s.metrics
            .push(("rss_kib_per_client", (u1.rss_kib - b.rss_kib) / n));
        s.metrics.push(("fds_base", b.fds));
        s.metrics.push(("fds_connected", u1.fds));
        s.metrics.push(("fds_per_client", (u1.fds - b.fds) / n));
        s.metrics.push(("fds_after_close", a.fds));
        s.metrics.push(("rss_kib_after_close", a.rss_kib));
        s.metrics.push(("threads", u1.threads));
        Ok(())
    }

    // ---- churn ----

    fn churn(&mut self, targets: &[Target]) -> Results {
        let mut r = Results::default();
        let n = self.s.churn_clients;
        for fin in [false, true] {
            let point = Point {
                clients: n,
                variant: if fin { "close=fin" } else { "close=rst" }.to_string(),
                reps: self.s.reps,
                verify: true,
            };
            self.run_point(
                &mut r,
                "churn",
                point,
                targets,
                |b, t, s| b.churn_once(t, fin, s),
                |s| {
                    format!(
                        "{:.0} conn/s, fds {} -> {}",
                        s.get("conn_per_s").unwrap_or(f64::NAN),
                        s.get("fds_before").unwrap_or(f64::NAN),
                        s.get("fds_after_2").unwrap_or(f64::NAN)
                    )
                },
            );
        }
        r
    }

    fn churn_once(&mut self, target: &Target, fin: bool, s: &mut Sample) -> Result<(), String> {
        let clients = self.s.churn_clients;
        self.check_fds(clients)?;
        let (path, end) = self
            .work
            .fresh_file(target, MIB)
            .map_err(|e| format!("preparing the file: {e}"))?;
        let mut server = Server::start(target, &path)?;
        sleep(self.s.settle);
        let before = server.usage();
        // A reset client reads 4 KiB of a 1 MiB backlog and leaves; a FIN client asks for the
        // last 4 KiB, reads all of it and closes cleanly.
        let (start, header) = if fin {
            (end - CHURN_READ, format!("-{CHURN_READ}\n"))
        } else {
            (end - MIB, format!("{}\n", end - MIB))
        };
        let mut rates = Vec::new();
        let mut after = Vec::new();
        let mut connect_errors = 0;
        for _round in 0..2 {
            let view = map_view(&path)?;
            let plan = Plan {
                addr: server.addr,
                threads: self.s.threads,
                groups: vec![Group::new(
                    clients,
                    Role::Churn {
                        len: CHURN_READ,
                        fin,
                    },
                    start,
                    header.clone(),
                )],
                verify: true,
                record_base: 0,
                hold_headers: false,
            };
            let engine = start_clients(plan, view)?;
            let t0 = Instant::now();
            let cap = if fin { self.s.churn_fin_cap } else { u64::MAX };
            engine.wait_until(Duration::from_secs_f64(self.s.churn_secs), |p| {
                Progress::get64(&p.cycles) >= cap
            });
            let cycles = Progress::get64(&engine.progress().cycles);
            let secs = t0.elapsed().as_secs_f64();
            let out = engine.stop();
            absorb(s, &out);
            connect_errors += out.connect_errors;
            rates.push(cycles as f64 / secs);
            sleep(self.s.settle);
            after.push(server.usage());
        }
        let mut after_append = None;
        if fin {
            // Half-closed clients are found out when there is something to send them.
            let mut w =
                data::appender(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            data::append_record(&mut w, 0, Kind::Warmup).map_err(|e| format!("appending: {e}"))?;
            sleep(self.s.settle + Duration::from_millis(1500));
            after_append = server.usage();
        }
        server.stop()?;
        s.metrics
            .push(("conn_per_s", rates.iter().sum::<f64>() / rates.len() as f64));
        s.metrics.push(("connect_errors", connect_errors as f64));
        let (Some(b), Some(a1), Some(a2)) = (before, after[0], after[1]) else {
            return Ok(());
        };
        s.metrics.push(("fds_before", b.fds));
        s.metrics.push(("fds_after_1", a1.fds));
        s.metrics.push(("fds_after_2", a2.fds));
        if let Some(a) = after_append {
            s.metrics.push(("fds_after_append", a.fds));
        }
        s.metrics.push(("rss_kib_before", b.rss_kib));
        s.metrics.push(("rss_kib_after_1", a1.rss_kib));
        s.metrics.push(("rss_kib_after_2", a2.rss_kib));
        Ok(())
    }
}

// ---- tables ----

fn catchup_table(r: &Results) -> Table {
    let mut t = Table::new(&[
        "clients",
        "MiB each",
        "target",
        "aggregate GiB/s",
        "vs ref",
        "client ms: min / median / max",
        "max / median",
        "server CPU s per GiB",
        "generator CPU s",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |m: &str| r.stat(&target, n, &v, m);
            t.row(vec![
                n.to_string(),
                median(st("per_client_mib"), 0),
                target.clone(),
                spread(st("gib_s"), 2),
                if target == "reference" {
                    "".into()
                } else {
                    times(r.ratio(&target, n, &v, "gib_s"))
                },
                format!(
                    "{} / {} / {}",
                    median(st("client_min_ms"), 1),
                    median(st("client_median_ms"), 1),
                    median(st("client_max_ms"), 1)
                ),
                spread(st("max_over_median"), 2),
                spread(st("server_cpu_s_per_gib"), 3),
                median(st("generator_cpu_s"), 2),
                failed(r, &target, n, &v),
            ]);
        }
    }
    t
}

/// `failed / runs` at a point, or empty when none failed.
fn failed(r: &Results, target: &str, n: usize, v: &str) -> String {
    let runs: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| s.target == target && s.clients == n && s.variant == v)
        .collect();
    let bad = runs.iter().filter(|s| !s.failures.is_empty()).count();
    if bad == 0 {
        String::new()
    } else {
        format!("{bad} of {}", runs.len())
    }
}

fn delivered(r: &Results, target: &str, n: usize, v: &str) -> String {
    let runs: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| s.target == target && s.clients == n && s.variant == v)
        .collect();
    let measured: Vec<&&Sample> = runs
        .iter()
        .filter(|s| s.get("expected").is_some())
        .collect();
    let got: f64 = measured.iter().filter_map(|s| s.get("delivered")).sum();
    let want: f64 = measured.iter().filter_map(|s| s.get("expected")).sum();
    if measured.is_empty() || want == 0.0 {
        "-".into()
    } else if got == want {
        format!(
            "all {} in {} runs",
            want / measured.len() as f64,
            measured.len()
        )
    } else {
        format!("{got} of {want} in {} runs", measured.len())
    }
}

fn live_table(r: &Results) -> Table {
    let mut t = Table::new(&[
        "clients",
        "target",
        "p50 ms",
        "p99 ms",
        "p99 vs ref",
        "p99.9 ms",
        "max ms",
        "records delivered per run",
        "server CPU s",
        "generator CPU s",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |m: &str| r.stat(&target, n, &v, m);
            t.row(vec![
                n.to_string(),
                target.clone(),
                spread(st("p50_ms"), 3),
                spread(st("p99_ms"), 3),
                if target == "reference" {
                    "".into()
                } else {
                    times(r.ratio(&target, n, &v, "p99_ms"))
                },
                spread(st("p999_ms"), 3),
                spread(st("max_ms"), 2),
                delivered(r, &target, n, &v),
                median(st("server_cpu_s"), 2),
                median(st("generator_cpu_s"), 2),
                failed(r, &target, n, &v),
            ]);
        }
    }
    t
}

fn stalled_table(r: &Results) -> Table {
    let mut t = Table::new(&[
        "live clients",
        "stalled",
        "target",
        "p50 ms",
        "p99 ms",
        "p99 / p99 with 0 stalled",
        "p99.9 ms",
        "max ms",
        "records delivered per run",
        "stalled dropped",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |m: &str| r.stat(&target, n, &v, m);
            let base = r.stat(&target, n, "stalled=0", "p99_ms");
            let moved = match (st("p99_ms"), base) {
                (Some(a), Some(b)) if v != "stalled=0" && b.median > 0.0 => {
                    format!("×{:.2}", a.median / b.median)
                }
                _ => String::new(),
            };
            t.row(vec![
                n.to_string(),
                v.trim_start_matches("stalled=").to_string(),
                target.clone(),
                spread(st("p50_ms"), 3),
                spread(st("p99_ms"), 3),
                moved,
                spread(st("p999_ms"), 3),
                spread(st("max_ms"), 2),
                delivered(r, &target, n, &v),
                median(st("stalled_dropped"), 0),
                failed(r, &target, n, &v),
            ]);
        }
    }
    t
}

fn idle_table(r: &Results, secs: f64) -> Table {
    let cpu = format!("server CPU s in {secs} s");
    let mut t = Table::new(&[
        "clients",
        "target",
        &cpu,
        "RSS KiB per client",
        "fds per client",
        "threads",
        "fds: before → connected → closed",
        "RSS MiB: before → connected → closed",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |m: &str| r.stat(&target, n, &v, m);
            let mib = |m: &str| {
                st(m).map(|s| report::Stat {
                    median: s.median / 1024.0,
                    ..s
                })
            };
            t.row(vec![
                n.to_string(),
                target.clone(),
                spread(st("idle_cpu_s"), 2),
                spread(st("rss_kib_per_client"), 2),
                spread(st("fds_per_client"), 3),
                median(st("threads"), 0),
                format!(
                    "{} → {} → {}",
                    median(st("fds_base"), 0),
                    median(st("fds_connected"), 0),
                    median(st("fds_after_close"), 0)
                ),
                format!(
                    "{} → {} → {}",
                    median(mib("rss_kib_base"), 1),
                    median(mib("rss_kib_connected"), 1),
                    median(mib("rss_kib_after_close"), 1)
                ),
                failed(r, &target, n, &v),
            ]);
        }
    }
    t
}

fn churn_table(r: &Results) -> Table {
    let mut t = Table::new(&[
        "close",
        "clients at once",
        "target",
        "connections/s",
        "vs ref",
        "fds: before → round 1 → round 2",
        "fds after an append",
        "RSS MiB: before → round 1 → round 2",
        "connect errors",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |m: &str| r.stat(&target, n, &v, m);
            let mib = |m: &str| {
                st(m).map(|s| report::Stat {
                    median: s.median / 1024.0,
                    ..s
                })
            };
            t.row(vec![
                v.trim_start_matches("close=").to_string(),
                n.to_string(),
                target.clone(),
                spread(st("conn_per_s"), 0),
                if target == "reference" {
                    "".into()
                } else {
                    times(r.ratio(&target, n, &v, "conn_per_s"))
                },
                format!(
                    "{} → {} → {}",
                    median(st("fds_before"), 0),
                    median(st("fds_after_1"), 0),
                    median(st("fds_after_2"), 0)
                ),
                median(st("fds_after_append"), 0),
                format!(
                    "{} → {} → {}",
                    median(mib("rss_kib_before"), 1),
                    median(mib("rss_kib_after_1"), 1),
                    median(mib("rss_kib_after_2"), 1)
                ),
                median(st("connect_errors"), 0),
                failed(r, &target, n, &v),
            ]);
        }
    }
    t
}

/// Maps the file the clients compare what they receive against.
fn map_view(path: &Path) -> Result<Arc<FileView>, String> {
    FileView::open(path)
        .map(Arc::new)
        .map_err(|e| format!("mapping {}: {e}", path.display()))
}

/// Starts the client engine on a plan.
fn start_clients(plan: Plan, view: Arc<FileView>) -> Result<Engine, String> {
    Engine::start(plan, view).map_err(|e| format!("starting the clients: {e}"))
}
