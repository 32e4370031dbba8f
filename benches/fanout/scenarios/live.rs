//! Live: clients wait at the end of the file while records are appended at a steady rate;
//! the latency from append to arrival. The stalled scenario runs the same with clients
//! beside them that never read.

use super::setup::{absorb, paced_records, start_clients, warm_up, FileSpec, Snapshot};
use super::{nan, Bench, Point, CONNECT_TIMEOUT};
use crate::data;
use crate::engine::{Group, Progress, Role};
use crate::report::{figures, median, spread, Results, Sample, Table};
use crate::server::Target;
use std::time::Duration;

/// How long after the last append every record must have arrived.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

figures! {
    /// One live (or stalled) run.
    LiveFigures {
        records_per_client,
        rate,
        p50_ms,
        p90_ms,
        p99_ms,
        p999_ms,
        max_ms,
        delivered,
        expected,
        server_cpu_s,
        generator_cpu_s,
        machine_busy,
        machine_softirq,
        secs,
        stalled_dropped,
        clients_short,
    }
}

/// The live scenario against the main targets.
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let clients = b.s.live_clients.clone();
    let r = b.live(targets, &clients, &[0]);
    b.finish("live", "live", &r, table(&r))
}

impl Bench {
    /// Every count of live clients beside every count of stalled ones, against every target.
    /// `stalled == [0]` is the live scenario; anything else the stalled one.
    pub(super) fn live(
        &mut self,
        targets: &[Target],
        clients: &[usize],
        stalled: &[usize],
    ) -> Results<LiveFigures> {
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
                let (rate, secs) = (self.s.rate, self.s.live_secs);
                self.run_point(
                    &mut r,
                    scenario,
                    point,
                    targets,
                    |b, t, s| b.live_once(t, n, k, rate, secs, s),
                    |f| {
                        format!(
                            "p50 {:.3} ms p99 {:.3} ms, {} of {} records",
                            nan(f.p50_ms),
                            nan(f.p99_ms),
                            f.delivered.unwrap_or(0.0),
                            f.expected.unwrap_or(0.0)
                        )
                    },
                );
            }
        }
        r
    }

    /// One run: `clients` live clients (and `stalled` ones) while `rate` records a second
    /// are appended for `secs` seconds.
    pub(super) fn live_once(
        &mut self,
        target: &Target,
        clients: usize,
        stalled: usize,
        rate: f64,
        secs: f64,
        s: &mut Sample<LiveFigures>,
    ) -> Result<(), String> {
        let prefix = self.s.prefix;
        let mut st = self.stage(target, clients + stalled, FileSpec::Fresh { prefix })?;
        let base = st.offset;
        let mut groups = vec![Group::new(clients, Role::Live, base, format!("{base}\n"))];
        if stalled > 0 {
            // From the start of the file, so their sockets fill up and stay full.
            groups.push(Group::new(stalled, Role::Stalled, 0, "0\n"));
        }
        let mut plan = self.plan(&st.server, groups);
        plan.record_base = base;
        let mut writer = data::appender(&st.path)
            .map_err(|e| format!("opening {} to append: {e}", st.path.display()))?;
        let engine = start_clients(plan, st.view.clone())?;
        let records = ((rate * secs).round() as u64).max(1);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let expected = clients as u64 * records;
        let measured = (|| -> Result<_, String> {
            engine.wait_connected(CONNECT_TIMEOUT)?;
            // Warm up until every client has seen a record, then a few more at the rate.
            let warmed = || Progress::get(&engine.progress().warmed);
            warm_up(
                &mut writer,
                interval,
                || warmed() >= clients,
                |timed_out| {
                    (timed_out || Progress::get(&engine.progress().failures) > 0).then(|| {
                        format!(
                            "only {} of {clients} clients received a warm-up record",
                            warmed()
                        )
                    })
                },
                || {
                    engine.wait_until(Duration::from_millis(20), |p| {
                        Progress::get(&p.warmed) >= clients
                    });
                },
            )?;
            let before = Snapshot::take(&st.server);
            let t0 = paced_records(&mut writer, records, interval)?;
            engine.wait_until(DRAIN_TIMEOUT, |p| Progress::get64(&p.delivered) >= expected);
            Ok((before.until(Snapshot::take(&st.server)), t0.elapsed()))
        })();
        let out = engine.stop();
        let stopped = st.server.stop();
        absorb(s, &out);
        let (cost, took) = measured?;
        stopped?;
        let h = &out.latency;
        let ms = |q: f64| Some(h.value_at_quantile(q) as f64 / 1e6);
        let short: Vec<u64> = out
            .per_client_records
            .iter()
            .copied()
            .filter(|&n| n < records)
            .collect();
        s.figures = LiveFigures {
            records_per_client: Some(records as f64),
            rate: Some(rate),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: Some(h.max() as f64 / 1e6),
            delivered: Some(out.records as f64),
            expected: Some(expected as f64),
            server_cpu_s: cost.server_cpu_s,
            generator_cpu_s: Some(cost.generator_cpu_s),
            machine_busy: cost.machine.map(|m| m.busy),
            machine_softirq: cost.machine.map(|m| m.softirq),
            secs: Some(took.as_secs_f64()),
            stalled_dropped: Some(out.dropped as f64),
            clients_short: Some(short.len() as f64),
        };
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
}

/// Records delivered per run over the runs that counted them: `all N in R runs`, or how
/// many of how many.
pub(super) fn delivered(r: &Results<LiveFigures>, target: &str, n: usize, v: &str) -> String {
    let measured: Vec<&LiveFigures> = r
        .runs(target, n, v)
        .map(|s| &s.figures)
        .filter(|f| f.expected.is_some())
        .collect();
    let got: f64 = measured.iter().filter_map(|f| f.delivered).sum();
    let want: f64 = measured.iter().filter_map(|f| f.expected).sum();
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

pub(super) fn table(r: &Results<LiveFigures>) -> Table {
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
            let st = |f: fn(&LiveFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                n.to_string(),
                target.clone(),
                spread(st(|f| f.p50_ms), 3),
                spread(st(|f| f.p99_ms), 3),
                r.vs_ref(&target, n, &v, |f| f.p99_ms),
                spread(st(|f| f.p999_ms), 3),
                spread(st(|f| f.max_ms), 2),
                delivered(r, &target, n, &v),
                median(st(|f| f.server_cpu_s), 2),
                median(st(|f| f.generator_cpu_s), 2),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
