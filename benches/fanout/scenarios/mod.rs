//! The scenarios: what each run does, what it measures, and the tables it prints.
//!
//! Every point runs `reps` times per target, the targets alternating within each repetition
//! (reference, tailsrv, reference, tailsrv, ...), so slow drifts in the machine's load touch
//! both alike. Each run starts a fresh server process on a fresh (or, for catch-up, a shared
//! hot) file and stops it afterwards.
//!
//! One file per scenario: its figures (a [`figures!`](crate::report::figures) struct, one
//! CSV column per field), its sweep, one run, and its table. What every run shares (the
//! files, starting a server, the clients' plan, CPU readings) is in [`setup`]. Adding a
//! scenario is a new file here, a [`Scenario`] variant and an arm in [`Bench::run`] and
//! [`Bench::tables_only`].

mod appendcost;
mod catchup;
mod churn;
mod idle;
mod live;
mod relay;
mod setup;
mod shards;
mod soak;
mod stalled;

use crate::report::{Figures, Results, Sample, Stat, Table};
use crate::server::Target;
use crate::Scenario;
use setup::Workspace;
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// How long all clients may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors the harness itself needs beside its clients.
const FD_MARGIN: usize = 64;

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
    /// Soak: seconds of random clients.
    pub soak_secs: f64,
    /// Soak: client slots, each connecting again as soon as its client leaves.
    pub soak_slots: usize,
    /// Append cost: (appends per second, clients following) points.
    pub appendcost: Vec<(f64, usize)>,
    /// Append cost: seconds of appends per run.
    pub appendcost_secs: f64,
    /// Live clients on the upstream, and as many on the relay, in the relay scenario.
    pub relay_clients: Vec<usize>,
    /// Relay catch-up: another tailsrv-fetch to measure beside this tree's.
    pub baseline_fetch_bin: Option<std::path::PathBuf>,
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
            relay_clients: vec![1, 100],
            soak_secs: 60.0,
            soak_slots: 200,
            appendcost: vec![
                (100.0, 0),
                (1000.0, 0),
                (1000.0, 1),
                (1000.0, 100),
                (10_000.0, 10),
            ],
            appendcost_secs: 10.0,
            baseline_fetch_bin: None,
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
            relay_clients: vec![4],
            soak_secs: 20.0,
            appendcost: vec![(100.0, 0), (1000.0, 2)],
            appendcost_secs: 0.5,
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
            &mut self.relay_clients,
        ] {
            *list = clients.to_vec();
        }
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
        let mut targets = self.targets.clone();
        // HTTP clients are measured where the issue asks (live and catch-up); the other
        // scenarios' clients (stalled, churn's FIN, soak's random headers) are raw ones.
        if !matches!(scenario, Scenario::Live | Scenario::Catchup) {
            targets.retain(|t| !t.http());
        }
        match scenario {
            Scenario::Appendcost => appendcost::run(self, &targets),
            Scenario::Catchup => catchup::run(self, &targets),
            Scenario::Live => live::run(self, &targets),
            Scenario::Idle => idle::run(self, &targets),
            Scenario::Stalled => stalled::run(self, &targets),
            Scenario::Churn => churn::run(self, &targets),
            Scenario::Shards => shards::run(self, &self.shard_targets.clone()),
            Scenario::Soak => soak::run(self, &targets),
            Scenario::Relay => relay::run(self, &targets),
        }
    }

    /// Rebuilds the tables and summaries from the runs CSV already in the output directory.
    pub fn tables_only(&self) -> Result<bool, String> {
        let secs = self.s.idle_secs;
        let mut ok = true;
        ok &= self.rebuild("appendcost", "append cost", appendcost::table)?;
        ok &= self.rebuild("catchup", "catch-up", catchup::table)?;
        ok &= self.rebuild("catchup_discard", "catch-up", catchup::table)?;
        ok &= self.rebuild("live", "live", live::table)?;
        ok &= self.rebuild("idle", "idle", |r| idle::table(r, secs))?;
        ok &= self.rebuild("stalled", "stalled", stalled::table)?;
        ok &= self.rebuild("churn", "churn", churn::table)?;
        ok &= self.rebuild("shards_catchup", "shards: catch-up", catchup::table)?;
        ok &= self.rebuild("shards_catchup_discard", "shards: catch-up", catchup::table)?;
        ok &= self.rebuild("shards_live", "shards: live", live::table)?;
        ok &= self.rebuild("relay_live", "relay: live", relay::live_table)?;
        ok &= self.rebuild("relay_catchup", "relay: catch-up", relay::catchup_table)?;
        ok &= self.rebuild("soak", "soak", soak::table)?;
        Ok(ok)
    }

    /// [`Bench::finish`] on the runs a previous run wrote to `NAME.csv`, if there is one.
    fn rebuild<F: Figures>(
        &self,
        name: &str,
        title: &str,
        table: impl Fn(&Results<F>) -> Table,
    ) -> Result<bool, String> {
        match Results::<F>::read_csv(&self.out, name) {
            Ok(r) => self.finish(name, title, &r, table(&r)),
            Err(_) => Ok(true),
        }
    }

    /// Prints the table, writes `NAME.csv`, `NAME_summary.csv` and `NAME.md`, and lists the
    /// failures. `Ok(false)`: some run failed.
    fn finish<F: Figures>(
        &self,
        name: &str,
        title: &str,
        r: &Results<F>,
        table: Table,
    ) -> Result<bool, String> {
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
    fn run_point<F: Figures>(
        &mut self,
        r: &mut Results<F>,
        scenario: &str,
        point: Point,
        targets: &[Target],
        mut once: impl FnMut(&mut Self, &Target, &mut Sample<F>) -> Result<(), String>,
        summary: impl Fn(&F) -> String,
    ) {
        for rep in 1..=point.reps {
            for t in targets {
                let mut s = Sample {
                    target: t.name(),
                    clients: point.clients,
                    variant: point.variant.clone(),
                    mode: if point.verify { "verify" } else { "discard" },
                    rep,
                    figures: F::default(),
                    failures: Vec::new(),
                };
                if let Err(e) = once(self, t, &mut s) {
                    s.failures.push(e);
                }
                let status = if s.failures.is_empty() {
                    "ok".to_string()
                } else {
                    format!("FAILED: {}", s.failures.join("; "))
                };
                eprintln!(
                    "[{scenario}] {} clients={} {} rep {}: {} {status}",
                    s.target,
                    s.clients,
                    s.variant,
                    s.rep,
                    summary(&s.figures)
                );
                r.samples.push(s);
            }
        }
    }
}

/// A figure that is absent prints as NaN in a run's log line, as it always has.
fn nan(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

/// A KiB figure's median in MiB, for the tables.
fn mib(s: Option<Stat>) -> Option<Stat> {
    s.map(|s| Stat {
        median: s.median / 1024.0,
        ..s
    })
}
