//! Append cost: what a busy file costs the server. A writer appends 64-byte records at a
//! fixed rate while 0, 1, 10 or 100 clients follow the end of the file; the figure is the
//! server's CPU time per append, beside the reference's. Every record must reach every
//! client, and the latency of each is kept too.

use super::live::{delivered, LiveFigures};
use super::{Bench, Point};
use crate::report::{median, spread, Results, Table};
use crate::server::Target;

/// The append-cost scenario against the main targets.
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let mut r = Results::default();
    let secs = b.s.appendcost_secs;
    for (rate, clients) in b.s.appendcost.clone() {
        let point = Point {
            clients,
            variant: format!("rate={rate}"),
            reps: b.s.reps,
            verify: true,
        };
        b.run_point(
            &mut r,
            "appendcost",
            point,
            targets,
            |b, t, s| b.live_once(t, clients, 0, rate, secs, s),
            |f| {
                format!(
                    "server CPU {:.3} s, {:.1} us per append, {} of {} records",
                    f.server_cpu_s.unwrap_or(f64::NAN),
                    per_append_us(f).unwrap_or(f64::NAN),
                    f.delivered.unwrap_or(0.0),
                    f.expected.unwrap_or(0.0)
                )
            },
        );
    }
    b.finish("appendcost", "append cost", &r, table(&r))
}

/// Server CPU microseconds per append.
fn per_append_us(f: &LiveFigures) -> Option<f64> {
    Some(f.server_cpu_s? / f.records_per_client? * 1e6)
}

pub(super) fn table(r: &Results<LiveFigures>) -> Table {
    let mut t = Table::new(&[
        "appends/s",
        "clients",
        "target",
        "server CPU s",
        "CPU us per append",
        "vs ref",
        "p50 ms",
        "p99 ms",
        "records delivered per run",
        "failed runs",
    ]);
    for (n, v) in r.points() {
        for target in r.targets() {
            let st = |f: fn(&LiveFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            t.row(vec![
                v.trim_start_matches("rate=").to_string(),
                n.to_string(),
                target.clone(),
                spread(st(|f| f.server_cpu_s), 3),
                spread(st(per_append_us), 1),
                r.vs_ref(&target, n, &v, per_append_us),
                if n == 0 {
                    "-".into()
                } else {
                    median(st(|f| f.p50_ms), 3)
                },
                if n == 0 {
                    "-".into()
                } else {
                    median(st(|f| f.p99_ms), 3)
                },
                delivered(r, &target, n, &v),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
