//! Catch-up: every client reads the same large, page-cache-hot file from one offset as fast
//! as it can; aggregate throughput and how evenly the clients finish.

use super::setup::{absorb, start_clients, FileSpec, Snapshot};
use super::{nan, Bench, Point, CONNECT_TIMEOUT, MIB};
use crate::data;
use crate::engine::{Group, Progress, Role};
use crate::report::{self, figures, median, spread, Results, Sample, Table};
use crate::server::Target;
use std::thread::sleep;
use std::time::Duration;

const GIB: f64 = (1u64 << 30) as f64;

figures! {
    /// One catch-up run.
    CatchupFigures {
        per_client_mib,
        gib_s,
        secs,
        client_min_ms,
        client_median_ms,
        client_max_ms,
        max_over_median,
        server_cpu_s,
        server_cpu_s_per_gib,
        generator_cpu_s,
        machine_busy,
        machine_softirq,
        machine_cpu_s_per_gib,
    }
}

/// The catch-up scenario against the main targets (`catchup`, or `catchup_discard`).
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let clients = b.s.catchup_clients.clone();
    let r = b.catchup(targets, &clients);
    let name = if b.s.verify {
        "catchup"
    } else {
        "catchup_discard"
    };
    b.finish(name, "catch-up", &r, table(&r))
}

impl Bench {
    /// Every client count in `clients` against every target.
    pub(super) fn catchup(
        &mut self,
        targets: &[Target],
        clients: &[usize],
    ) -> Results<CatchupFigures> {
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
                |f| format!("{:.2} GiB/s", nan(f.gib_s)),
            );
        }
        r
    }

    /// Bytes each of `clients` reads: the total shared out, at least the minimum, in pages.
    fn per_client(&self, clients: usize) -> u64 {
        (self.s.total / clients.max(1) as u64).max(self.s.min_size) / data::PAGE * data::PAGE
    }

    fn catchup_once(
        &mut self,
        target: &Target,
        clients: usize,
        s: &mut Sample<CatchupFigures>,
    ) -> Result<(), String> {
        let len = self.per_client(clients);
        let mut st = self.stage(target, clients, FileSpec::CatchUp { len })?;
        let base = st.offset;
        let mut plan = self.plan(
            &st.server,
            vec![Group::new(
                clients,
                Role::CatchUp { len },
                base,
                format!("{base}\n"),
            )],
        );
        plan.verify = self.s.verify;
        plan.hold_headers = true;
        let engine = start_clients(plan, st.view.clone())?;
        let measured = engine.wait_connected(CONNECT_TIMEOUT).map(|()| {
            // Let the server accept everyone before the clock starts.
            sleep(Duration::from_millis(100));
            let before = Snapshot::take(&st.server);
            engine.go();
            let timeout = Duration::from_secs(60)
                + Duration::from_secs_f64((clients as u64 * len) as f64 / 100e6);
            let done = engine.wait_until(timeout, |p| Progress::get(&p.finished) >= clients);
            (done, before.until(Snapshot::take(&st.server)))
        });
        let out = engine.stop();
        let stopped = st.server.stop();
        absorb(s, &out);
        let (done, cost) = measured?;
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
        let times = report::stat(&ms).ok_or("no completion times")?;
        let f = &mut s.figures;
        f.per_client_mib = Some(len as f64 / MIB as f64);
        f.gib_s = Some(gib / secs);
        f.secs = Some(secs);
        f.client_min_ms = Some(times.min);
        f.client_median_ms = Some(times.median);
        f.client_max_ms = Some(times.max);
        f.max_over_median = Some(times.max / times.median);
        f.server_cpu_s = cost.server_cpu_s;
        f.server_cpu_s_per_gib = cost.server_cpu_s.map(|cpu| cpu / gib);
        f.generator_cpu_s = Some(cost.generator_cpu_s);
        f.machine_busy = cost.machine.map(|m| m.busy);
        f.machine_softirq = cost.machine.map(|m| m.softirq);
        f.machine_cpu_s_per_gib = cost.machine.map(|m| m.busy_cpu_s / gib);
        Ok(())
    }
}

pub(super) fn table(r: &Results<CatchupFigures>) -> Table {
    let mut t = Table::new(&[
        "clients",
        "MiB each",
        "target",
        "aggregate GiB/s",
        "vs ref",
        "client ms: min / median / max",
        "max / median",
        "server CPU s per GiB",
        "machine CPU s per GiB",
        "generator CPU s",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |f: fn(&CatchupFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                n.to_string(),
                median(st(|f| f.per_client_mib), 0),
                target.clone(),
                spread(st(|f| f.gib_s), 2),
                r.vs_ref(&target, n, &v, |f| f.gib_s),
                format!(
                    "{} / {} / {}",
                    median(st(|f| f.client_min_ms), 1),
                    median(st(|f| f.client_median_ms), 1),
                    median(st(|f| f.client_max_ms), 1)
                ),
                spread(st(|f| f.max_over_median), 2),
                spread(st(|f| f.server_cpu_s_per_gib), 3),
                spread(st(|f| f.machine_cpu_s_per_gib), 3),
                median(st(|f| f.generator_cpu_s), 2),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
