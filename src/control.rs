//! What the watcher executor's side jobs read: the shards' counters, the published file
//! state, and a way to ask every shard for a fresh report.
//!
//! The side jobs are the metrics endpoint ([`crate::metrics`]) and the systemd status and
//! watchdog ([`crate::systemd`]). They live on the watcher's executor because it is
//! otherwise idle, and they reach the shards only through the atomics in [`ShardStats`]
//! and the doorbells, never by locking.

use crate::state::{Bells, Published};
use crate::stats::{ShardStats, WatcherStats};
use glommio::timer::Timer;
use std::sync::Arc;
use std::time::Duration;

/// What the side jobs read.
pub struct View {
    pub stats: Vec<Arc<ShardStats>>,
    pub watcher: Arc<WatcherStats>,
    pub published: Arc<Published>,
    /// "FILE on ADDR", for status lines.
    pub label: String,
}

impl View {
    pub(crate) fn connected(&self) -> u64 {
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
    pub(crate) async fn refresh(&self, bells: &Bells, patience: Duration) -> bool {
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
