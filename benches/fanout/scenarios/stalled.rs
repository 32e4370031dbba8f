//! Stalled: the live scenario with clients beside the live ones that never read, their
//! sockets full; how much the live clients' latency moves.

use super::live::{delivered, LiveFigures};
use super::Bench;
use crate::report::{median, spread, Results, Table};
use crate::server::Target;

/// The stalled scenario against the main targets.
pub(super) fn run(b: &mut Bench, targets: &[Target]) -> Result<bool, String> {
    let (clients, stalled) = (b.s.stalled_live.clone(), b.s.stalled.clone());
    let r = b.live(targets, &clients, &stalled);
    b.finish("stalled", "stalled", &r, table(&r))
}

pub(super) fn table(r: &Results<LiveFigures>) -> Table {
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
            let st = |f: fn(&LiveFigures) -> Option<f64>| r.stat(&target, n, &v, f);
            let base = r.stat(&target, n, "stalled=0", |f| f.p99_ms);
            let moved = match (st(|f| f.p99_ms), base) {
                (Some(a), Some(b)) if v != "stalled=0" && b.median > 0.0 => {
                    format!("×{:.2}", a.median / b.median)
                }
                _ => String::new(),
            };
            t.row(vec![
                n.to_string(),
                v.trim_start_matches("stalled=").to_string(),
                target.clone(),
                spread(st(|f| f.p50_ms), 3),
                spread(st(|f| f.p99_ms), 3),
                moved,
                spread(st(|f| f.p999_ms), 3),
                spread(st(|f| f.max_ms), 2),
                delivered(r, &target, n, &v),
                median(st(|f| f.stalled_dropped), 0),
                r.failed(&target, n, &v),
            ]);
        }
    }
    t
}
