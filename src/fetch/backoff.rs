//! Capped, jittered exponential back-off between reconnection attempts.

use std::time::Duration;

/// The first wait after a failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Doubling waits up to a cap, each drawn at random from its upper half.
///
/// Why jitter? When a busy upstream restarts (a rotation), every relay and client that
/// follows it reconnects; identical schedules would make them knock in synchronised
/// waves. Drawing each wait from `[d/2, d]` spreads them out while keeping the cap a cap.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(cap: Duration, seed: u64) -> Backoff {
        Backoff {
            next: FIRST_DELAY.min(cap),
            cap,
            rng: seed,
        }
    }

    /// A seed that differs between processes and runs.
    pub fn seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    }

    /// The wait before the next attempt; later calls wait longer, up to the cap.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.cap);
        let half = d / 2;
        let spread = (d - half).as_nanos() as u64;
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            self.random() % (spread + 1)
        })
    }

    /// Back to the first, short wait (after a connection that made progress).
    pub fn reset(&mut self) {
        self.next = FIRST_DELAY.min(self.cap);
    }

    /// splitmix64: enough randomness for jitter, without a dependency.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_their_jitter_and_stop_at_the_cap() {
        for seed in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(2), seed);
            let mut nominal = FIRST_DELAY;
            for _ in 0..12 {
                let d = b.delay();
                assert!(d >= nominal / 2 && d <= nominal, "{d:?} for {nominal:?}");
                nominal = (nominal * 2).min(Duration::from_secs(2));
            }
            assert_eq!(nominal, Duration::from_secs(2));
        }
    }

    #[test]
    fn reset_starts_over_and_a_small_cap_wins() {
        let mut b = Backoff::new(Duration::from_secs(10), 1);
        for _ in 0..5 {
            b.delay();
        }
        b.reset();
        assert!(b.delay() <= FIRST_DELAY);
        let mut b = Backoff::new(Duration::from_millis(30), 2);
        for _ in 0..5 {
            assert!(b.delay() <= Duration::from_millis(30));
        }
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut b = Backoff::new(Duration::from_secs(10), 7);
        let waits: Vec<_> = (0..20)
            .map(|_| {
                b.reset();
                b.delay()
            })
            .collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }
}
