//! The Prometheus metrics endpoint: a minimal HTTP/1.1 responder for `GET /metrics` and
//! `HEAD /metrics`, and the text it renders from the shards' counters.

use crate::control::View;
use crate::http;
use crate::ratelimit::{RateLimit, LOG_EVERY};
use crate::state::Bells;
use crate::stats::{Protocol, Rejection, Rotation, ShardStats, HTTP_STATUSES, LAG_BOUNDS};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use std::cell::Cell;
use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;
use tracing::{debug, warn};

/// A per-shard metric: name, type, help, and how to read it from a shard's stats.
type PerShard = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> u64,
);

/// Writes a metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the metrics in the Prometheus text format.
pub fn render(view: &View) -> String {
    let mut out = String::with_capacity(4096);
    let o = &mut out;
    family(o, "tailsrv_build_info", "gauge", "Build information.");
    let _ = writeln!(
        o,
        "tailsrv_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        o,
        "tailsrv_file_size_bytes",
        "gauge",
        "Size of the served file.",
    );
    let _ = writeln!(o, "tailsrv_file_size_bytes {}", view.published.size());
    family(
        o,
        "tailsrv_file_info",
        "gauge",
        "The file served now (1; absent while there is none): id changes at every rotation and truncation.",
    );
    if let Some(generation) = view.published.current() {
        let id = generation.id();
        let _ = writeln!(
            o,
            "tailsrv_file_info{{id=\"{id}\",device=\"{}\",inode=\"{}\"}} 1",
            id.dev, id.ino
        );
    }
    family(
        o,
        "tailsrv_rotations_total",
        "counter",
        "Times FILE stopped being the file served, by kind: renamed away, replaced, deleted, truncated.",
    );
    for kind in Rotation::ALL {
        let _ = writeln!(
            o,
            "tailsrv_rotations_total{{kind=\"{}\"}} {}",
            kind.name(),
            view.watcher.rotations(kind)
        );
    }
    family(
        o,
        "tailsrv_open_files",
        "gauge",
        "Generations of FILE held open: the current one and rotated ones whose clients are still reading.",
    );
    let _ = writeln!(
        o,
        "tailsrv_open_files {}",
        view.published.open_generations()
    );
    family(o, "tailsrv_shards", "gauge", "Shard executors.");
    let _ = writeln!(o, "tailsrv_shards {}", view.stats.len());
    // Why gauges for settings? An alert can then compare tailsrv_clients_connected with
    // the limit in force, whether it was set or derived from the descriptor limit.
    family(
        o,
        "tailsrv_max_clients",
        "gauge",
        "Most clients connected at once (--max-clients, or what the descriptor limit allows).",
    );
    let _ = writeln!(o, "tailsrv_max_clients {}", view.limits.max_clients);
    if let Some(most) = view.limits.max_per_peer {
        family(
            o,
            "tailsrv_max_clients_per_ip",
            "gauge",
            "Most clients connected at once from one peer (--max-clients-per-ip); absent when there is no per-peer limit.",
        );
        let _ = writeln!(o, "tailsrv_max_clients_per_ip {most}");
    }

    family(
        o,
        "tailsrv_file_events_total",
        "counter",
        "inotify events the watcher read for the file and its directory.",
    );
    let _ = writeln!(
        o,
        "tailsrv_file_events_total {}",
        ShardStats::get(&view.watcher.file_events)
    );
    family(
        o,
        "tailsrv_watcher_wakeups_total",
        "counter",
        "Times the watcher woke up for file events (one wake-up may read many).",
    );
    let _ = writeln!(
        o,
        "tailsrv_watcher_wakeups_total {}",
        ShardStats::get(&view.watcher.wakeups)
    );

    let watcher: [(&str, &str, &str, u64); 7] = [
        (
            "tailsrv_deliveries_total",
            "counter",
            "Times the watcher published growth to the shards (one delivery may carry many appends: see --linger).",
            ShardStats::get(&view.watcher.deliveries),
        ),
        (
            "tailsrv_delivered_bytes_total",
            "counter",
            "File growth, in bytes, that those deliveries carried.",
            ShardStats::get(&view.watcher.delivered_bytes),
        ),
        (
            "tailsrv_deliveries_held_total",
            "counter",
            "Deliveries that waited for the end of the --linger window, the file being busy.",
            ShardStats::get(&view.watcher.held),
        ),
        (
            "tailsrv_watcher_following",
            "gauge",
            "1 while the watcher hears appends (someone is connected), 0 while it does not.",
            u64::from(view.watcher.following.load(std::sync::atomic::Ordering::Relaxed)),
        ),
        (
            "tailsrv_watcher_idle_looks_total",
            "counter",
            "Times the watcher looked at the file's size on its slow timer, with nobody connected.",
            ShardStats::get(&view.watcher.idle_looks),
        ),
        (
            "tailsrv_watcher_quiet_looks_total",
            "counter",
            "Times the watcher looked at the file's size after a second without news, with someone connected.",
            ShardStats::get(&view.watcher.quiet_looks),
        ),
        (
            "tailsrv_watcher_unannounced_growth_total",
            "counter",
            "Quiet looks that found growth no file event had announced: a lost wake-up, sent late.",
            ShardStats::get(&view.watcher.unannounced_growth),
        ),
    ];
    for (name, kind, help, value) in watcher {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {value}");
    }

    let per_shard: [PerShard; 8] = [
        ("tailsrv_clients_connected", "gauge", "Open client connections.", |s| ShardStats::get(&s.connected)),
        ("tailsrv_clients_accepted_total", "counter", "Client connections accepted.", |s| ShardStats::get(&s.accepted)),
        ("tailsrv_clients_blocked", "gauge", "Clients waiting for their full socket to drain.", |s| {
            ShardStats::get(&s.blocked)
        }),
        ("tailsrv_sent_bytes_total", "counter", "File bytes sent to clients.", |s| ShardStats::get(&s.bytes_sent)),
        (
            "tailsrv_socket_full_waits_total",
            "counter",
            "Times a client's socket was full and it waited for room: high for slow readers and for clients catching up.",
            |s| ShardStats::get(&s.full_waits),
        ),
        (
            "tailsrv_shard_wakeups_total",
            "counter",
            "Times the watcher woke the shard: for growth only while a client of it waits for the file to grow; also for shutdown, metrics and watchdog requests.",
            |s| ShardStats::get(&s.doorbells),
        ),
        (
            "tailsrv_accept_no_descriptor_total",
            "counter",
            "Accepts that failed for want of a descriptor (EMFILE, ENFILE); the connection waited in the backlog.",
            |s| ShardStats::get(&s.accept_no_descriptor),
        ),
        (
            "tailsrv_descriptor_shortages_total",
            "counter",
            "Times tailsrv ran out of descriptors, counted by the shard that saw it first.",
            |s| ShardStats::get(&s.descriptor_shortages),
        ),
    ];
    for (name, kind, help, get) in per_shard {
        family(o, name, kind, help);
        for (i, s) in view.stats.iter().enumerate() {
            let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", get(s));
        }
    }

    family(
        o,
        "tailsrv_clients_rejected_total",
        "counter",
        "Clients closed before any data, by reason: bad input, --allow, --max-clients, --max-clients-per-ip.",
    );
    for why in Rejection::ALL {
        let n: u64 = view.stats.iter().map(|s| s.rejected(why)).sum();
        let _ = writeln!(
            o,
            "tailsrv_clients_rejected_total{{reason=\"{}\"}} {n}",
            why.name()
        );
    }

    family(
        o,
        "tailsrv_clients_serving",
        "gauge",
        "Clients past their header or request head, by protocol: raw (an integer or line-count header) or http.",
    );
    for protocol in Protocol::ALL {
        let n: u64 = view.stats.iter().map(|s| s.served(protocol)).sum();
        let _ = writeln!(
            o,
            "tailsrv_clients_serving{{protocol=\"{}\"}} {n}",
            protocol.name()
        );
    }
    family(
        o,
        "tailsrv_http_responses_total",
        "counter",
        "HTTP responses begun on the streaming port, by status.",
    );
    for status in HTTP_STATUSES {
        let n: u64 = view.stats.iter().map(|s| s.responses(status)).sum();
        let _ = writeln!(o, "tailsrv_http_responses_total{{status=\"{status}\"}} {n}");
    }

    // Why gauges counting clients "more than N bytes behind", and not a histogram? These
    // are a snapshot of where clients are now, not counts of events: they go down as
    // clients catch up, which a histogram's buckets must never do, and the `le` label is
    // reserved for histogram buckets, which these are not. "More than" answers the question
    // an alert asks ("how many clients are over 1 MiB behind?") in one series.
    let streaming: u64 = view
        .stats
        .iter()
        .map(|s| ShardStats::get(&s.lag.count))
        .sum();
    family(
        o,
        "tailsrv_clients_streaming",
        "gauge",
        "Clients past their header: being sent the file or waiting for it to grow.",
    );
    let _ = writeln!(o, "tailsrv_clients_streaming {streaming}");
    family(
        o,
        "tailsrv_clients_behind",
        "gauge",
        "Clients more than more_than_bytes bytes behind the end of the file.",
    );
    for (i, bound) in LAG_BOUNDS.iter().enumerate() {
        // Bucket j holds the clients at most LAG_BOUNDS[j] behind (and more than the bound
        // before it); those above bound i are in the buckets after i.
        let above: u64 = view
            .stats
            .iter()
            .flat_map(|s| s.lag.buckets[i + 1..].iter().map(ShardStats::get))
            .sum();
        let _ = writeln!(
            o,
            "tailsrv_clients_behind{{more_than_bytes=\"{bound}\"}} {above}"
        );
    }
    let sum: u64 = view.stats.iter().map(|s| ShardStats::get(&s.lag.sum)).sum();
    let max = view
        .stats
        .iter()
        .map(|s| ShardStats::get(&s.lag.max))
        .max()
        .unwrap_or(0);
    // Why not `_total`? That suffix promises a counter, which only goes up; this is the sum
    // of the clients' lags now, and falls as they catch up.
    family(
        o,
        "tailsrv_clients_lag_bytes",
        "gauge",
        "Bytes all clients together are behind the end of the file.",
    );
    let _ = writeln!(o, "tailsrv_clients_lag_bytes {sum}");
    family(
        o,
        "tailsrv_client_lag_max_bytes",
        "gauge",
        "Bytes the furthest-behind client is behind the end of the file.",
    );
    let _ = writeln!(o, "tailsrv_client_lag_max_bytes {max}");
    out
}

/// The most metrics requests served at once; more are closed straight away.
const MAX_SCRAPERS: usize = 16;
/// The longest request head accepted.
const MAX_REQUEST: usize = 8 << 10;
/// How long a scraper has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (and `HEAD`) until the executor stops.
pub async fn serve(listener: TcpListener, view: Rc<View>, bells: Rc<Bells>) {
    let active = Rc::new(Cell::new(0usize));
    // Out of descriptors, accept fails every time it is tried: say so every few seconds,
    // not ten times a second.
    let (since, warnings) = (std::time::Instant::now(), RateLimit::new(LOG_EVERY));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if let Some(held) = warnings.pass(since.elapsed().as_millis() as u64) {
                    warn!(error = %e, failed_unlogged = held, "metrics: accept failed");
                }
                Timer::new(Duration::from_millis(100)).await;
                continue;
            }
        };
        if active.get() >= MAX_SCRAPERS {
            continue;
        }
        active.set(active.get() + 1);
        let (view, bells, active) = (view.clone(), bells.clone(), active.clone());
        glommio::spawn_local(async move {
            if let Err(e) = answer(stream, &view, &bells).await {
                debug!(error = %e, "metrics: request failed");
            }
            active.set(active.get() - 1);
        })
        .detach();
    }
}

async fn answer(mut stream: TcpStream, view: &View, bells: &Bells) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "incomplete or oversized request",
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    future::or(read, async {
        Timer::new(REQUEST_TIMEOUT).await;
        Err(std::io::ErrorKind::TimedOut.into())
    })
    .await?;
    let response = match route(&head) {
        Route::Metrics { head_only } => {
            view.refresh(bells, Duration::from_millis(200)).await;
            http::reply(
                "200 OK",
                &[],
                &[("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                &render(view),
                head_only,
            )
        }
        Route::NotFound { head_only } => http::reply(
            "404 Not Found",
            &[],
            &[("Content-Type", "text/plain")],
            "try /metrics\n",
            head_only,
        ),
        Route::BadMethod => http::reply(
            "405 Method Not Allowed",
            &[],
            &[("Content-Type", "text/plain"), ("Allow", http::ALLOW)],
            "only GET and HEAD\n",
            false,
        ),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.close().await
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` or `HEAD /metrics`, with or without a query string.
    Metrics { head_only: bool },
    /// `GET` or `HEAD` of any other path.
    NotFound { head_only: bool },
    /// Any other method.
    BadMethod,
}

/// Routes a request by its first line.
///
/// Why ignore the query string? Prometheus appends a scrape config's `params` to the path
/// (`/metrics?module=x`); the endpoint has nothing to select, so it serves the same text.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Route::BadMethod,
    };
    if path == b"/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound { head_only }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Limits;
    use crate::state::Published;
    use crate::stats::WatcherStats;
    use std::sync::Arc;

    #[test]
    fn routes_by_method_and_path_ignoring_the_query() {
        let cases: [(&[u8], Route); 8] = [
            (
                b"GET /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head_only: true },
            ),
            (
                b"GET /metrics?a=1&b=2 HTTP/1.1\r\n\r\n",
                Route::Metrics { head_only: false },
            ),
            (
                b"GET /metrics? HTTP/1.0\n\n",
                Route::Metrics { head_only: false },
            ),
            (
                b"GET /metricsx HTTP/1.1\r\n\r\n",
                Route::NotFound { head_only: false },
            ),
            (
                b"HEAD / HTTP/1.1\r\n\r\n",
                Route::NotFound { head_only: true },
            ),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::BadMethod),
            (b"get /metrics HTTP/1.1\r\n\r\n", Route::BadMethod),
        ];
        for (request, want) in cases {
            assert_eq!(route(request), want, "{}", String::from_utf8_lossy(request));
        }
    }

    fn limits(max_per_peer: Option<usize>) -> Limits {
        Limits {
            allow: Vec::new(),
            max_clients: 1000,
            max_per_peer,
            ipv6_prefix: 64,
            descriptor_limit: 1080,
        }
    }

    #[test]
    fn the_limits_are_gauges_and_the_per_peer_one_only_when_set() {
        let view = |max_per_peer| View {
            stats: vec![Arc::new(ShardStats::default())],
            watcher: Arc::new(WatcherStats::default()),
            published: Arc::new(Published::default()),
            label: String::new(),
            limits: limits(max_per_peer),
        };
        let off = render(&view(None));
        assert!(off.contains("\ntailsrv_max_clients 1000\n"), "{off}");
        assert!(!off.contains("tailsrv_max_clients_per_ip"), "{off}");
        let on = render(&view(Some(7)));
        assert!(on.contains("\ntailsrv_max_clients 1000\n"), "{on}");
        assert!(
            on.contains("# TYPE tailsrv_max_clients_per_ip gauge\n"),
            "{on}"
        );
        assert!(on.contains("\ntailsrv_max_clients_per_ip 7\n"), "{on}");
    }

    #[test]
    fn lag_families_count_clients_more_than_each_bound_behind() {
        let shards = [ShardStats::default(), ShardStats::default()];
        shards[0].lag.store([0, 0, 5000].into_iter());
        shards[1].lag.store([4096, 2 << 20].into_iter());
        let view = View {
            stats: shards.into_iter().map(Arc::new).collect(),
            watcher: Arc::new(WatcherStats::default()),
            published: Arc::new(Published::default()),
            label: String::new(),
            limits: limits(None),
        };
        let text = render(&view);
        let value = |series: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"));
            line.rsplit_once(' ').unwrap().1.parse().unwrap()
        };
        assert_eq!(value("tailsrv_clients_streaming"), 5);
        for (bound, want) in [(0, 3), (4096, 2), (65536, 1), (1 << 20, 1), (16 << 20, 0)] {
            let series = format!("tailsrv_clients_behind{{more_than_bytes=\"{bound}\"}}");
            assert_eq!(value(&series), want, "{series}");
        }
        assert_eq!(value("tailsrv_clients_lag_bytes"), 5000 + 4096 + (2 << 20));
        assert_eq!(value("tailsrv_client_lag_max_bytes"), 2 << 20);
        assert!(!text.contains("le=\""), "{text}");
    }
}
