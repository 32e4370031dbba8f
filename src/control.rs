//! What the watcher executor's side jobs read: the shards' counters, the published file
//! state, and a way to ask every shard for a fresh report.
//!
//! The side jobs are the metrics endpoint ([`crate::metrics`]) and the systemd status and
//! watchdog ([`crate::systemd`]). They live on the watcher's executor because it is
//! otherwise idle, and they reach the shards only through the atomics in [`ShardStats`]
//! and the doorbells, never by locking.

use crate::admission::Limits;
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
    /// The client limits in force.
    pub limits: Limits,
}

impl View {
    pub(crate) fn connected(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| ShardStats::get(&s.connected))
            .sum()
    }

    pub fn status(&self) -> String {
        let (clients, shards) = (self.connected(), self.stats.len());
        format!(
            "serving {}: {clients} {} on {shards} {}, file at {} bytes",
            self.label,
            if clients == 1 { "client" } else { "clients" },
            if shards == 1 { "shard" } else { "shards" },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_written_for_people() {
        let view = |clients: u64, shards: usize| {
            let stats: Vec<Arc<ShardStats>> = (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect();
            ShardStats::add(&stats[0].connected, clients);
            View {
                stats,
                watcher: Arc::new(WatcherStats::default()),
                published: Arc::new(Published::default()),
                label: "app.log on [::]:4321".into(),
                limits: Limits {
                    allow: Vec::new(),
                    max_clients: 100,
                    max_per_peer: None,
                    ipv6_prefix: 64,
                    descriptor_limit: 180,
                },
            }
        };
        assert_eq!(
            view(1, 1).status(),
            "serving app.log on [::]:4321: 1 client on 1 shard, file at 0 bytes"
        );
        assert_eq!(
            view(0, 2).status(),
            "serving app.log on [::]:4321: 0 clients on 2 shards, file at 0 bytes"
        );
    }
}
