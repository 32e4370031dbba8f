//! Idle: clients connected at the end of a file that does not grow; what they cost the
//! server in CPU, memory and descriptors, and whether closing them gives it all back.

use super::setup::{absorb, start_clients, FileSpec};
use super::{mib, nan, Bench, Point, CONNECT_TIMEOUT, MIB};
use crate::engine::{Group, Role};
use crate::report::{figures, median, spread, Results, Sample, Table};
use crate::server::Target;
use std::thread::sleep;
use std::time::Duration;

figures! {
    /// One idle run.
    IdleFigures {
        idle_cpu_s,
        rss_kib_base,
        rss_kib_connected,
        rss_kib_per_client,
        fds_base,
        fds_connected,
        fds_per_client,
        fds_after_close,
        rss_kib_after_close,
        threads,
    }
}

/// The idle scenario against the main targets.
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let r = b.idle(targets);
    b.finish("idle", "idle", &r, table(&r, b.s.idle_secs))
}

impl Bench {
    fn idle(&mut self, targets: &[Target]) -> Results<IdleFigures> {
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
                |f| {
                    format!(
                        "cpu {:.3} s, {:.2} KiB and {:.3} fds per client",
                        nan(f.idle_cpu_s),
                        nan(f.rss_kib_per_client),
                        nan(f.fds_per_client)
                    )
                },
            );
        }
        r
    }

    fn idle_once(
        &mut self,
        target: &Target,
        clients: usize,
        s: &mut Sample<IdleFigures>,
    ) -> Result<(), String> {
        let mut st = self.stage(target, clients, FileSpec::Fresh { prefix: MIB })?;
        sleep(self.s.settle);
        let before = st.server.usage();
        let plan = self.plan(
            &st.server,
            vec![Group::new(clients, Role::Idle, st.offset, "-0\n")],
        );
        let engine = start_clients(plan, st.view.clone())?;
        let measured = engine.wait_connected(CONNECT_TIMEOUT).map(|()| {
            sleep(self.s.settle);
            let connected = st.server.usage();
            sleep(Duration::from_secs_f64(self.s.idle_secs));
            (connected, st.server.usage())
        });
        let out = engine.stop();
        sleep(self.s.settle);
        let after = st.server.usage();
        let stopped = st.server.stop();
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
        s.figures = IdleFigures {
            idle_cpu_s: Some(u1.cpu_s - u0.cpu_s),
            rss_kib_base: Some(b.rss_kib),
            rss_kib_connected: Some(u1.rss_kib),
            rss_kib_per_client: Some((u1.rss_kib - b.rss_kib) / n),
            fds_base: Some(b.fds),
            fds_connected: Some(u1.fds),
            fds_per_client: Some((u1.fds - b.fds) / n),
            fds_after_close: Some(a.fds),
            rss_kib_after_close: Some(a.rss_kib),
            threads: Some(u1.threads),
        };
        Ok(())
    }
}

pub(super) fn table(r: &Results<IdleFigures>, secs: f64) -> Table {
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
            let st = |f: fn(&IdleFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                n.to_string(),
                target.clone(),
                spread(st(|f| f.idle_cpu_s), 2),
                spread(st(|f| f.rss_kib_per_client), 2),
                spread(st(|f| f.fds_per_client), 3),
                median(st(|f| f.threads), 0),
                format!(
                    "{} → {} → {}",
                    median(st(|f| f.fds_base), 0),
                    median(st(|f| f.fds_connected), 0),
                    median(st(|f| f.fds_after_close), 0)
                ),
                format!(
                    "{} → {} → {}",
                    median(mib(st(|f| f.rss_kib_base)), 1),
                    median(mib(st(|f| f.rss_kib_connected)), 1),
                    median(mib(st(|f| f.rss_kib_after_close)), 1)
                ),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
