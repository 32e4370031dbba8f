//! Coalescing deliveries under load (`--linger`): when the watcher published growth less than
//! a window ago, it publishes the next growth only once the window has passed, so that a burst
//! of appends reaches the shards as one ring and one larger send per client.
//!
//! Why? What an append costs tailsrv is mostly wake-ups: the watcher's, then each shard's
//! (about 23 µs of CPU each here, against 7 µs for a thread in epoll; docs/benchmarks.md,
//! "The floor"), and a client's `sendfile` of 64 bytes costs about what one of 64 KiB does.
//! A file appended to 10,000 times a second woke the watcher and every shard with a waiting
//! client 10,000 times a second. With a window W, it wakes them at most once per W, and each
//! wake carries every append of the window. Kafka's producers (`linger.ms`), Nagle's
//! algorithm and NIC interrupt coalescing make the same trade.
//!
//! Why does the window grow? A fixed window is a bad trade at both ends: one short enough to
//! leave a file appended to 1,000 times a second alone (under 1 ms) saves little at 10,000 a
//! second, and one long enough to save there delays every append of the calmer file. So the
//! window starts at a quarter of `--linger` (the *first window*) and doubles with every
//! delivery that had to wait for it, up to `--linger`; a look that finds the file calm takes
//! it back to the first window. Appends that come less often than the first window are
//! never held; a file that stays busier than that is delivered once per `--linger`.
//!
//! What it costs: an append that arrives less than the current window after the last
//! delivery waits for the rest of it, so under load a reader sees appends up to `--linger`
//! later than it would have. An append to a file that was calm for the first window is
//! delivered at once, as without the window.
//!
//! Why also sleep before looking at inotify, and only while busy? Waking for the inotify
//! event, then again when the window ends, would be two wake-ups per delivery where one
//! does: while appends keep coming (the last delivery had to wait), the watcher sleeps out
//! the window first and then reads everything inotify merged meanwhile. When that look finds
//! nothing, the file has calmed down, and the watcher goes back to waiting for inotify, so
//! a calm file costs one wake-up per append, as it did before.

use std::time::{Duration, Instant};

/// The longest window `--linger` takes: beyond a second, "live" no longer describes it.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);

/// The watcher's memory of its last delivery, and what it implies for the next.
#[derive(Debug)]
pub(crate) struct Linger {
    /// `--linger`: the longest window.
    most: Duration,
    /// The window now: from a quarter of `most`, doubling while the file stays busy.
    window: Duration,
    /// When growth was last published.
    last: Option<Instant>,
    /// Whether the last delivery had to wait for its window: the file is busy.
    busy: bool,
    /// Whether the look now under way waited for the window.
    held: bool,
}

impl Linger {
    pub fn new(most: Duration) -> Linger {
        Linger {
            most,
            window: first_window(most),
            last: None,
            busy: false,
            held: false,
        }
    }

    /// When the next delivery may happen, if that is later than `now`.
    pub fn hold(&self, now: Instant) -> Option<Instant> {
        if self.window.is_zero() {
            return None;
        }
        let until = self.last? + self.window;
        (until > now).then_some(until)
    }

    /// Whether to sleep until the window ends before even waiting for inotify, and until
    /// when: only while the file is busy.
    pub fn sleep_first(&self, now: Instant) -> Option<Instant> {
        if self.busy {
            self.hold(now)
        } else {
            None
        }
    }

    /// The look now under way waited for the window.
    pub fn held(&mut self) {
        self.held = true;
    }

    /// Growth was published at `now`; returns whether that delivery waited for its window.
    /// One that did makes the next window twice as long (up to `--linger`); one that did
    /// not starts again from the first window.
    pub fn delivered(&mut self, now: Instant) -> bool {
        let held = std::mem::take(&mut self.held);
        self.last = Some(now);
        self.busy = held;
        self.window = if held {
            (self.window * 2).min(self.most)
        } else {
            first_window(self.most)
        };
        held
    }

    /// A look found no growth: the file is calm, wait for inotify again.
    pub fn found_nothing(&mut self) {
        self.busy = false;
        self.held = false;
        self.window = first_window(self.most);
    }

    /// The window now.
    #[cfg(test)]
    fn window(&self) -> Duration {
        self.window
    }
}

/// The window a calm file starts with: a quarter of `--linger`.
pub fn first_window(most: Duration) -> Duration {
    most / 4
}

/// Parses a `--linger` window: a number and a unit (`us`, `ms` or `s`), or `0` for none.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" if number.parse::<f64>() == Ok(0.0) => 0.0,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "" => {
            return Err(format!(
                "`{text}` needs a unit: for example 500us, 2ms or 0.01s (or 0 for none)"
            ))
        }
        other => return Err(format!("`{other}` is not a unit: use us, ms or s")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 2ms"))?;
    let secs = value * scale;
    if !(0.0..=MAX_WINDOW.as_secs_f64()).contains(&secs) {
        return Err(format!("`{text}`: the window is at most 1s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2);

    #[test]
    fn a_calm_file_is_delivered_at_once() {
        let t0 = Instant::now();
        let mut l = Linger::new(W);
        assert_eq!(l.hold(t0), None, "nothing delivered yet");
        assert!(!l.delivered(t0));
        // The next append comes after the first window: no hold, and no sleep before waiting.
        let later = t0 + W / 4 + Duration::from_micros(1);
        assert_eq!(l.hold(later), None);
        assert_eq!(l.sleep_first(later), None);
    }

    #[test]
    fn appends_further_apart_than_the_first_window_are_never_held() {
        let t0 = Instant::now();
        let mut l = Linger::new(W);
        let gap = W / 4 + Duration::from_micros(10);
        for i in 0..100 {
            let t = t0 + gap * i;
            assert_eq!(l.sleep_first(t), None);
            assert_eq!(l.hold(t), None, "append {i} was held");
            assert!(!l.delivered(t));
            assert_eq!(l.window(), W / 4);
        }
    }

    #[test]
    fn a_busy_file_doubles_the_window_up_to_linger_and_calm_starts_it_again() {
        let t0 = Instant::now();
        let mut l = Linger::new(W);
        l.delivered(t0);
        // Calm until now: the watcher waits for inotify, not for the window.
        assert_eq!(l.sleep_first(t0), None);
        // An event comes soon after: it waits for the end of the first window.
        let first = W / 4;
        assert_eq!(l.hold(t0 + first / 2), Some(t0 + first));
        l.held();
        assert!(l.delivered(t0 + first), "that delivery waited");
        // Busy now: sleep out the next window, twice as long, before looking at inotify.
        let mut at = t0 + first;
        let mut window = first * 2;
        for _ in 0..5 {
            assert_eq!(l.sleep_first(at), Some(at + window));
            l.held();
            at += window;
            assert!(l.delivered(at));
            window = (window * 2).min(W);
        }
        assert_eq!(l.window(), W, "the window stops growing at --linger");
        // The look after the next window finds nothing: calm again, and the first window.
        l.held();
        l.found_nothing();
        assert_eq!(l.window(), first);
        assert_eq!(l.sleep_first(at + W), None);
        // An event after that, more than a first window since the last delivery, goes at once.
        let calm = at + W + Duration::from_micros(1);
        assert_eq!(l.hold(calm), None);
        assert!(!l.delivered(calm));
        // And one soon after it waits for the first window only.
        assert_eq!(l.hold(calm + first / 2), Some(calm + first));
    }

    #[test]
    fn a_zero_window_never_holds() {
        let t0 = Instant::now();
        let mut l = Linger::new(Duration::ZERO);
        l.delivered(t0);
        assert_eq!(l.hold(t0), None);
        l.held();
        l.delivered(t0);
        assert_eq!(l.sleep_first(t0), None);
    }

    #[test]
    fn parses_windows_with_units() {
        for (text, want) in [
            ("0", Some(Duration::ZERO)),
            ("0.0", Some(Duration::ZERO)),
            ("0ms", Some(Duration::ZERO)),
            ("500us", Some(Duration::from_micros(500))),
            ("500µs", Some(Duration::from_micros(500))),
            ("2ms", Some(Duration::from_millis(2))),
            ("1.5ms", Some(Duration::from_micros(1500))),
            ("0.01s", Some(Duration::from_millis(10))),
            ("1s", Some(Duration::from_secs(1))),
            ("1001ms", None),
            ("2", None),
            ("-1ms", None),
            ("ms", None),
            ("2 hours", None),
            ("", None),
            ("1e3us", None),
        ] {
            assert_eq!(parse_window(text).ok(), want, "{text:?}");
        }
        assert_eq!(
            parse_window("5").unwrap_err(),
            "`5` needs a unit: for example 500us, 2ms or 0.01s (or 0 for none)"
        );
    }
}
