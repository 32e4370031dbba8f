//! A [`Handle`]: a running server's state as any thread may read it (clients, bytes, the
//! file, the watcher's and the shards' counts), and the way to stop it.

use crate::file_id::FileId;
use crate::state::{Interest, Phase, Published};
use crate::stats::{Protocol, Rotation, ShardStats, WatcherStats};
use crate::sys;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use tracing::warn;

/// A cheap, cloneable view of a running server from any thread: what it holds, and a way to
/// stop it.
#[derive(Clone)]
pub struct Handle {
    pub(crate) addr: SocketAddr,
    pub(crate) published: Arc<Published>,
    pub(crate) stats: Vec<Arc<ShardStats>>,
    pub(crate) watcher: Arc<WatcherStats>,
    /// An eventfd the watcher waits on: once bumped, the server stops.
    pub(crate) stop: Arc<OwnedFd>,
    /// Each shard's line to the watcher, which counts the rings it delivered.
    pub(crate) interests: Vec<Arc<Interest>>,
}

/// A client past its header, as [`Handle::client_starts`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    /// The client's address as the server saw it (an IPv4 client of a dual-stack listener
    /// as `::ffff:a.b.c.d`), if it could be read.
    pub peer: Option<SocketAddr>,
    /// The shard serving it.
    pub shard: usize,
    /// The offset its header (or HTTP request) resolved to: where it started.
    pub offset: u64,
    /// Whether it asked over HTTP.
    pub http: bool,
}

impl Handle {
    /// The address the listeners are bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The file's size as the watcher last published it; 0 while the file does not exist.
    pub fn file_size(&self) -> u64 {
        self.published.size()
    }

    /// Whether the file is open: it existed at start-up or has appeared since, and has not
    /// been rotated away without a new one appearing.
    pub fn file_open(&self) -> bool {
        self.published.current().is_some()
    }

    /// Which file new clients are served, if any: it changes at every rotation and
    /// truncation.
    pub fn file_id(&self) -> Option<FileId> {
        self.published.current().map(|g| g.id())
    }

    /// Clients reading the file served now (past their header); 0 while there is none.
    pub fn file_readers(&self) -> u64 {
        self.published.current().map_or(0, |g| g.readers())
    }

    /// How many times FILE was rotated (or truncated) in this way since start.
    pub fn rotations(&self, kind: Rotation) -> u64 {
        self.watcher.rotations(kind)
    }

    /// Files the server holds open: the current one, and rotated ones whose clients are
    /// still reading (truncations of one file count once each, but share its descriptor).
    pub fn open_generations(&self) -> u64 {
        self.published.open_generations()
    }

    /// Whether the server has stopped accepting (the file is gone, or it is shutting down).
    pub fn stopping(&self) -> bool {
        self.published.phase() != Phase::Running
    }

    /// Clients connected now, whether or not their header has arrived.
    pub fn clients(&self) -> u64 {
        self.total(|s| ShardStats::get(&s.connected))
    }

    /// Clients being served the raw protocol now (header read).
    pub fn raw_clients(&self) -> u64 {
        self.total(|s| s.served(Protocol::Raw))
    }

    /// Clients being served HTTP now (request head read).
    pub fn http_clients(&self) -> u64 {
        self.total(|s| s.served(Protocol::Http))
    }

    /// HTTP responses begun with `status` since start (200, 400, 404, 405, 408, 431, 500).
    pub fn http_responses(&self, status: u16) -> u64 {
        self.total(|s| s.responses(status))
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.total(|s| ShardStats::get(&s.accepted))
    }

    /// File bytes sent to clients since start.
    pub fn bytes_sent(&self) -> u64 {
        self.total(|s| ShardStats::get(&s.bytes_sent))
    }

    /// Clients waiting for their full socket to drain right now.
    pub fn blocked(&self) -> u64 {
        self.total(|s| ShardStats::get(&s.blocked))
    }

    /// How many times a client's socket was full and it waited for room, since start.
    pub fn full_waits(&self) -> u64 {
        self.total(|s| ShardStats::get(&s.full_waits))
    }

    /// How many times a half-closed client, sent data, was checked for a reset since start.
    pub fn liveness_checks(&self) -> u64 {
        self.total(|s| ShardStats::get(&s.liveness_checks))
    }

    /// Clients connected to each shard now.
    pub fn shard_clients(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|s| ShardStats::get(&s.connected))
            .collect()
    }

    /// The clients connected now that are past their header, with where each started.
    pub fn client_starts(&self) -> Vec<Streaming> {
        let mut all = Vec::new();
        for (shard, stats) in self.stats.iter().enumerate() {
            all.extend(stats.starts().into_iter().map(|s| Streaming {
                peer: s.peer,
                shard,
                offset: s.offset,
                http: s.http,
            }));
        }
        all
    }

    /// Rings the watcher has delivered to each shard. A shard has answered every one when
    /// its [`shard_wakeups`](Handle::shard_wakeups) count has caught up with this.
    pub fn shard_rings(&self) -> Vec<u64> {
        self.interests.iter().map(|i| i.rings()).collect()
    }

    /// Whether every shard has answered every ring delivered to it so far: the wake-up
    /// counts then include every ring the watcher has made.
    pub fn rings_answered(&self) -> bool {
        self.shard_wakeups()
            .iter()
            .zip(self.shard_rings())
            .all(|(&answered, rung)| answered >= rung)
    }

    /// Times the watcher has woken each shard.
    pub fn shard_wakeups(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|s| ShardStats::get(&s.doorbells))
            .collect()
    }

    /// inotify events the watcher has read.
    pub fn file_events(&self) -> u64 {
        ShardStats::get(&self.watcher.file_events)
    }

    /// Times the watcher woke up for file events (or for the end of a `--linger` window).
    pub fn watcher_wakeups(&self) -> u64 {
        ShardStats::get(&self.watcher.wakeups)
    }

    /// Times the watcher published growth to the shards.
    pub fn deliveries(&self) -> u64 {
        ShardStats::get(&self.watcher.deliveries)
    }

    /// Deliveries that waited for the end of their `--linger` window.
    pub fn held_deliveries(&self) -> u64 {
        ShardStats::get(&self.watcher.held)
    }

    /// Whether the watcher hears appends now: it does only while a client is connected.
    pub fn following_growth(&self) -> bool {
        self.watcher
            .following
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Times the watcher looked at the file's size on its slow timer, with nobody connected.
    pub fn idle_looks(&self) -> u64 {
        ShardStats::get(&self.watcher.idle_looks)
    }

    /// Times the watcher looked at the file's size after a quiet second, with someone connected.
    pub fn quiet_looks(&self) -> u64 {
        ShardStats::get(&self.watcher.quiet_looks)
    }

    /// Quiet looks that found growth no file event had announced.
    pub fn unannounced_growth(&self) -> u64 {
        ShardStats::get(&self.watcher.unannounced_growth)
    }

    /// The number of shard executors.
    pub fn shards(&self) -> usize {
        self.stats.len()
    }

    /// Asks the server to close every client and stop, as SIGTERM does the binary. Returns at
    /// once; [`Server::serve`] returns [`Outcome::Signalled`] once the server has stopped.
    pub fn shutdown(&self) {
        if let Err(e) = sys::eventfd_bump(self.stop.as_fd()) {
            // Cannot happen short of a counter overflow; say so rather than hide it.
            warn!(error = %e, "cannot signal the server to stop");
        }
    }

    fn total(&self, get: impl Fn(&ShardStats) -> u64) -> u64 {
        self.stats.iter().map(|s| get(s)).sum()
    }
}
