//! The watcher executor's side jobs: Prometheus metrics, systemd status and watchdog.
//!
//! They live on the watcher's executor because it is otherwise idle, and they reach the
//! shards only through the atomics in [`ShardStats`] and the doorbells, never by locking.

use crate::admission::{RateLimit, LOG_EVERY};
use crate::notify::Notifier;
use crate::state::{Bells, Published};
use crate::stats::{Rejection, ShardStats, WatcherStats, LAG_BOUNDS};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use std::cell::Cell;
use std::fmt::Write;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// What the side jobs read.
pub struct View {
    pub stats: Vec<Arc<ShardStats>>,
    pub watcher: Arc<WatcherStats>,
    pub published: Arc<Published>,
    /// "FILE on ADDR", for status lines.
    pub label: String,
}

impl View {
    fn connected(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| ShardStats::get(&s.connected))
            .sum()
    }

    pub fn status(&self) -> String {
        format!(
            "serving {}: {} clients on {} shards, file at {} bytes",
            self.label,
            self.connected(),
            self.stats.len(),
            self.published.size()
        )
    }

    /// Asks every shard for a fresh report and waits for the answers, a short while at most.
    async fn refresh(&self, bells: &Bells, patience: Duration) -> bool {
        for s in &self.stats {
            s.heartbeat.ask();
        }
        bells.ring_all();
        let deadline = std::time::Instant::now() + patience;
        loop {
            if self.stats.iter().all(|s| s.heartbeat.answered()) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            Timer::new(Duration::from_millis(1)).await;
        }
    }
}

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
    family(o, "tailsrv_shards", "gauge", "Shard executors.");
    let _ = writeln!(o, "tailsrv_shards {}", view.stats.len());

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

    let per_shard: [PerShard; 8] = [
        ("tailsrv_clients_connected", "gauge", "Open client connections.", |s| ShardStats::get(&s.connected)),
        ("tailsrv_clients_accepted_total", "counter", "Client connections accepted.", |s| ShardStats::get(&s.accepted)),
        ("tailsrv_clients_blocked", "gauge", "Clients waiting for their full socket to drain.", |s| {
            ShardStats::get(&s.blocked)
        }),
        ("tailsrv_sent_bytes_total", "counter", "File bytes sent to clients.", |s| ShardStats::get(&s.bytes_sent)),
        (
            "tailsrv_probe_sent_bytes_total",
            "counter",
            "File bytes sent by the writability probe instead of sendfile (included in tailsrv_sent_bytes_total).",
            |s| ShardStats::get(&s.probe_bytes),
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
        (
            "tailsrv_shard_wakeups_total",
            "counter",
            "Times the watcher woke the shard: for growth only while a client of it waits for the file to grow; also for shutdown, metrics and watchdog requests.",
            |s| ShardStats::get(&s.doorbells),
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

    // Why gauges and not a histogram? These are a snapshot of where clients are now, not
    // counts of events: they go down as clients catch up, which a histogram must never do.
    family(
        o,
        "tailsrv_clients_by_lag",
        "gauge",
        "Clients at most `le` bytes behind the end of the file.",
    );
    let mut cumulative = 0;
    let bounds = LAG_BOUNDS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()]);
    for (i, bound) in bounds.enumerate() {
        cumulative += view
            .stats
            .iter()
            .map(|s| ShardStats::get(&s.lag.buckets[i]))
            .sum::<u64>();
        let _ = writeln!(o, "tailsrv_clients_by_lag{{le=\"{bound}\"}} {cumulative}");
    }
    let sum: u64 = view.stats.iter().map(|s| ShardStats::get(&s.lag.sum)).sum();
    let max = view
        .stats
        .iter()
        .map(|s| ShardStats::get(&s.lag.max))
        .max()
        .unwrap_or(0);
    family(
        o,
        "tailsrv_client_lag_total_bytes",
        "gauge",
        "Total bytes all clients are behind the end of the file.",
    );
    let _ = writeln!(o, "tailsrv_client_lag_total_bytes {sum}");
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

/// Serves `GET /metrics` until the executor stops.
pub async fn serve_metrics(listener: TcpListener, view: Rc<View>, bells: Rc<Bells>) {
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
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let response = match (method, path) {
        (b"GET", b"/metrics") => {
            view.refresh(bells, Duration::from_millis(200)).await;
            reply(
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &render(view),
            )
        }
        (b"GET", _) => reply("404 Not Found", "text/plain", "try /metrics\n"),
        _ => reply("405 Method Not Allowed", "text/plain", "only GET\n"),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.close().await
}

fn reply(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Keeps systemd's STATUS= current: updated when clients come or go, at most once a second,
/// and never when nothing changes.
pub async fn keep_status(notifier: Notifier, view: Rc<View>, changes: Vec<ConnectedReceiver<()>>) {
    let changed = Rc::new(Cell::new(false));
    let waiter: Rc<Cell<Option<std::task::Waker>>> = Rc::default();
    for rx in changes {
        let (changed, waiter) = (changed.clone(), waiter.clone());
        glommio::spawn_local(async move {
            while rx.recv().await.is_some() {
                changed.set(true);
                if let Some(w) = waiter.take() {
                    w.wake();
                }
            }
        })
        .detach();
    }
    loop {
        future::poll_fn(|cx| {
            if changed.replace(false) {
                return std::task::Poll::Ready(());
            }
            waiter.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await;
        notifier.status(&view.status());
        Timer::new(Duration::from_secs(1)).await;
    }
}

/// Pings systemd's watchdog at half the interval, but only while every shard answers.
pub async fn keep_watchdog(
    notifier: Notifier,
    interval: Duration,
    view: Rc<View>,
    bells: Rc<Bells>,
) {
    let period = interval / 2;
    loop {
        // Why ask the shards? A ping from the watcher alone would only prove the watcher
        // runs; a shard stuck in a loop would go unnoticed. Each shard answers from its
        // own thread, so no answer means no ping, and systemd restarts us.
        if view.refresh(&bells, period / 2).await {
            notifier.watchdog();
        } else {
            let stuck: Vec<usize> = (0..view.stats.len())
                .filter(|&i| !view.stats[i].heartbeat.answered())
                .collect();
            warn!(
                ?stuck,
                "shards not answering; withholding the watchdog ping"
            );
        }
        Timer::new(period).await;
    }
}
