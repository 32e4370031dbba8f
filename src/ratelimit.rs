//! Warnings that cannot flood the log: a rate limit per kind of warning, and the tracking
//! of a shortage of descriptors (when it started, reminders while it lasts, when it ended).
//! Shared by every shard; used by admission and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often at most a warning of one kind is logged while its cause lasts.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// How long accept must go without running out of descriptors before the shortage counts
/// as over. Why wait at all? At the limit, every freed descriptor lets one accept through
/// and the next fail again; calling each of those an end and a new start would flood the
/// log that the rate limit is there to protect.
pub const EXHAUSTION_QUIET: Duration = Duration::from_secs(1);

/// Lets one event through per interval and counts the ones it holds back. Shared across
/// threads: one compare-and-swap per event let through, one add per event held back.
#[derive(Debug)]
pub struct RateLimit {
    every_ms: u64,
    /// Milliseconds (on the caller's clock) before which nothing more is let through.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl RateLimit {
    pub fn new(every: Duration) -> RateLimit {
        RateLimit {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// At `now_ms`: `Some(events held back since the last one let through)` if this event
    /// may be logged, `None` if it is held back.
    pub fn pass(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// What the exhaustion tracker says about one failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The first failure after a time without: log that it started.
    Started,
    /// It goes on, and the rate limit lets a reminder through.
    Continues { failed: u64, for_ms: u64 },
    /// It goes on; say nothing.
    Quiet,
}

/// Tracks a shortage of descriptors across shards: when it started, how many accepts it
/// failed, when it was last seen.
///
/// Why a mutex and not atomics? Two shards can fail an accept in the same instant. With
/// the start and the reminder's clock in separate atomics, the second shard could see the
/// shortage already on and the reminder not yet armed, and log "still out of descriptors"
/// a microsecond after the start line. A failed accept is rare (each shard pauses 100 ms
/// after one), so one uncontended lock costs nothing that matters.
#[derive(Debug)]
pub struct Exhaustion {
    remind_every_ms: u64,
    state: Mutex<ShortageState>,
}

/// What [`Exhaustion`] knows, changed only under its lock.
#[derive(Debug, Default)]
struct ShortageState {
    active: bool,
    since_ms: u64,
    last_ms: u64,
    failed: u64,
    remind_at_ms: u64,
}

impl Exhaustion {
    pub fn new(remind_every: Duration) -> Exhaustion {
        Exhaustion {
            remind_every_ms: remind_every.as_millis() as u64,
            state: Mutex::new(ShortageState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ShortageState> {
        // The state is plain numbers updated in one place each: a panic elsewhere while
        // the lock was held cannot leave it inconsistent, so a poisoned lock is still good.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An accept failed for want of a descriptor at `now_ms`.
    pub fn failed(&self, now_ms: u64) -> Shortage {
        let mut s = self.state();
        s.last_ms = s.last_ms.max(now_ms);
        if !s.active {
            // The start line is the first of this shortage; reminders come after it.
            s.active = true;
            s.since_ms = now_ms;
            s.failed = 1;
            s.remind_at_ms = now_ms + self.remind_every_ms;
            return Shortage::Started;
        }
        s.failed += 1;
        if now_ms < s.remind_at_ms {
            return Shortage::Quiet;
        }
        s.remind_at_ms = now_ms + self.remind_every_ms;
        Shortage::Continues {
            failed: s.failed,
            for_ms: now_ms.saturating_sub(s.since_ms),
        }
    }

    /// At `now_ms`: if a shortage was on and no accept has failed for `quiet`, it is over:
    /// returns how long it lasted and how many accepts it failed. Says so only once.
    pub fn ended(&self, now_ms: u64, quiet: Duration) -> Option<(u64, u64)> {
        let mut s = self.state();
        if !s.active || now_ms.saturating_sub(s.last_ms) < quiet.as_millis() as u64 {
            return None;
        }
        s.active = false;
        Some((s.last_ms.saturating_sub(s.since_ms), s.failed))
    }

    pub fn active(&self) -> bool {
        self.state().active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn rate_limit_lets_one_through_per_interval_and_counts_the_rest() {
        let r = RateLimit::new(Duration::from_secs(5));
        assert_eq!(r.pass(0), Some(0));
        assert_eq!(r.pass(1), None);
        assert_eq!(r.pass(4_999), None);
        assert_eq!(r.pass(5_000), Some(2));
        assert_eq!(r.pass(5_001), None);
        assert_eq!(r.pass(60_000), Some(1));
    }

    #[test]
    fn a_shortage_is_logged_at_start_rarely_while_it_lasts_and_once_at_its_end() {
        let quiet = Duration::from_secs(1);
        let e = Exhaustion::new(Duration::from_secs(5));
        assert_eq!(e.ended(0, quiet), None);
        assert_eq!(e.failed(1_000), Shortage::Started);
        let mut said = Vec::new();
        // Ten failures a second for twelve seconds.
        for t in (1_100..13_000).step_by(100) {
            match e.failed(t) {
                Shortage::Quiet => {}
                other => said.push((t, other)),
            }
            assert_eq!(e.ended(t, quiet), None);
        }
        assert_eq!(
            said,
            [
                (
                    6_000,
                    Shortage::Continues {
                        failed: 51,
                        for_ms: 5_000
                    }
                ),
                (
                    11_000,
                    Shortage::Continues {
                        failed: 101,
                        for_ms: 10_000
                    }
                ),
            ]
        );
        assert_eq!(e.ended(13_500, quiet), None);
        assert_eq!(e.ended(13_900, quiet), Some((11_900, 120)));
        assert_eq!(e.ended(20_000, quiet), None);
        assert_eq!(e.failed(30_000), Shortage::Started);
    }

    #[test]
    fn shards_failing_in_the_same_instant_log_one_start_and_no_reminder() {
        // CI once saw "still out of descriptors" a millisecond after the start line: two
        // shards failed together and the second found the shortage on before the first had
        // armed the reminder. Race eight threads at one instant, many times over.
        for round in 0..2000 {
            let e = Arc::new(Exhaustion::new(Duration::from_secs(5)));
            let gate = Arc::new(std::sync::Barrier::new(8));
            let said: Vec<Shortage> = (0..8)
                .map(|_| {
                    let (e, gate) = (e.clone(), gate.clone());
                    std::thread::spawn(move || {
                        gate.wait();
                        e.failed(1_000)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().expect("a racing thread panicked"))
                .collect();
            let started = said.iter().filter(|s| **s == Shortage::Started).count();
            let quiet = said.iter().filter(|s| **s == Shortage::Quiet).count();
            assert_eq!((started, quiet), (1, 7), "round {round}: {said:?}");
        }
    }
}
