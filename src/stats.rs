//! Per-shard counters: written by the shard that owns them, read by anyone on request.
//!
//! Why atomics with relaxed ordering? Each counter has one writer (its shard), so an add is
//! an uncontended instruction on the shard's own cache line, and a reader that gathers them
//! needs no lock and no message to the shard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a client was turned away before it got any data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The header did not parse (malformed, overflow, not ASCII, empty).
    BadHeader,
    /// No newline within the length cap.
    TooLong,
    /// No complete header within the header timeout.
    Timeout,
    /// The peer is not in any `--allow` range.
    NotAllowed,
    /// `--max-clients` clients were connected already.
    MaxClients,
    /// `--max-clients-per-ip` clients from the same peer were connected already.
    MaxClientsPerIp,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::BadHeader,
        Rejection::TooLong,
        Rejection::Timeout,
        Rejection::NotAllowed,
        Rejection::MaxClients,
        Rejection::MaxClientsPerIp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rejection::BadHeader => "bad_header",
            Rejection::TooLong => "too_long",
            Rejection::Timeout => "timeout",
            Rejection::NotAllowed => "not_allowed",
            Rejection::MaxClients => "max_clients",
            Rejection::MaxClientsPerIp => "max_clients_per_ip",
        }
    }
}

/// The statuses the HTTP face answers with, in the order [`ShardStats`] counts them.
pub const HTTP_STATUSES: [u16; 7] = [200, 400, 404, 405, 408, 431, 500];

/// How a client talks to the server, once its first line has said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The integer (or line-count) header.
    Raw,
    /// An HTTP request.
    Http,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Raw, Protocol::Http];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Raw => "raw",
            Protocol::Http => "http",
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Clients whose connection is open now, header read or not.
    pub connected: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    /// Clients being served now, by protocol (header read; not yet gone).
    serving: [AtomicU64; Protocol::ALL.len()],
    /// HTTP responses begun, by status ([`HTTP_STATUSES`]).
    http_responses: [AtomicU64; HTTP_STATUSES.len()],
    /// File bytes sent to clients.
    pub bytes_sent: AtomicU64,
    /// Clients waiting for their socket to drain right now.
    pub blocked: AtomicU64,
    /// Times a client's socket was full and it waited for room.
    pub full_waits: AtomicU64,
    /// Accepts that failed for want of a descriptor (EMFILE, ENFILE).
    pub accept_no_descriptor: AtomicU64,
    /// Shortages of descriptors that began on this shard (the first shard to fail counts it).
    pub descriptor_shortages: AtomicU64,
    /// Times the watcher's doorbell woke this shard.
    pub doorbells: AtomicU64,
    /// Half-closed clients checked for a reset after they were sent data.
    pub liveness_checks: AtomicU64,
    /// Requests from the watcher, answered from the shard's own thread.
    pub heartbeat: Heartbeat,
    /// The lags of this shard's clients when it last answered the heartbeat.
    pub lag: LagReport,
    /// Where each client past its header started, by its slot in the shard.
    starts: Mutex<Vec<Option<ClientStart>>>,
}

/// Where a client past its header started streaming, as its shard recorded it.
///
/// Why keep it? So that a test (or an embedding program) can ask the server where a client
/// starts, through [`crate::Handle::client_starts`], instead of reading a debug log line
/// whose wording may change. It costs a lock on the shard's own table, uncontended, once
/// when a client starts and once when it goes, and 40 bytes per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStart {
    /// The client's address, as the server saw it (IPv4 clients of a dual-stack listener as
    /// `::ffff:a.b.c.d`); `None` if it could not be read.
    pub peer: Option<SocketAddr>,
    /// The offset its header (or HTTP request) resolved to.
    pub offset: u64,
    /// Whether it asked over HTTP.
    pub http: bool,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records that the client in `slot` started streaming.
    pub fn started(&self, slot: usize, start: ClientStart) {
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        if starts.len() <= slot {
            starts.resize(slot + 1, None);
        }
        starts[slot] = Some(start);
    }

    /// Forgets the client in `slot` (it has gone).
    pub fn ended(&self, slot: usize) {
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(start) = starts.get_mut(slot) {
            *start = None;
        }
    }

    /// The clients of this shard that are streaming now.
    pub fn starts(&self) -> Vec<ClientStart> {
        let starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        starts.iter().flatten().copied().collect()
    }

    pub fn reject(&self, why: Rejection) {
        Self::add(&self.rejected[why as usize], 1);
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        Self::get(&self.rejected[why as usize])
    }

    /// Counts a client as served by `protocol` until the returned guard drops.
    pub fn serving(&self, protocol: Protocol) -> Serving<'_> {
        let counter = &self.serving[protocol as usize];
        Self::add(counter, 1);
        Serving(counter)
    }

    /// Clients served by `protocol` now.
    pub fn served(&self, protocol: Protocol) -> u64 {
        Self::get(&self.serving[protocol as usize])
    }

    /// Counts an HTTP response with `status` (one of [`HTTP_STATUSES`]).
    pub fn responded(&self, status: u16) {
        if let Some(i) = HTTP_STATUSES.iter().position(|&s| s == status) {
            Self::add(&self.http_responses[i], 1);
        }
    }

    /// HTTP responses with `status` since start.
    pub fn responses(&self, status: u16) -> u64 {
        HTTP_STATUSES
            .iter()
            .position(|&s| s == status)
            .map_or(0, |i| Self::get(&self.http_responses[i]))
    }
}

/// A client counted in [`ShardStats::serving`]; uncounts it when dropped.
pub struct Serving<'a>(&'a AtomicU64);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        ShardStats::sub(self.0, 1);
    }
}

/// The watcher's counters, written by the watcher only.
#[derive(Debug, Default)]
pub struct WatcherStats {
    /// inotify events read.
    pub file_events: AtomicU64,
    /// Times the watcher woke up for file events (one wake-up may bring many events).
    pub wakeups: AtomicU64,
    /// Times the watcher published growth and rang the shards with clients waiting for it.
    pub deliveries: AtomicU64,
    /// The growth those deliveries carried, in bytes.
    pub delivered_bytes: AtomicU64,
    /// Deliveries that waited for the `--linger` window to end.
    pub held: AtomicU64,
    /// Times the watcher looked at the file's size on its slow timer, while nobody was
    /// connected and it did not hear appends.
    pub idle_looks: AtomicU64,
    /// Times the watcher looked at the file's size after a quiet second while someone was
    /// connected (see `watcher::QUIET_LOOK`).
    pub quiet_looks: AtomicU64,
    /// Quiet looks that found growth no file event had announced: a wake-up was lost.
    pub unannounced_growth: AtomicU64,
    /// Whether the watcher hears appends now (someone is connected).
    pub following: AtomicBool,
    rotations: [AtomicU64; Rotation::ALL.len()],
}

impl WatcherStats {
    pub fn rotated(&self, kind: Rotation) {
        ShardStats::add(&self.rotations[kind as usize], 1);
    }

    pub fn rotations(&self, kind: Rotation) -> u64 {
        ShardStats::get(&self.rotations[kind as usize])
    }
}

/// How FILE stopped being the file tailsrv served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Renamed away (still linked under another name): logrotate's `create`.
    Renamed,
    /// Another file was moved over it.
    Replaced,
    /// Deleted.
    Deleted,
    /// Shrank: logrotate's `copytruncate`, or `: > FILE`.
    Truncated,
}

impl Rotation {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [Rotation; 4] = [
        Rotation::Renamed,
        Rotation::Replaced,
        Rotation::Deleted,
        Rotation::Truncated,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Rotation::Renamed => "renamed",
            Rotation::Replaced => "replaced",
            Rotation::Deleted => "deleted",
            Rotation::Truncated => "truncated",
        }
    }

    /// What happened, for people.
    pub fn why(self) -> &'static str {
        match self {
            Rotation::Renamed => "renamed away",
            Rotation::Replaced => "replaced by another file",
            Rotation::Deleted => "deleted",
            Rotation::Truncated => "truncated",
        }
    }
}

/// Upper bounds, in bytes, of the client lag histogram's buckets (file size minus offset).
pub const LAG_BOUNDS: [u64; 7] = [0, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 4 << 30];

/// How far behind a shard's clients are, as the shard last reported it.
#[derive(Debug, Default)]
pub struct LagReport {
    /// Clients per bucket of [`LAG_BOUNDS`] (not cumulative), the last for everything above.
    pub buckets: [AtomicU64; LAG_BOUNDS.len() + 1],
    pub sum: AtomicU64,
    pub count: AtomicU64,
    pub max: AtomicU64,
}

impl LagReport {
    /// Replaces the report with the lags of the clients given.
    pub fn store(&self, lags: impl Iterator<Item = u64>) {
        let mut buckets = [0u64; LAG_BOUNDS.len() + 1];
        let (mut sum, mut count, mut max) = (0u64, 0u64, 0u64);
        for lag in lags {
            let bucket = LAG_BOUNDS
                .iter()
                .position(|&b| lag <= b)
                .unwrap_or(LAG_BOUNDS.len());
            buckets[bucket] += 1;
            sum = sum.saturating_add(lag);
            count += 1;
            max = max.max(lag);
        }
        for (slot, n) in self.buckets.iter().zip(buckets) {
            slot.store(n, Ordering::Relaxed);
        }
        self.sum.store(sum, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
        self.max.store(max, Ordering::Relaxed);
    }
}

/// A request the watcher makes of a shard through its doorbell, answered when the shard
/// next runs: proof of life for the watchdog, and a fresh lag report for metrics.
#[derive(Debug, Default)]
pub struct Heartbeat {
    asked: AtomicU64,
    answered: AtomicU64,
}

impl Heartbeat {
    /// Asks again; returns the number the shard must answer with.
    pub fn ask(&self) -> u64 {
        self.asked.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether the shard has answered every request made so far.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire) >= self.asked.load(Ordering::Acquire)
    }

    /// The shard's side: is there a request to answer?
    pub fn pending(&self) -> Option<u64> {
        let asked = self.asked.load(Ordering::Acquire);
        (asked != self.answered.load(Ordering::Relaxed)).then_some(asked)
    }

    pub fn answer(&self, asked: u64) {
        self.answered.store(asked, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_report_buckets_by_upper_bound() {
        let report = LagReport::default();
        report.store([0, 1, 4096, 4097, 5 << 30].into_iter());
        let got: Vec<u64> = report.buckets.iter().map(ShardStats::get).collect();
        assert_eq!(got, [1, 2, 1, 0, 0, 0, 0, 1]);
        assert_eq!(ShardStats::get(&report.count), 5);
        assert_eq!(ShardStats::get(&report.sum), 1 + 4096 + 4097 + (5 << 30));
        assert_eq!(ShardStats::get(&report.max), 5 << 30);
    }

    #[test]
    fn heartbeat_is_answered_only_after_the_shard_replies() {
        let hb = Heartbeat::default();
        assert!(hb.answered());
        let asked = hb.ask();
        assert!(!hb.answered());
        assert_eq!(hb.pending(), Some(asked));
        hb.answer(asked);
        assert!(hb.answered());
        assert_eq!(hb.pending(), None);
    }
}
