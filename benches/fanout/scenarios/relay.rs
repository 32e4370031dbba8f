//! Relay: what one tier of `tailsrv-fetch FILE` + `tailsrv FILE` adds. Live: clients on the
//! upstream and on a relay of it, in the same run, receive the same records; the relay's
//! extra append-to-delivery latency is the difference. Catch-up: how fast a new relay copies
//! a hot upstream file.
//!
//! Why no reference server here? The question is what a tier costs, so each figure stands
//! beside the same tailsrv reached directly, measured in the same run; the reference server
//! has no relay to compare.

use super::setup::{absorb, paced_records, start_clients, warm_up, FileSpec, Stage};
use super::{nan, Bench, Point, CONNECT_TIMEOUT};
use crate::data;
use crate::engine::{Engine, Group, Progress, Role};
use crate::report::{figures, median, spread, Results, Sample, Table};
use crate::server::{self, Server, Target};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The fetcher under test: this tree's build, whatever `--server-bin` says.
const FETCH_BIN: &str = env!("CARGO_BIN_EXE_tailsrv-fetch");
/// How long a relay may take to copy the upstream file before a run is declared failed.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the last append every record must have arrived.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
const GIB: f64 = (1u64 << 30) as f64;

figures! {
    /// One live relay run: the same records to clients of the upstream and of the relay.
    RelayLiveFigures {
        records_per_client,
        rate,
        direct_p50_ms,
        direct_p99_ms,
        relay_p50_ms,
        relay_p99_ms,
        relay_max_ms,
        /// relay minus direct, this run
        extra_p50_ms,
        extra_p99_ms,
        delivered,
        expected,
        fetch_cpu_s,
        relay_cpu_s,
        upstream_cpu_s,
    }
}

figures! {
    /// One relay catch-up run: a new relay copies the whole upstream file.
    RelayCatchupFigures {
        bytes,
        secs,
        gib_per_s,
        fetch_cpu_s,
        fetch_cpu_s_per_gib,
        upstream_cpu_s,
    }
}

pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    // The reference server cannot be an upstream worth measuring, and an external server's
    // file is not ours to rotate into a relay: only this tree's tailsrv.
    let targets: Vec<Target> = targets
        .iter()
        .filter(|t| matches!(t, Target::Tailsrv { .. }))
        .cloned()
        .collect();
    if targets.is_empty() {
        println!("\n## relay: skipped (it measures this tree's tailsrv only)");
        return Ok(true);
    }
    let mut live: Results<RelayLiveFigures> = Results::default();
    for &n in &b.s.relay_clients.clone() {
        let point = Point {
            clients: n,
            variant: String::new(),
            reps: b.s.reps,
            verify: true,
        };
        b.run_point(
            &mut live,
            "relay live",
            point,
            &targets,
            |b, t, s| b.relay_live_once(t, n, s),
            |f| {
                format!(
                    "direct p50 {:.3} p99 {:.3} ms, relay p50 {:.3} p99 {:.3} ms, {} of {} records",
                    nan(f.direct_p50_ms),
                    nan(f.direct_p99_ms),
                    nan(f.relay_p50_ms),
                    nan(f.relay_p99_ms),
                    f.delivered.unwrap_or(0.0),
                    f.expected.unwrap_or(0.0)
                )
            },
        );
    }
    let mut ok = b.finish("relay_live", "relay: live", &live, live_table(&live))?;

    let mut catchup: Results<RelayCatchupFigures> = Results::default();
    // The fetchers to compare: this tree's, and `--baseline-fetch-bin`'s as variant
    // `fetch=baseline`.
    let mut fetchers = vec![(String::new(), PathBuf::from(FETCH_BIN))];
    if let Some(bin) = &b.s.baseline_fetch_bin {
        fetchers.push(("fetch=baseline".to_string(), bin.clone()));
    }
    // Why one repetition at a time, the fetchers alternating? A copy's time and CPU depend on
    // the page cache's writeback of the copies before it; all of one fetcher's runs, then all
    // of the other's, measured that more than the fetchers.
    for rep in 1..=b.s.reps {
        for (variant, bin) in &fetchers {
            let point = Point {
                clients: 1,
                variant: variant.clone(),
                reps: 1,
                verify: true,
            };
            b.run_point(
                &mut catchup,
                "relay catch-up",
                point,
                &targets,
                |b, t, s| b.relay_catchup_once(t, bin, s),
                |f| {
                    format!(
                        "{:.2} GiB/s, fetcher {:.2} CPU s/GiB",
                        nan(f.gib_per_s),
                        nan(f.fetch_cpu_s_per_gib)
                    )
                },
            );
            for s in catchup.samples.iter_mut().rev().take(targets.len()) {
                s.rep = rep;
            }
        }
    }
    ok &= b.finish(
        "relay_catchup",
        "relay: catch-up",
        &catchup,
        catchup_table(&catchup),
    )?;
    Ok(ok)
}

/// A tailsrv-fetch process copying `upstream` into `file`; killed on drop (a SIGKILL is
/// an ordinary way to stop it: it resumes from FILE's length).
struct Fetcher {
    child: Child,
}

impl Fetcher {
    fn start(upstream: &Server, file: &Path, bin: &Path) -> Result<Fetcher, String> {
        let child = Command::new(bin)
            .arg(upstream.addr.to_string())
            .arg(file)
            .args(["--quiet", "--max-delay", "0.2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Fetcher { child })
    }

    fn cpu_s(&self) -> Option<f64> {
        server::usage_of(self.child.id()).map(|u| u.cpu_s)
    }

    /// Waits until `file` is `len` bytes long (polling every millisecond); false on timeout
    /// or if the fetcher exited.
    fn wait_for_len(&mut self, file: &Path, len: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::metadata(file).is_ok_and(|m| m.len() >= len) {
                return true;
            }
            if Instant::now() > deadline || !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay's copy of a run's file, removed first and on drop.
struct RelayFile(PathBuf);

impl RelayFile {
    fn beside(path: &Path) -> RelayFile {
        let mut name = path.as_os_str().to_owned();
        name.push(".relay");
        let copy = RelayFile(PathBuf::from(name));
        copy.remove();
        copy
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
        let mut rotated = self.0.as_os_str().to_owned();
        rotated.push(".1");
        let _ = std::fs::remove_file(rotated);
    }
}

impl Drop for RelayFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Compares two files a MiB at a time; describes the first difference.
fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("opening {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Err(format!(
                "the relay's copy differs from the upstream file in the MiB at {at}"
            ));
        }
        if na == 0 {
            return Ok(());
        }
        at += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
    Ok(n)
}

impl Bench {
    fn relay_live_once(
        &mut self,
        target: &Target,
        clients: usize,
        s: &mut Sample<RelayLiveFigures>,
    ) -> Result<(), String> {
        let prefix = self.s.prefix;
        let Stage {
            path,
            offset: base,
            server: mut upstream,
            view,
        } = self.stage(target, 2 * clients, FileSpec::Fresh { prefix })?;
        let copy = RelayFile::beside(&path);
        let mut fetcher = Fetcher::start(&upstream, &copy.0, Path::new(FETCH_BIN))?;
        if !fetcher.wait_for_len(&copy.0, base, COPY_TIMEOUT) {
            return Err(format!("the relay did not copy the first {base} bytes"));
        }
        let mut relay = Server::start(target, &copy.0)?;
        // Both groups compare against the upstream file: the relay's clients are checked
        // end to end, through the fetcher and the relay's tailsrv.
        let engine = |b: &Bench, server: &Server| -> Result<Engine, String> {
            let mut plan = b.plan(
                server,
                vec![Group::new(clients, Role::Live, base, format!("{base}\n"))],
            );
            plan.threads = (b.s.threads / 2).max(1);
            plan.record_base = base;
            start_clients(plan, view.clone())
        };
        let direct = engine(self, &upstream)?;
        let relayed = engine(self, &relay)?;
        let mut writer = data::appender(&path)
            .map_err(|e| format!("opening {} to append: {e}", path.display()))?;
        let records = ((self.s.rate * self.s.live_secs).round() as u64).max(1);
        let interval = Duration::from_secs_f64(1.0 / self.s.rate);
        let expected = clients as u64 * records;
        let measured = (|| -> Result<_, String> {
            direct.wait_connected(CONNECT_TIMEOUT)?;
            relayed.wait_connected(CONNECT_TIMEOUT)?;
            let warmed = |e: &Engine| Progress::get(&e.progress().warmed) >= clients;
            warm_up(
                &mut writer,
                interval,
                || warmed(&direct) && warmed(&relayed),
                |timed_out| timed_out.then(|| "not every client received a warm-up record".into()),
                || {
                    relayed.wait_until(Duration::from_millis(20), |p| {
                        Progress::get(&p.warmed) >= clients
                    });
                },
            )?;
            let cpu = |f: &Fetcher, r: &Server, u: &Server| {
                (
                    f.cpu_s(),
                    r.usage().map(|x| x.cpu_s),
                    u.usage().map(|x| x.cpu_s),
                )
            };
            let before = cpu(&fetcher, &relay, &upstream);
            paced_records(&mut writer, records, interval)?;
            direct.wait_until(DRAIN_TIMEOUT, |p| Progress::get64(&p.delivered) >= expected);
            relayed.wait_until(DRAIN_TIMEOUT, |p| Progress::get64(&p.delivered) >= expected);
            let after = cpu(&fetcher, &relay, &upstream);
            let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
            Ok((
                delta(before.0, after.0),
                delta(before.1, after.1),
                delta(before.2, after.2),
            ))
        })();
        let d = direct.stop();
        let r = relayed.stop();
        let relay_stopped = relay.stop();
        drop(fetcher);
        let upstream_stopped = upstream.stop();
        absorb(s, &d);
        absorb(s, &r);
        let (fetch_cpu, relay_cpu, upstream_cpu) = measured?;
        relay_stopped?;
        upstream_stopped?;
        same_bytes(&path, &copy.0)?;
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
        let (dl, rl) = (&d.latency, &r.latency);
        s.figures = RelayLiveFigures {
            records_per_client: Some(records as f64),
            rate: Some(self.s.rate),
            direct_p50_ms: Some(ms(dl, 0.5)),
            direct_p99_ms: Some(ms(dl, 0.99)),
            relay_p50_ms: Some(ms(rl, 0.5)),
            relay_p99_ms: Some(ms(rl, 0.99)),
            relay_max_ms: Some(rl.max() as f64 / 1e6),
            extra_p50_ms: Some(ms(rl, 0.5) - ms(dl, 0.5)),
            extra_p99_ms: Some(ms(rl, 0.99) - ms(dl, 0.99)),
            delivered: Some(r.records as f64),
            expected: Some(expected as f64),
            fetch_cpu_s: fetch_cpu,
            relay_cpu_s: relay_cpu,
            upstream_cpu_s: upstream_cpu,
        };
        for (what, out) in [("direct", &d), ("relay", &r)] {
            if out.records != expected {
                s.failures.push(format!(
                    "{what} clients received {} of {expected} records",
                    out.records
                ));
            }
        }
        Ok(())
    }

    fn relay_catchup_once(
        &mut self,
        target: &Target,
        fetch_bin: &Path,
        s: &mut Sample<RelayCatchupFigures>,
    ) -> Result<(), String> {
        let len = self.s.total;
        let Stage {
            path,
            offset,
            server: mut upstream,
            ..
        } = self.stage(target, 1, FileSpec::CatchUp { len })?;
        let total = offset + len;
        // The copy lives beside a run file of its own, not the shared catch-up file.
        let copy = RelayFile::beside(&path.with_extension("catchup"));
        // Every copy starts with no dirty pages left by the one before (see `run`).
        let _ = Command::new("sync").status();
        let up_before = upstream.usage().map(|u| u.cpu_s);
        let t0 = Instant::now();
        let mut fetcher = Fetcher::start(&upstream, &copy.0, fetch_bin)?;
        let copied = fetcher.wait_for_len(&copy.0, total, COPY_TIMEOUT);
        let took = t0.elapsed();
        let fetch_cpu = fetcher.cpu_s();
        let up_cpu = upstream
            .usage()
            .map(|u| u.cpu_s)
            .zip(up_before)
            .map(|(b, a)| b - a);
        drop(fetcher);
        let stopped = upstream.stop();
        if !copied {
            return Err(format!("the relay did not copy {total} bytes in time"));
        }
        stopped?;
        same_bytes(&path, &copy.0)?;
        let secs = took.as_secs_f64();
        s.figures = RelayCatchupFigures {
            bytes: Some(total as f64),
            secs: Some(secs),
            gib_per_s: Some(total as f64 / GIB / secs),
            fetch_cpu_s: fetch_cpu,
            fetch_cpu_s_per_gib: fetch_cpu.map(|c| c / (total as f64 / GIB)),
            upstream_cpu_s: up_cpu,
        };
        Ok(())
    }
}

pub(super) fn live_table(r: &Results<RelayLiveFigures>) -> Table {
    let mut t = Table::new(&[
        "clients per server",
        "direct p50 ms",
        "direct p99 ms",
        "relay p50 ms",
        "relay p99 ms",
        "extra p50 ms",
        "extra p99 ms",
        "relay max ms",
        "records delivered per run (relay)",
        "fetcher CPU s",
        "relay tailsrv CPU s",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |f: fn(&RelayLiveFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            let runs: Vec<_> = r.runs(&target, n, &v).collect();
            let got: f64 = runs.iter().filter_map(|s| s.figures.delivered).sum();
            let want: f64 = runs.iter().filter_map(|s| s.figures.expected).sum();
            t.row(vec![
                n.to_string(),
                spread(st(|f| f.direct_p50_ms), 3),
                spread(st(|f| f.direct_p99_ms), 3),
                spread(st(|f| f.relay_p50_ms), 3),
                spread(st(|f| f.relay_p99_ms), 3),
                spread(st(|f| f.extra_p50_ms), 3),
                spread(st(|f| f.extra_p99_ms), 3),
                spread(st(|f| f.relay_max_ms), 2),
                if want > 0.0 && got == want {
                    format!("all {} in {} runs", want / runs.len() as f64, runs.len())
                } else {
                    format!("{got} of {want}")
                },
                median(st(|f| f.fetch_cpu_s), 3),
                median(st(|f| f.relay_cpu_s), 3),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}

pub(super) fn catchup_table(r: &Results<RelayCatchupFigures>) -> Table {
    let mut t = Table::new(&[
        "fetcher",
        "MiB copied",
        "GiB/s",
        "seconds",
        "fetcher CPU s/GiB",
        "upstream CPU s",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |f: fn(&RelayCatchupFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                if v.is_empty() {
                    "this tree".to_string()
                } else {
                    v.trim_start_matches("fetch=").to_string()
                },
                median(st(|f| f.bytes.map(|b| b / (1u64 << 20) as f64)), 0),
                spread(st(|f| f.gib_per_s), 2),
                spread(st(|f| f.secs), 2),
                median(st(|f| f.fetch_cpu_s_per_gib), 2),
                median(st(|f| f.upstream_cpu_s), 2),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
