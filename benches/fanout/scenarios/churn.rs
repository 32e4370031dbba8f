//! Churn: clients connect, read a little and leave, over and over, closing with a reset or
//! with a FIN; connections per second, and whether descriptors and memory come back.

use super::setup::{absorb, start_clients, FileSpec};
use super::{mib, nan, Bench, Point, MIB};
use crate::data::{self, Kind};
use crate::engine::{Group, Progress, Role};
use crate::report::{figures, median, spread, Results, Sample, Table};
use crate::server::Target;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Bytes a churn client reads before it disconnects.
const CHURN_READ: u64 = 4096;

figures! {
    /// One churn run: two rounds, then (FIN only) one append.
    ChurnFigures {
        conn_per_s,
        connect_errors,
        fds_before,
        fds_after_1,
        fds_after_2,
        rss_kib_before,
        rss_kib_after_1,
        rss_kib_after_2,
        /// FIN only: half-closed clients are found out when there is something to send.
        fds_after_append,
    }
}

/// The churn scenario against the main targets, `close=rst` then `close=fin`.
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let r = b.churn(targets);
    b.finish("churn", "churn", &r, table(&r))
}

impl Bench {
    fn churn(&mut self, targets: &[Target]) -> Results<ChurnFigures> {
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
                |f| {
                    format!(
                        "{:.0} conn/s, fds {} -> {}",
                        nan(f.conn_per_s),
                        nan(f.fds_before),
                        nan(f.fds_after_2)
                    )
                },
            );
        }
        r
    }

    fn churn_once(
        &mut self,
        target: &Target,
        fin: bool,
        s: &mut Sample<ChurnFigures>,
    ) -> Result<(), String> {
        let clients = self.s.churn_clients;
        let mut st = self.stage(target, clients, FileSpec::Fresh { prefix: MIB })?;
        let end = st.offset;
        sleep(self.s.settle);
        let before = st.server.usage();
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
            let role = Role::Churn {
                len: CHURN_READ,
                fin,
            };
            let plan = self.plan(
                &st.server,
                vec![Group::new(clients, role, start, header.clone())],
            );
            let engine = start_clients(plan, st.view.clone())?;
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
            after.push(st.server.usage());
        }
        let mut after_append = None;
        if fin {
            // Half-closed clients are found out when there is something to send them.
            let mut w = data::appender(&st.path)
                .map_err(|e| format!("opening {}: {e}", st.path.display()))?;
            data::append_record(&mut w, 0, Kind::Warmup).map_err(|e| format!("appending: {e}"))?;
            sleep(self.s.settle + Duration::from_millis(1500));
            after_append = st.server.usage();
        }
        st.server.stop()?;
        let f = &mut s.figures;
        f.conn_per_s = Some(rates.iter().sum::<f64>() / rates.len() as f64);
        f.connect_errors = Some(connect_errors as f64);
        let (Some(b), Some(a1), Some(a2)) = (before, after[0], after[1]) else {
            return Ok(());
        };
        f.fds_before = Some(b.fds);
        f.fds_after_1 = Some(a1.fds);
        f.fds_after_2 = Some(a2.fds);
        f.fds_after_append = after_append.map(|a| a.fds);
        f.rss_kib_before = Some(b.rss_kib);
        f.rss_kib_after_1 = Some(a1.rss_kib);
        f.rss_kib_after_2 = Some(a2.rss_kib);
        Ok(())
    }
}

pub(super) fn table(r: &Results<ChurnFigures>) -> Table {
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
            let st = |f: fn(&ChurnFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                v.trim_start_matches("close=").to_string(),
                n.to_string(),
                target.clone(),
                spread(st(|f| f.conn_per_s), 0),
                r.vs_ref(&target, n, &v, |f| f.conn_per_s),
                format!(
                    "{} → {} → {}",
                    median(st(|f| f.fds_before), 0),
                    median(st(|f| f.fds_after_1), 0),
                    median(st(|f| f.fds_after_2), 0)
                ),
                median(st(|f| f.fds_after_append), 0),
                format!(
                    "{} → {} → {}",
                    median(mib(st(|f| f.rss_kib_before)), 1),
                    median(mib(st(|f| f.rss_kib_after_1)), 1),
                    median(mib(st(|f| f.rss_kib_after_2)), 1)
                ),
                median(st(|f| f.connect_errors), 0),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
